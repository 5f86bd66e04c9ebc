//! `chatq-bench`: parses the command line and runs the benchmark; everything else lives in the
//! `chatq_bench` library. Usually started as `chatq bench`, which hands over to this executable.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    let args = chatq_bench::BenchArgs::parse();
    match chatq_bench::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
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
