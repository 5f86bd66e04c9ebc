//! The `chatq` command: parses the command line and starts one role. Everything else lives in
//! the libraries (`chatq-common`, `chatq-ingress`, `chatq-workers`), so tests drive the same code
//! this binary runs.

mod bench;
mod cli;
mod roles;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Logging may not be set up yet (a bad setting), so write the error directly.
            #[expect(
                clippy::print_stderr,
                reason = "the last word of a failed command, for a person"
            )]
            {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}
