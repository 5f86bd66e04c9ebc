//! `chatq batch …`: the Batch API from the command line, over HTTP with an API key, like any
//! other client (the OpenAI SDK's flow: upload, create, poll, download).
//!
//! - [`api`]: the few requests the commands make, with errors in the API's own words.
//! - [`progress`]: the bars on standard error (upload, then lines done of the total, with rate
//!   and ETA); standard output carries only results.
//!
//! Exit codes say what happened: 0 done (with `--wait`: every line answered); 1 the command
//! failed (bad arguments, an HTTP error, chatq unreachable); with `--wait`, 2 the batch completed
//! with failed lines, 3 it failed validation, 4 it expired, 5 it was cancelled.

mod api;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::{Value, json};

use self::api::BatchApi;

/// Where chatq is and the key to use.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// chatq's API base URL (the OpenAI SDK's variable: the same value serves both).
    #[arg(
        long,
        env = "OPENAI_BASE_URL",
        default_value = "http://127.0.0.1:8080/v1"
    )]
    pub url: String,
    /// An API key (`chatq keys create --tenant NAME`).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub key: String,
    /// No progress bars on standard error.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Upload a JSONL file of chat completion requests and start a batch; prints the batch.
    Submit {
        /// `{custom_id, method, url, body}` lines, as OpenAI's Batch API takes them.
        file: PathBuf,
        /// How long the batch may take (`1h` … `7d`, as the server allows).
        #[arg(long, default_value = "24h")]
        window: String,
        /// Wait until the batch ends; the exit code says how it ended.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List batches, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print a batch (status, counts, file ids).
    Status {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Download a batch's answers (and, with --errors, its failed lines) as JSONL.
    Results {
        id: String,
        /// Where to write the answered lines.
        #[arg(short, long)]
        output: PathBuf,
        /// Where to write the failed, expired and cancelled lines.
        #[arg(long)]
        errors: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a batch: no new line starts; finished lines are kept.
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Runs a batch command.
///
/// # Errors
/// The request failed or chatq answered with an error.
pub async fn run(command: BatchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BatchCommand::Submit {
            file,
            window,
            wait,
            api,
        } => submit(&file, &window, wait, &api).await,
        BatchCommand::List { limit, api } => {
            let list = BatchApi::new(&api)?
                .get(&format!("/batches?limit={limit}"))
                .await?;
            for batch in list["data"].as_array().into_iter().flatten() {
                let counts = &batch["request_counts"];
                print_line(&format!(
                    "{}\t{}\t{}/{} done, {} failed\t{}",
                    text(&batch["id"]),
                    text(&batch["status"]),
                    counts["completed"],
                    counts["total"],
                    counts["failed"],
                    text(&batch["completion_window"]),
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Status { id, api } => {
            let batch = BatchApi::new(&api)?.get(&format!("/batches/{id}")).await?;
            print_json(&batch);
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Results {
            id,
            output,
            errors,
            api,
        } => {
            let client = BatchApi::new(&api)?;
            let batch = client.get(&format!("/batches/{id}")).await?;
            let written = download(&client, &batch["output_file_id"], &output).await?;
            let mut summary = json!({ "output": output, "output_lines": written });
            if let Some(errors) = errors {
                let written = download(&client, &batch["error_file_id"], &errors).await?;
                summary["errors"] = json!(errors);
                summary["error_lines"] = json!(written);
            }
            print_json(&summary);
            Ok(ExitCode::SUCCESS)
        }
        BatchCommand::Cancel { id, api } => {
            let batch = BatchApi::new(&api)?
                .post_json(&format!("/batches/{id}/cancel"), &json!({}))
                .await?;
            print_json(&batch);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn submit(file: &Path, window: &str, wait: bool, args: &ApiArgs) -> anyhow::Result<ExitCode> {
    let client = BatchApi::new(args)?;
    let size = tokio::fs::metadata(file)
        .await
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let bar = progress::upload(size, args.no_progress);
    let uploaded = client.upload(file, &bar).await?;
    bar.finish_and_clear();
    let mut batch = client
        .post_json(
            "/batches",
            &json!({
                "input_file_id": uploaded["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": window,
            }),
        )
        .await?;
    if wait {
        let id = text(&batch["id"]).to_owned();
        let lines = progress::lines(
            batch["request_counts"]["total"].as_u64().unwrap_or(0),
            args.no_progress,
        );
        while !ended(&batch) {
            lines.show(&batch);
            tokio::time::sleep(Duration::from_millis(500)).await;
            batch = client.get(&format!("/batches/{id}")).await?;
        }
        lines.show(&batch);
        lines.finish();
    }
    print_json(&batch);
    Ok(if wait {
        exit_code(&batch)
    } else {
        ExitCode::SUCCESS
    })
}

fn ended(batch: &Value) -> bool {
    matches!(
        batch["status"].as_str(),
        Some("completed" | "failed" | "expired" | "cancelled")
    )
}

/// How an ended batch ended, as the exit code (see the module documentation).
fn exit_code(batch: &Value) -> ExitCode {
    match batch["status"].as_str() {
        Some("completed") if batch["request_counts"]["failed"].as_u64() == Some(0) => {
            ExitCode::SUCCESS
        }
        Some("completed") => ExitCode::from(2),
        Some("failed") => ExitCode::from(3),
        Some("expired") => ExitCode::from(4),
        Some("cancelled") => ExitCode::from(5),
        _ => ExitCode::FAILURE,
    }
}

/// Writes a file's content to `path`; returns the lines written.
async fn download(client: &BatchApi, file: &Value, path: &Path) -> anyhow::Result<u64> {
    let Some(file) = file.as_str() else {
        anyhow::bail!("the batch has no such file (it failed validation, or has not started)");
    };
    client
        .download(&format!("/files/{file}/content"), path)
        .await
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

#[expect(clippy::print_stdout, reason = "the command's output")]
fn print_line(line: &str) {
    println!("{line}");
}

fn print_json(value: &Value) {
    print_line(&serde_json::to_string_pretty(value).unwrap_or_default());
}
