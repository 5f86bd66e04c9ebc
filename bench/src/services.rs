//! What the bench runs against: the shared Postgres and NATS servers (scratch resources are made
//! there for each stack), the chatq executable, and the settings every chatq process gets.

use std::path::PathBuf;

use anyhow::Context as _;

use super::args::GeneralArgs;

/// The shared servers the bench uses, and the settings every chatq process gets on top of the
/// bench's own.
#[derive(Debug, Clone)]
pub struct Services {
    /// The chatq executable every process of the system under test is started from.
    pub chatq: PathBuf,
    pub postgres_url: String,
    /// `--nats-url`: one server, or several separated by commas (a cluster).
    pub nats_url: String,
    pub extra_env: Vec<(String, String)>,
    pub keep_logs: bool,
}

impl Services {
    /// From the command line.
    ///
    /// # Errors
    /// An `--env` that is not `CHATQ_NAME=VALUE`, or no chatq executable.
    pub fn from_args(args: &GeneralArgs) -> anyhow::Result<Self> {
        let extra_env = args
            .env
            .iter()
            .map(|pair| {
                let (name, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--env {pair:?}: expected CHATQ_NAME=VALUE"))?;
                anyhow::ensure!(
                    name.starts_with("CHATQ_"),
                    "--env {pair:?}: only CHATQ_* settings can be passed to chatq"
                );
                Ok((name.to_owned(), value.to_owned()))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            chatq: chatq_executable(args.chatq.as_deref())?,
            postgres_url: args.postgres_url.clone(),
            nats_url: args.nats_url.clone(),
            extra_env,
            keep_logs: args.keep_logs,
        })
    }
}

impl Services {
    /// `--nats-url`, parsed as chatq parses `CHATQ_NATS_URL`.
    ///
    /// # Errors
    /// A URL that is not a NATS server's.
    pub fn nats_servers(&self) -> anyhow::Result<chatq_common::settings::NatsServers> {
        self.nats_url
            .parse()
            .map_err(|reason| anyhow::anyhow!("--nats-url {:?}: {reason}", self.nats_url))
    }
}

/// The chatq executable to benchmark: `--chatq`, or the `chatq` beside this executable (where
/// `cargo build --workspace` puts both).
fn chatq_executable(named: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let path = match named {
        Some(path) => path.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this executable, to find chatq beside it; use --chatq PATH")?
            .with_file_name(format!("chatq{}", std::env::consts::EXE_SUFFIX)),
    };
    anyhow::ensure!(
        path.is_file(),
        "no chatq executable at {}: build it beside chatq-bench (`cargo build --release \
         --workspace`, or `--bin chatq`), or name one with --chatq PATH",
        path.display()
    );
    Ok(path)
}
