//! A chatq deployment in miniature, for one scenario: its own nats-server, its own Postgres
//! cluster, an ingress and workers as separate `chatq` processes, and the mock LLM served over
//! HTTP from this test process, so the scenario can change its behaviour and count what it saw.
//!
//! Servers of its own, not the shared ones, because a scenario kills and restarts them, and
//! because its timings (leases of a few seconds) must not depend on what else a shared server is
//! doing at the time.

pub mod client;
#[path = "../../support/pgbouncer.rs"]
mod pgbouncer;
pub mod processes;

use std::path::PathBuf;
use std::time::Duration;

use chatq_mock_llm::{MockConfig, MockLlm};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use self::client::Client;
use self::pgbouncer::PgBouncer;
pub use self::processes::{ChatqProcess, NatsServer, PgCluster, meta_leader, spare_port};

/// Settings every scenario shares: short timings, so faults heal in seconds.
const FAST_SETTINGS: &[(&str, &str)] = &[
    ("CHATQ_JOB_ACK_WAIT_SECS", "3"),
    ("CHATQ_RECONCILE_INTERVAL_SECS", "1"),
    ("CHATQ_RECONCILE_AFTER_SECS", "2"),
    ("CHATQ_SHUTDOWN_GRACE_SECS", "5"),
    ("CHATQ_PROVIDER_IDLE_TIMEOUT_SECS", "10"),
    ("CHATQ_DATABASE_MAX_CONNECTIONS", "8"),
];

/// How to start a stack.
pub struct StackOptions {
    pub workers: usize,
    pub worker_concurrency: usize,
    pub mock: MockConfig,
    /// `CHATQ_*` settings for every chatq process, applied over the fast defaults.
    pub settings: Vec<(&'static str, String)>,
    /// The ingress and workers reach Postgres through a PgBouncer in transaction mode with
    /// fewer server sessions than they have connections (`chatq migrate` goes straight there).
    pub through_pgbouncer: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            worker_concurrency: 16,
            mock: MockConfig::default(),
            settings: Vec::new(),
            through_pgbouncer: false,
        }
    }
}

/// One scenario's deployment.
pub struct Stack {
    pub name: String,
    /// Logs and the NATS store.
    pub dir: PathBuf,
    /// The nats-server, or the first node of the cluster.
    pub nats: NatsServer,
    /// The other nodes of the cluster (none for a single server).
    pub nats_peers: Vec<NatsServer>,
    pub postgres: PgCluster,
    /// The PgBouncer between chatq and `postgres`, when the scenario asked for one.
    pooler: Option<PgBouncer>,
    /// This stack's database, for checking the ledger.
    pub pool: PgPool,
    pub jetstream: async_nats::jetstream::Context,
    pub namespace: String,
    pub mock: MockLlm,
    pub ingress: Option<ChatqProcess>,
    pub workers: Vec<ChatqProcess>,
    pub client: Client,
    /// A key with the admin scope, of another tenant.
    pub admin_key: String,
    http_port: u16,
    env: Vec<(String, String)>,
}

impl Stack {
    /// Starts NATS, the database, the ingress and `options.workers` workers.
    pub async fn start(name: &str, options: StackOptions) -> Self {
        Self::start_on_nats(name, 1, options).await
    }

