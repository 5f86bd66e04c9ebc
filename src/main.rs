//! The `chatq` command: parses the command line and starts one role. Everything else lives in
//! the libraries (`chatq-common`, `chatq-ingress`, `chatq-workers`), so tests drive the same code
//! this binary runs.
//!
//! # Layout
//!
//! - [`cli`]: the subcommands, each with every setting as a flag.
//! - [`roles`]: starting each role (`serve`, `ingress`, `worker`, `migrate`, `keys`, `mock-llm`,
//!   the last from the `chatq-mock-llm` crate) and draining it on a signal.
//! - [`batch`]: `chatq batch …`, a client of the Batch API over HTTP.
//! - [`keys`]: `chatq keys create | list | revoke`.
//! - [`tenants`]: `chatq tenants set-quota`.
//! - [`bench`]: `chatq bench`, handing over to the separately built `chatq-bench` executable.

mod batch;
mod bench;
mod cli;
mod keys;
mod roles;
mod tenants;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.run().await {
        Ok(code) => code,
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
