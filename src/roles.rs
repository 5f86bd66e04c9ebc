//! Starting each role: connect, migrate, ensure the NATS topology, run until a signal, drain.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use chatq_common::db::Db;
use chatq_common::settings::ProviderKind;
use chatq_common::topology::Topology;
use chatq_common::{Settings, db, nats};
use chatq_ingress::Application;
use chatq_mock_llm::{MockConfig, MockLlm};
use chatq_workers::Worker;
use tokio_util::sync::CancellationToken;

/// Which roles this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    Both,
    Ingress,
    Worker,
}

impl Roles {
    fn name(self) -> &'static str {
        match self {
            Roles::Both => "serve",
            Roles::Ingress => "ingress",
            Roles::Worker => "worker",
        }
    }
}

/// Runs the ingress, a worker, or both, until SIGINT or SIGTERM.
pub async fn serve(settings: Settings, roles: Roles) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), namespace = %settings.nats.namespace, "chatq {} starting", roles.name());
    #[cfg(feature = "fault-injection")]
    chatq_common::fault::arm(&settings.faults);
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    tracing::info!(database = %settings.database.url_for_logs(), "Postgres connected, schema up to date");

    let client = nats::connect(&settings.nats.url, roles.name()).await?;
    let jetstream = async_nats::jetstream::new(client.clone());
    let topology = Topology::new(&settings.nats);
    topology.ensure(&jetstream).await?;
    tracing::info!(
        nats = %settings.nats.url,
        server = %client.server_info().version,
        stream = %topology.jobs_stream(),
        dead_letters = %topology.dead_letter_stream(),
        "NATS connected, JetStream streams and consumers ready"
    );
    if roles != Roles::Ingress && settings.provider.kind == ProviderKind::Simulated {
        tracing::warn!(
            "using the SIMULATED provider: replies are generated locally, not by a model. \
             Set CHATQ_PROVIDER=openai, CHATQ_PROVIDER_BASE_URL and CHATQ_MODEL to call a real one."
        );
    }

    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
    let result = match roles {
        Roles::Ingress => run_ingress(settings, pool, client, shutdown).await,
        Roles::Worker => run_worker(settings, pool, client, shutdown).await,
        Roles::Both => {
            let app = Application::build(&settings, pool.clone(), client.clone()).await?;
            let addr = app.local_addr()?;
            bootstrap_development_key(&pool, addr).await?;
            let worker = Worker::build(&settings, pool, client).await?;
            let (served, worked) = tokio::join!(
                app.run_until_stopped(shutdown.clone()),
                worker.run_until_stopped(shutdown.clone()),
            );
            served.and(worked)
        }
    };
    signals.abort();
    result
}

async fn run_ingress(
    settings: Arc<Settings>,
    pool: Db,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Application::build(&settings, pool, client)
        .await?
        .run_until_stopped(shutdown)
        .await
}

async fn run_worker(
    settings: Arc<Settings>,
    pool: Db,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Worker::build(&settings, pool, client)
        .await?
        .run_until_stopped(shutdown)
        .await
}

/// On an empty database, creates a development key and shows it once, with a command to try.
async fn bootstrap_development_key(pool: &Db, addr: SocketAddr) -> anyhow::Result<()> {
    if db::keys::any_key_exists(pool).await? {
        return Ok(());
    }
    let key = db::keys::create_key(
        pool,
        "dev",
        chatq_common::db::keys::KeyScope::Operator,
        None,
    )
    .await
    .context("cannot create the development API key")?;
    let base = format!("http://{addr}");
    #[expect(
        clippy::print_stderr,
        reason = "shown once to the person who started the server"
    )]
    {
        eprintln!(
            "\n  This database had no API keys, so chatq created one for tenant \"dev\" (operator).\n  \
             It is shown only now; keep it:\n\n      {key}\n\n  Try it:\n\n      \
             KEY={key}\n      \
             curl -s -X POST {base}/v1/conversations -H \"Authorization: Bearer $KEY\" -d '{{\"title\":\"hello\"}}'\n\n  \
             More keys: chatq keys create --tenant NAME\n",
            key = key.plaintext,
        );
    }
    Ok(())
}

/// Applies migrations and exits.
pub async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    tracing::info!(database = %settings.database.url_for_logs(), "migrations applied");
    Ok(())
}

/// `chatq mock-llm`.
pub async fn mock_llm(addr: SocketAddr, config: MockConfig, log: &str) -> anyhow::Result<()> {
    chatq_common::telemetry::init(chatq_common::settings::LogFormat::Pretty, log);
    let mock = MockLlm::start(addr, config.clone())
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        base_url = %mock.base_url(),
        ttft_ms = config.ttft_ms,
        tokens = config.tokens,
        token_delay_ms = config.token_delay_ms,
        "mock LLM listening; point CHATQ_PROVIDER_BASE_URL at base_url (stats at /stats)"
    );
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(stop_on_signal(shutdown.clone()));
    mock.run_until_stopped(shutdown).await;
    signals.abort();
    Ok(())
}

/// Cancels `shutdown` on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("interrupted: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
    shutdown.cancel();
}