    /// As [`Stack::start`], on a JetStream cluster of `nats_nodes` servers (one: a single
    /// server); every chatq process is given every node's URL.
    pub async fn start_on_nats(name: &str, nats_nodes: usize, options: StackOptions) -> Self {
        let unique = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("faults")
            .join(format!("{name}-{unique}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nats_peers = if nats_nodes > 1 {
            NatsServer::start_cluster(&dir, nats_nodes).await
        } else {
            vec![NatsServer::start(&dir).await]
        };
        let nats = nats_peers.remove(0);
        let nats_urls = std::iter::once(&nats)
            .chain(&nats_peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>();
        let postgres = PgCluster::start(&format!("cqfault-pg-{unique}")).await;
        let database_url = postgres.url("chatq");
        let mock = MockLlm::start("127.0.0.1:0".parse().unwrap(), options.mock)
            .await
            .expect("the mock LLM starts");
        let namespace = format!("cqt{unique}");
        let http_port = spare_port();
        let mut env: Vec<(String, String)> = FAST_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        env.extend([
            ("CHATQ_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
            ("CHATQ_DATABASE_URL".into(), database_url.clone()),
            ("CHATQ_NATS_URL".into(), nats_urls.join(",")),
            ("CHATQ_NAMESPACE".into(), namespace.clone()),
            ("CHATQ_PROVIDER".into(), "openai".into()),
            ("CHATQ_PROVIDER_BASE_URL".into(), mock.base_url()),
            ("CHATQ_MODEL".into(), "mock-model".into()),
            (
                "CHATQ_WORKER_CONCURRENCY".into(),
                options.worker_concurrency.to_string(),
            ),
            (
                "CHATQ_LOG".into(),
                std::env::var("CQTEST_LOG").unwrap_or_else(|_| "info,async_nats=warn".into()),
            ),
        ]);
        for (key, value) in options.settings {
            env.retain(|(k, _)| k != key);
            env.push((key.to_owned(), value));
        }

        // The schema first, so the test can create keys before any role runs.
        let mut migrate = ChatqProcess::spawn("migrate", "migrate", &env, &dir);
        let status = migrate
            .wait_exit(Duration::from_secs(60))
            .await
            .expect("chatq migrate finishes");
        assert!(
            status.success(),
            "chatq migrate failed; see {}",
            migrate.log.display()
        );
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url)
            .await
            .expect("the test database is reachable");
        let db = chatq_common::db::Db::direct(pool.clone());
        let key = chatq_common::db::keys::create_key(
            &db,
            "fault-tenant",
            chatq_common::db::keys::KeyScope::Tenant,
            None,
        )
        .await
        .unwrap()
        .plaintext;
        let admin_key = chatq_common::db::keys::create_key(
            &db,
            "operators",
            chatq_common::db::keys::KeyScope::Operator,
            None,
        )
        .await
        .unwrap()
        .plaintext;
        let pooler = if options.through_pgbouncer {
            let pooler = PgBouncer::start_with_sessions(("127.0.0.1", postgres.port), 8).await;
            env.retain(|(k, _)| k != "CHATQ_DATABASE_URL");
            env.push(("CHATQ_DATABASE_URL".into(), pooler.url_for(&database_url)));
            env.push(("CHATQ_DATABASE_POOLER".into(), "transaction".into()));
            Some(pooler)
        } else {
            None
        };
        let nats_client = async_nats::connect(nats_urls.as_slice())
            .await
            .expect("the test connects to its nats-server");
        let mut stack = Self {
            name: name.to_owned(),
            client: Client::new(&format!("http://127.0.0.1:{http_port}"), &key),
            dir,
            nats,
            nats_peers,
            postgres,
            pooler,
            pool,
            jetstream: async_nats::jetstream::new(nats_client),
            namespace,
            mock,
            ingress: None,
            workers: Vec::new(),
            admin_key,
            http_port,
            env,
        };
        stack.start_ingress(&[]).await;
        for i in 0..options.workers {
            stack.start_worker(&format!("worker-{i}"), &[]).await;
        }
        stack
    }

    /// The environment of a chatq process, with `extra` settings on top.
    fn env_with(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        for (key, value) in extra {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_owned(), (*value).to_owned()));
        }
        env
    }

    /// Starts an ingress (replacing a stopped one) and waits until it answers.
    pub async fn start_ingress(&mut self, extra: &[(&str, &str)]) {
        let name = format!(
            "ingress-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..4]
        );
        let ingress = ChatqProcess::spawn(&name, "ingress", &self.env_with(extra), &self.dir);
        let addr = ([127, 0, 0, 1], self.http_port).into();
        processes::wait_for_port(addr, "the ingress", &ingress.log).await;
        self.ingress = Some(ingress);
    }

    /// Starts a worker named `name` (its claims show `name-…` as `claimed_by`). Returns its index
    /// in `workers`.
    pub async fn start_worker(&mut self, name: &str, extra: &[(&str, &str)]) -> usize {
        let worker = ChatqProcess::spawn(name, "worker", &self.env_with(extra), &self.dir);
        self.workers.push(worker);
        self.workers.len() - 1
    }

    /// The ingress's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn ingress_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The nats-server (or cluster node) named `name`.
    pub fn nats_node(&mut self, name: &str) -> &mut NatsServer {
        std::iter::once(&mut self.nats)
            .chain(&mut self.nats_peers)
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no nats-server named {name}"))
    }

    /// Every nats-server of the stack.
    pub fn nats_nodes(&self) -> Vec<&NatsServer> {
        std::iter::once(&self.nats)
            .chain(&self.nats_peers)
            .collect()
    }

    /// The ingress, which must be running.
    pub fn ingress(&mut self) -> &mut ChatqProcess {
        self.ingress.as_mut().expect("the ingress was started")
    }

