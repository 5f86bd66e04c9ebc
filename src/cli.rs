//! The command line: one subcommand per role, each with every setting as a flag.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;

use chatq_common::Settings;
use chatq_common::settings::SettingsFlags;
use chatq_mock_llm::MockConfig;
use clap::{Parser, Subcommand};

use crate::{keys, roles, tenants};
use chatq_common::db::keys::KeyScope;
use chatq_common::db::quotas::{QuotaChange, QuotaChanges};

/// chatq: a queue-backed AI chat backend.
///
/// Settings come from defaults, then the TOML file named by --config (or CHATQ_CONFIG), then
/// CHATQ_* environment variables, then flags. `chatq serve --help` lists them all.
#[derive(Debug, Parser)]
#[command(name = "chatq", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the ingress and workers in one process (the default for a laptop).
    Serve(RoleArgs),
    /// Run only the HTTP ingress.
    Ingress(RoleArgs),
    /// Run only a worker (start more for more throughput).
    Worker(RoleArgs),
    /// Apply database migrations, then exit.
    Migrate(RoleArgs),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Manage tenants' quotas.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Run batches of chat completions through a running chatq (upload, start, watch, download).
    Batch {
        #[command(subcommand)]
        command: crate::batch::BatchCommand,
    },
    /// Run an OpenAI-compatible mock LLM server (for demos, tests and benchmarks).
    MockLlm {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9090")]
        addr: SocketAddr,
        #[command(flatten)]
        config: MockConfig,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Benchmark chatq on this machine, beside the machine's own limits measured in the same run.
    ///
    /// Runs chatq-bench, which is built on its own: `cargo build --release --workspace`.
    /// `chatq bench --help` lists its options.
    #[command(disable_help_flag = true)]
    Bench {
        /// chatq-bench's scenario and options, passed on as they are.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RoleArgs {
    #[command(flatten)]
    pub settings: SettingsFlags,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log filter, in RUST_LOG syntax.
    #[arg(long, default_value = "info")]
    pub log: String,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create an API key for a tenant (created if new). The key alone goes to standard output.
    Create {
        /// Tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// Give the key the admin scope: its tenant's dead letters.
        #[arg(long)]
        admin: bool,
        /// Give the key the operator scope: every tenant's dead letters, the queue and workers.
        #[arg(long, conflicts_with = "admin")]
        operator: bool,
        /// Days until the key stops working (it never expires without this).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// List API keys (never the keys themselves): id, tenant, prefix, scope, dates.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Revoke an API key by its id (`key_…`, as `chatq keys list` shows it); every ingress stops
    /// accepting it within a second.
    Revoke {
        key_id: String,
        #[command(flatten)]
        settings: SettingsFlags,
    },
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Set one tenant's quotas, overriding the CHATQ_TENANT_MAX_* settings: a number,
    /// `unlimited`, or `default` (back to the setting). Prints the quotas the tenant has now.
    SetQuota {
        /// The tenant's name (as given to `chatq keys create --tenant`).
        tenant: String,
        /// Interactive jobs queued at once (CHATQ_TENANT_MAX_QUEUED_JOBS).
        #[arg(long)]
        queued_jobs: Option<QuotaChange>,
        /// Interactive jobs running at once, fleet-wide (CHATQ_TENANT_MAX_JOBS_IN_FLIGHT).
        #[arg(long)]
        jobs_in_flight: Option<QuotaChange>,
        /// Event streams open at once on each ingress (CHATQ_TENANT_MAX_EVENT_STREAMS).
        #[arg(long)]
        event_streams: Option<QuotaChange>,
        /// Conversations stored (CHATQ_TENANT_MAX_CONVERSATIONS).
        #[arg(long)]
        conversations: Option<QuotaChange>,
        #[command(flatten)]
        settings: SettingsFlags,
    },
}

impl Cli {
    /// Runs the command; its exit code (`chatq batch` says with it how a batch ended).
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Command::Batch { command } = self.command {
            return crate::batch::run(command).await;
        }
        self.run_role().await.map(|()| ExitCode::SUCCESS)
    }

    async fn run_role(self) -> anyhow::Result<()> {
        match self.command {
            Command::Serve(args) => roles::serve(load(&args.settings)?, roles::Roles::Both).await,
            Command::Ingress(args) => {
                roles::serve(load(&args.settings)?, roles::Roles::Ingress).await
            }
            Command::Worker(args) => {
                roles::serve(load(&args.settings)?, roles::Roles::Worker).await
            }
            Command::Migrate(args) => roles::migrate(load(&args.settings)?).await,
            Command::Keys { command } => match command {
                KeysCommand::Create {
                    tenant,
                    admin,
                    operator,
                    expires_in_days,
                    settings,
                } => {
                    let scope = match (admin, operator) {
                        (_, true) => KeyScope::Operator,
                        (true, false) => KeyScope::Admin,
                        (false, false) => KeyScope::Tenant,
                    };
                    keys::create(load(&settings)?, &tenant, scope, expires_in_days).await
                }
                KeysCommand::List { tenant, settings } => {
                    keys::list(load(&settings)?, tenant.as_deref()).await
                }
                KeysCommand::Revoke { key_id, settings } => {
                    keys::revoke(load(&settings)?, &key_id).await
                }
            },
            Command::Tenants {
                command:
                    TenantsCommand::SetQuota {
                        tenant,
                        queued_jobs,
                        jobs_in_flight,
                        event_streams,
                        conversations,
                        settings,
                    },
            } => {
                let changes = QuotaChanges {
                    queued_jobs,
                    jobs_in_flight,
                    event_streams,
                    conversations,
                };
                tenants::set_quota(load(&settings)?, &tenant, changes).await
            }
            Command::MockLlm { addr, config, log } => roles::mock_llm(addr, config, &log.log).await,
            Command::Bench { args } => crate::bench::run(args),
            // Answered by `run`.
            Command::Batch { .. } => Ok(()),
        }
    }
}

fn load(flags: &SettingsFlags) -> anyhow::Result<Settings> {
    let settings = Settings::load(flags)?;
    chatq_common::telemetry::init(settings.telemetry.log_format, &settings.telemetry.log);
    Ok(settings)
}
