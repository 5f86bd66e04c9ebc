//! The test harness: [`spawn_app`] starts a real chatq (ingress and workers, in this process)
//! against real Postgres and NATS, with its own database and its own namespace, and a mock LLM
//! served over HTTP on 127.0.0.1. Tests then talk to it over HTTP like any client.
//!
//! Where the services are: `CQTEST_DATABASE_URL` (a URL whose user may create databases; the
//! default is the local `postgres` database) and `CQTEST_NATS_URL` (default the local server).
//! Tests of the semantic cache put their database on `CQTEST_PGVECTOR_DATABASE_URL`, a server
//! with pgvector (`scripts/test` finds or starts one; the default is `CQTEST_DATABASE_URL`).

#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

#[path = "../support/pgbouncer.rs"]
mod pgbouncer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatq_common::Settings;
use chatq_common::db::Db;
use chatq_common::settings::{DatabasePooler, ProviderKind, SettingValue};
use chatq_common::topology::Topology;
use chatq_ingress::Application;
use chatq_mock_llm::{MockConfig, MockLlm};
use chatq_workers::Worker;
use futures::TryStreamExt;
pub use pgbouncer::{PgBouncer, host_and_port};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub fn admin_database_url() -> String {
    std::env::var("CQTEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("CQTEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The admin URL of a server with the pgvector extension.
pub fn pgvector_admin_database_url() -> String {
    std::env::var("CQTEST_PGVECTOR_DATABASE_URL").unwrap_or_else(|_| admin_database_url())
}

/// A URL for another database on the same server as the admin URL.
pub fn database_url(name: &str) -> String {
    database_url_on(&admin_database_url(), name)
}

/// A URL for the database `name` on the server of the admin URL `admin`.
fn database_url_on(admin: &str, name: &str) -> String {
    let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
    format!("{base}/{name}")
}

/// Whether every test's chatq reaches Postgres through a PgBouncer of its own in transaction
/// mode (`CQTEST_THROUGH_POOLER=1`; `scripts/test` runs part of the suite so).
pub fn through_pgbouncer() -> bool {
    std::env::var("CQTEST_THROUGH_POOLER").is_ok_and(|value| value == "1")
}

/// Server sessions the PgBouncer in front of a test's chatq lends out: fewer than chatq's 10
/// connections, so that one statement after another reaches another session, and enough for the
/// tests that hold three transactions open while a fourth session watches their locks.
const PGBOUNCER_SESSIONS: usize = 4;

/// Creates the database `name` on the test server.
pub async fn create_database(name: &str) {
    create_database_on(&admin_database_url(), name).await;
}

/// Creates the database `name` on the server of the admin URL `admin`.
async fn create_database_on(admin: &str, name: &str) {
    let mut admin = PgConnection::connect(admin)
        .await
        .expect("the test Postgres is reachable");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut admin)
        .await
        .expect("the test database is created");
    admin.close().await.unwrap();
}

/// A fresh name, unique across parallel tests and runs.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// How to start a test app.
pub struct TestOptions {
    pub workers: usize,
    pub mock: MockConfig,
    /// Changes to the settings, applied last.
    pub settings: Box<dyn FnOnce(&mut Settings) + Send>,
    /// The database lives on the server with pgvector ([`pgvector_admin_database_url`]).
    pub pgvector: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            workers: 1,
            mock: MockConfig::default(),
            settings: Box::new(|_| {}),
            pgvector: false,
        }
    }
}

/// A running chatq with its own database and namespace.
pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    pub pool: Db,
    pub nats: async_nats::Client,
    pub settings: Arc<Settings>,
    pub topology: Topology,
    /// An API key of the test's tenant.
    pub key: String,
    pub mock: MockLlm,
    pub database: String,
    /// The admin URL of the server `database` is on, to drop it.
    admin_url: String,
    /// The PgBouncer chatq reaches Postgres through, when the run asks for one.
    pooler: Option<PgBouncer>,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestOptions::default()).await
}

pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    // reqwest is built without a default TLS crypto backend; chatq uses ring.
    drop(rustls::crypto::ring::default_provider().install_default());
    chatq_common::telemetry::init(
        chatq_common::settings::LogFormat::Pretty,
        &std::env::var("CQTEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap(), options.mock)
        .await
        .expect("mock LLM starts");
    let database = unique("chatq_t_");
    let admin_url = if options.pgvector {
        pgvector_admin_database_url()
    } else {
        admin_database_url()
    };
    let mut settings = Settings::default();
    settings.ingress.http_addr = "127.0.0.1:0".parse().unwrap();
    let direct_url = database_url_on(&admin_url, &database);
    // Through a pooler in transaction mode, chatq cannot create its database: it is made here.
    let pooler = if through_pgbouncer() {
        create_database_on(&admin_url, &database).await;
        let (host, port) = host_and_port(&admin_url);
        let pooler =
            PgBouncer::start_with_sessions((host.as_str(), port), PGBOUNCER_SESSIONS).await;
        settings.database.pooler = DatabasePooler::Transaction;
        settings.database.url = SecretString::from(pooler.url_for(&direct_url));
        Some(pooler)
    } else {
        settings.database.url = SecretString::from(direct_url);
        None
    };
    settings.database.max_connections = 10;
    settings.nats.url = nats_url().parse().expect("CQTEST_NATS_URL is a NATS URL");
    settings.nats.namespace = SettingValue::parse_setting(&unique("cqt")).unwrap();
    // JetStream reserves a stream's max_bytes up front; many tests at once must fit.
    settings.nats.events_max_bytes = 16 * 1024 * 1024;
    settings.provider.kind = ProviderKind::OpenAi;
    settings.provider.base_url = Some(mock.base_url());
    settings.provider.model = Some("mock-model".into());
    settings.worker.concurrency = 16;
    // Tests send bursts from one key; the per-key limit has its own test.
    settings.limits.key_rate_limit_per_sec = None;
    (options.settings)(&mut settings);
    let settings = Arc::new(settings);

    let pool = chatq_common::db::connect(&settings.database)
        .await
        .expect("test database is created");
    chatq_common::db::migrate(&pool)
        .await
        .expect("migrations apply");
    let nats = chatq_common::nats::connect(&settings.nats.url, "test")
        .await
        .expect("NATS is reachable");
    let jetstream = async_nats::jetstream::new(nats.clone());
    let topology = Topology::new(&settings.nats);
    topology
        .ensure(&jetstream)
        .await
        .expect("topology is created");

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let app = Application::build(&settings, pool.clone(), nats.clone())
        .await
        .expect("ingress binds");
    let addr = app.local_addr().unwrap();
    tasks.spawn(app.run_until_stopped(shutdown.clone()));
    for _ in 0..options.workers {
        // Each worker gets its own connection, as separate processes would.
        let client = chatq_common::nats::connect(&settings.nats.url, "test-worker")
            .await
            .unwrap();
        let worker = Worker::build(&settings, pool.clone(), client)
            .await
            .expect("worker starts");
        tasks.spawn(worker.run_until_stopped(shutdown.clone()));
    }
    let key = chatq_common::db::keys::create_key(
        &pool,
        "tenant-a",
        chatq_common::db::keys::KeyScope::Tenant,
        None,
    )
    .await
    .unwrap()
    .plaintext;
    TestApp {
        addr,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        pool,
        nats,
        topology,
        key,
        mock,
        database,
        admin_url,
        pooler,
        settings,
        shutdown,
        tasks,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with this test's key.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.key)
    }

    pub fn request_as(&self, key: &str, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(key)
    }

    /// An operator key (the fleet's queue, workers and every tenant's dead letters).
    pub async fn admin_key(&self) -> String {
        chatq_common::db::keys::create_key(
            &self.pool,
            "operators",
            chatq_common::db::keys::KeyScope::Operator,
            None,
        )
        .await
        .unwrap()
        .plaintext
    }

    /// The id of the tenant `name` (the test's own is "tenant-a"), created if there is none: the
    /// tenant of a new key by that name.
    pub async fn tenant(&self, name: &str) -> chatq_common::ids::TenantId {
        chatq_common::db::keys::create_key(
            &self.pool,
            name,
            chatq_common::db::keys::KeyScope::Tenant,
            None,
        )
        .await
        .unwrap()
        .tenant_id
    }

    /// A key for another tenant.
    pub async fn other_tenant_key(&self, name: &str) -> String {
        chatq_common::db::keys::create_key(
            &self.pool,
            name,
            chatq_common::db::keys::KeyScope::Tenant,
            None,
        )
        .await
        .unwrap()
        .plaintext
    }

    /// A GET with this test's key.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(Method::GET, path).send().await.unwrap()
    }

    /// A GET that must answer 200; returns the body.
    pub async fn get_ok(&self, path: &str) -> Value {
        let response = self.get(path).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// A POST of a JSON body with this test's key.
    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn create_conversation(&self, body: Value) -> Value {
        let response = self
            .request(Method::POST, "/v1/conversations")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Sends a message; returns the 202 body `{job, message}`.
    pub async fn send(&self, conversation: &str, content: &str) -> Value {
        let response = self
            .request(Method::POST, &messages_path(conversation))
            .json(&json!({ "content": content }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Long-polls a job until it is finished (or panics after a minute).
    pub async fn wait_for_job(&self, job: &str) -> Value {
        self.wait_for_job_as(&self.key, job).await
    }

    /// [`TestApp::wait_for_job`] with another tenant's key.
    pub async fn wait_for_job_as(&self, key: &str, job: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let job: Value = self
                .request_as(key, Method::GET, &format!("/v1/jobs/{job}?wait=10"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if !matches!(job["status"].as_str(), Some("queued" | "running")) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job did not finish: {job}"
            );
        }
    }

    /// One turn: sends a message and waits for its job; returns the finished job.
    pub async fn turn(&self, conversation: &str, content: &str) -> Value {
        let accepted = self.send(conversation, content).await;
        self.wait_for_job(accepted["job"]["id"].as_str().unwrap())
            .await
    }

    pub async fn history(&self, conversation: &str) -> Vec<Value> {
        let page: Value = self
            .request(
                Method::GET,
                &format!("{}?limit=1000", messages_path(conversation)),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        page["data"].as_array().unwrap().clone()
    }

    /// Row counts of the tables a request could write, to check a rejected request wrote nothing.
    pub async fn row_counts(&self) -> (i64, i64, i64, i64) {
        let count = |table: &'static str| {
            let pool = self.pool.clone();
            async move {
                let sql = match table {
                    "conversations" => "SELECT count(*) FROM conversations",
                    "messages" => "SELECT count(*) FROM messages",
                    "jobs" => "SELECT count(*) FROM jobs",
                    _ => "SELECT count(*) FROM feedback",
                };
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        (
            count("conversations").await,
            count("messages").await,
            count("jobs").await,
            count("feedback").await,
        )
    }

    /// Stops chatq, deletes its streams and drops its database.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while let Some(result) = self.tasks.join_next().await {
            result
                .expect("task did not panic")
                .expect("role stopped cleanly");
        }
        self.delete_streams().await;
        self.pool.close().await;
        drop(self.pooler.take());
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let drop_sql = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.database);
            drop(
                sqlx::raw_sql(sqlx::AssertSqlSafe(drop_sql))
                    .execute(&mut admin)
                    .await,
            );
        }
    }

    /// Deletes every stream of this test's namespace: its jobs, dead letters and events, and the
    /// streams behind its KV buckets and object stores (`KV_<namespace>_…`).
    async fn delete_streams(&self) {
        let jetstream = async_nats::jetstream::new(self.nats.clone());
        let jobs = self.topology.jobs_stream();
        let namespace = jobs.trim_end_matches("_JOBS").to_ascii_lowercase();
        let names: Vec<String> = match jetstream.stream_names().try_collect().await {
            Ok(names) => names,
            // Without a listing, at least the streams every namespace has.
            Err(_) => vec![
                jobs.clone(),
                self.topology.dead_letter_stream(),
                self.topology.events_stream(),
            ],
        };
        for name in names
            .iter()
            .filter(|name| name.to_ascii_lowercase().contains(&namespace))
        {
            drop(jetstream.delete_stream(name).await);
        }
    }
}

/// The path of a conversation's messages (history, send, clear).
pub fn messages_path(conversation: &str) -> String {
    format!("/v1/conversations/{conversation}/messages")
}

/// The `id` of an API object.
pub fn id_of(object: &Value) -> String {
    object["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {object}"))
        .to_owned()
}

/// Asserts an OpenAI-shaped error with this status and type; returns the error object.
pub async fn assert_error(response: reqwest::Response, status: StatusCode, kind: &str) -> Value {
    let actual = response.status();
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert_eq!(actual, status, "unexpected status; body: {body}");
    let error = &body["error"];
    assert_eq!(error["type"], kind, "unexpected error type: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without a message: {body}"
    );
    assert!(
        error.get("code").is_some() && error.get("param").is_some(),
        "error without code/param: {body}"
    );
    error.clone()
}

/// Runs a Python script from `tests/sdk` (the official SDKs, unpatched) against `app`: with
/// `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `MOCK_URL` (the mock provider) and `extra` set. Fails the
/// test unless the script exits 0 and prints `done`.
pub async fn run_sdk_script(app: &TestApp, script: &str, extra: &[(&str, String)], done: &str) {
    let python = std::env::var("CQTEST_PYTHON").unwrap_or_else(|_| {
        panic!("CQTEST_PYTHON is not set: run the suite with scripts/test, which installs the SDKs")
    });
    let path = format!("{}/tests/sdk/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = tokio::process::Command::new(python)
        .arg(path)
        .env("OPENAI_BASE_URL", app.url("/v1"))
        .env("OPENAI_API_KEY", &app.key)
        .env("MOCK_URL", format!("http://{}", app.mock.addr()))
        .envs(extra.iter().map(|(name, value)| (*name, value.as_str())))
        .output()
        .await
        .expect("python runs");
    let report = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{script} failed\n{report}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(done),
        "{report}"
    );
}

/// A chat completion of one user message to `mock-model`, as an ingress would record it, for
/// tests that record jobs straight through `chatq_common::db::jobs::record`.
pub fn completion_job(
    tenant: chatq_common::ids::TenantId,
    prompt: &str,
) -> chatq_common::db::jobs::NewJob {
    use chatq_common::chat::{ChatMessage, GenerationParams, Role};
    chatq_common::db::jobs::NewJob {
        id: chatq_common::ids::JobId::new(),
        tenant,
        lane: chatq_common::job::Lane::Interactive,
        request: chatq_common::job::JobRequest::ChatCompletion {
            params: GenerationParams {
                model: "mock-model".into(),
                ..GenerationParams::default()
            },
            body: None,
            messages: vec![ChatMessage::new(Role::User, prompt)],
        },
        model: Some("mock-model".into()),
        default_model: None,
        idempotency: None,
        deadline_secs: 600.0,
        max_queued: None,
        turn: None,
        trace: None,
    }
}