    /// Jobs running on workers named `worker`.
    pub async fn running_on(&self, worker: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM jobs WHERE status = 'running' AND claimed_by LIKE $1",
        )
        .bind(format!("{worker}-%"))
        .fetch_one(&self.pool)
        .await
        .unwrap_or(0)
    }

    /// SIGKILLs worker `index`, then waits until Postgres has ended its sessions: a statement it
    /// sent just before (the commit of jobs it finished) is then done or undone, so the jobs read
    /// as running on it next are those it really left behind.
    pub async fn kill_worker(&mut self, index: usize) {
        let ports = self.workers[index].tcp_ports();
        assert!(
            !ports.is_empty(),
            "worker {index} has no TCP connection to tell"
        );
        self.workers[index].sigkill().await;
        self.wait_until(
            "Postgres has ended the killed worker's sessions",
            Duration::from_secs(30),
            || async {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY($1)",
                )
                .bind(&ports)
                .fetch_one(&self.pool)
                .await
                .is_ok_and(|open| open == 0)
            },
        )
        .await;
    }

    /// Jobs with this status.
    pub async fn count_status(&self, status: &str) -> i64 {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE status = $1")
            .bind(status)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(0)
    }

    /// Waits until `check` holds, polling observable state, or fails after `timeout`.
    pub async fn wait_until<F, Fut>(&self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while !check().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: timed out after {timeout:?} waiting until {what}; logs in {}",
                self.name,
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.namespace.to_ascii_uppercase())
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DEAD", self.namespace.to_ascii_uppercase())
    }

    /// Messages in a stream (`None` while NATS cannot say).
    pub async fn stream_messages(&self, stream: &str) -> Option<u64> {
        let mut stream = self.jetstream.get_stream(stream).await.ok()?;
        stream.info().await.ok().map(|info| info.state.messages)
    }

    /// What a stream still holds, for a failure message: each message's subject and
    /// `Nats-Msg-Id` (with the status of its job), and each consumer's counts.
    pub async fn stream_leftovers(&self, name: &str) -> String {
        let Ok(mut stream) = self.jetstream.get_stream(name).await else {
            return format!("stream {name} not found");
        };
        let Ok(info) = stream.info().await.cloned() else {
            return format!("no info for stream {name}");
        };
        let mut said = Vec::new();
        for sequence in info.state.first_sequence..=info.state.last_sequence {
            let Ok(message) = stream.get_raw_message(sequence).await else {
                continue;
            };
            let id = message
                .headers
                .get("Nats-Msg-Id")
                .map(|id| id.to_string())
                .unwrap_or_default();
            let job = id
                .split('.')
                .next()
                .and_then(|job| job.parse::<chatq_common::ids::JobId>().ok());
            let status: Option<(String, i32, i32)> = sqlx::query_as(
                "SELECT status::text, attempts, publication FROM jobs WHERE id = $1",
            )
            .bind(job.map(|job| job.as_uuid()))
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten();
            said.push(format!(
                "#{sequence} {} {id} job (status, attempts, publication) {status:?}",
                message.subject
            ));
        }
        for consumer in stream_consumer_names(&stream).await {
            if let Ok(info) = stream.consumer_info(&consumer).await {
                said.push(format!(
                    "consumer {consumer}: ack pending {}, redelivered {}, pending {}, max_deliver {}",
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_pending,
                    info.config.max_deliver
                ));
            }
        }
        said.join("\n")
    }

    /// Stops every process and removes what the stack created. (A failed test leaves its
    /// directory, with the logs; the processes and the cluster stop when the stack is dropped.)
    pub async fn stop(mut self) {
        for worker in &mut self.workers {
            if worker.is_running() {
                worker.sigkill().await;
            }
        }
        if let Some(ingress) = self.ingress.as_mut()
            && ingress.is_running()
        {
            ingress.sigkill().await;
        }
        self.nats.kill().await;
        for node in &mut self.nats_peers {
            node.kill().await;
        }
        self.pool.close().await;
        drop(self.pooler.take());
        // Dropping the cluster stops it and removes its files.
        drop(self.postgres);
        // CQTEST_KEEP_LOGS=1 keeps the processes' logs of a stack that passed, to read them
        // (target/tmp/faults/<test>-<suffix>).
        if std::env::var_os("CQTEST_KEEP_LOGS").is_none() {
            drop(std::fs::remove_dir_all(&self.dir));
        }
    }
}

async fn stream_consumer_names(stream: &async_nats::jetstream::stream::Stream) -> Vec<String> {
    use futures::TryStreamExt as _;
    stream
        .consumer_names()
        .try_collect()
        .await
        .unwrap_or_default()
}
