//! Every setting of every role, typed, grouped by the component that uses it.
//!
//! Each setting is declared once, in the [`settings!`] invocation below, inside its group, with its
//! type, its default and one line of documentation. From that single declaration come:
//!
//! - the field of its group's struct (`settings.worker.concurrency`); a component is handed only
//!   the groups it uses (the database pool only [`DatabaseSettings`], the topology only
//!   [`NatsSettings`], …);
//! - the TOML key (`worker_concurrency = 64`: flat, one name per setting, whatever its group);
//! - the environment variable (`CHATQ_` + the upper-cased key: `CHATQ_WORKER_CONCURRENCY`);
//! - the command-line flag (`--worker-concurrency`), with its help text;
//! - the row of the settings table in the README (a test checks the README lists every one).
//!
//! The macro, and [`SettingInfo`] that describes one setting, are in [`declare`].
//!
//! Layers, lowest first: defaults, then the TOML file named by `--config` or `CHATQ_CONFIG`, then
//! `CHATQ_*` variables, then flags ([`layers`]). Unknown keys in the file and unknown `CHATQ_*`
//! variables are errors, so a typo never silently leaves a default in place.
//!
//! The `faults` group is part of [`Settings`] only in builds made for the fault tests (the
//! `fault-injection` cargo feature): a release build refuses its settings, and holds none of its
//! hooks. [`FaultSettings::SETTINGS`] still names them, for the documentation.

mod declare;
mod flags;
mod layers;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use secrecy::{ExposeSecret, SecretString};

pub use self::declare::SettingInfo;
use self::declare::settings;
pub use self::flags::SettingsFlags;
use self::layers::Layers;
pub use self::layers::{SettingsError, Source};
pub use self::values::{
    CacheScope, DatabasePooler, LogFormat, Namespace, NatsServers, ProviderKind, SettingValue,
    UnknownParameters, redact_url,
};

/// Prefix of every environment variable chatq reads.
pub const ENV_PREFIX: &str = "CHATQ_";
/// The environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "CHATQ_CONFIG";

settings! {
    /// The HTTP ingress.
    ingress: IngressSettings {
        /// Address the HTTP ingress listens on.
        http_addr: SocketAddr = "127.0.0.1:8080";
        /// Seconds between keep-alive comments on an idle event stream.
        sse_keepalive_secs: u64 = "15";
        /// Cancel the job of a chat completion whose client went away before the provider was called (`true` or `false`).
        cancel_abandoned_completions: bool = "true";
        /// What `POST /v1/chat/completions` does with a parameter it does not know: `refuse` it with a 400 naming it (for a public deployment), or `forward` it to the provider as given (for a private gateway).
        unknown_parameters: UnknownParameters = "refuse";
        /// Most client connections one ingress holds open (event streams included); beyond it new connections wait in the listen backlog until one closes. Keep the process's file-descriptor limit above it.
        max_connections / http_max_connections: usize = "25000";
        /// Seconds a connection has to send a request's headers, counted from the end of the previous request on a kept-alive connection; a slower one is closed.
        header_read_timeout_secs: u64 = "30";
        /// Seconds a request's body may take to arrive once its headers have (408 above it).
        body_read_timeout_secs: u64 = "30";
    }
    /// Postgres, the source of truth.
    database: DatabaseSettings {
        /// Postgres connection URL (the source of truth). The database is created if it is missing.
        #[secret]
        url / database_url: SecretString = "postgres://postgres@127.0.0.1:5432/chatq";
        /// Most Postgres connections one process opens.
        max_connections / database_max_connections: u32 = "32";
        /// What sits between chatq and Postgres: `none` (or a pooler in session mode), or `transaction` for a pooler in transaction mode (PgBouncer's `pool_mode = transaction`): every statement then runs in a transaction that starts in a session cleared of prepared statements; the database must exist already.
        pooler / database_pooler: DatabasePooler = "none";
    }
    /// NATS and the JetStream topology: streams, consumers, how jobs are delivered.
    nats: NatsSettings {
        /// NATS server URL, or several separated by commas (the seeds of a cluster: `nats://n1:4222,nats://n2:4222`); JetStream must be enabled.
        url / nats_url: NatsServers = "nats://127.0.0.1:4222";
        /// Prefix of every stream, subject, consumer and bucket, so deployments or test runs can share one NATS.
        namespace: Namespace = "chatq";
        /// Copies JetStream keeps of each chatq stream (1 for a single server; 3 on a 3-node cluster).
        stream_replicas: usize = "1";
        /// Most jobs waiting in each lane's queue; a full interactive lane answers 503 with `Retry-After`, while batch lines beyond a full batch lane wait in Postgres and are queued as it drains.
        queue_max_jobs: i64 = "1000000";
        /// Most jobs the whole fleet holds at once (each lane consumer's `max_ack_pending`); keep it at least the sum of every worker's concurrency.
        queue_max_in_flight: i64 = "10000";
        /// Attempts a job gets before it ends `failed` and goes to the dead-letter stream.
        job_max_attempts: u32 = "5";
        /// Seconds a worker may hold a job without reporting progress before it is handed to another worker.
        job_ack_wait_secs: u64 = "30";
        /// Seconds a job's events stay replayable (`Last-Event-ID`, late subscribers) after they were emitted.
        events_retention_secs: u64 = "600";
        /// Most bytes the job-events stream keeps; the oldest events go first beyond it.
        events_max_bytes: i64 = "1073741824";
        /// Seconds between worker heartbeats; the fleet forgets a worker three heartbeats after its last.
        worker_heartbeat_secs: u64 = "2";
    }
    /// The LLM provider workers call.
    provider: ProviderSettings {
        /// LLM provider workers call: `openai` (any OpenAI-compatible endpoint) or `simulated`.
        kind / provider: ProviderKind = "simulated";
        /// Base URL of the OpenAI-compatible provider, e.g. `https://api.openai.com/v1`.
        base_url / provider_base_url: Option<String> = "";
        /// API key sent to the provider as a bearer token. Never logged.
        #[secret]
        api_key / provider_api_key: Option<SecretString> = "";
        /// Model used when a request and its conversation name none.
        model: Option<String> = "";
        /// Comma-separated model names clients may ask for (listed by `GET /v1/models` with `model`); empty accepts any name.
        models: String = "";
        /// Seconds to wait for a TCP/TLS connection to the provider.
        connect_timeout_secs / provider_connect_timeout_secs: u64 = "5";
        /// Seconds the provider may stay silent (before the first byte, or between streamed chunks) before the attempt fails.
        idle_timeout_secs / provider_idle_timeout_secs: u64 = "60";
        /// Seconds one provider call may take in all.
        request_timeout_secs / provider_request_timeout_secs: u64 = "300";
        /// Most bytes read from one provider response; a larger reply fails the job instead of growing memory.
        max_response_bytes / provider_max_response_bytes: usize = "4194304";
    }
    /// Limits: on the provider (for the whole fleet), on clients, on what a request may ask for.
    limits: LimitSettings {
        /// Provider requests per minute, for the whole fleet of workers.
        provider_rpm: Option<u32> = "unlimited";
        /// Provider tokens per minute, for the whole fleet of workers.
        provider_tpm: Option<u32> = "unlimited";
        /// Provider requests in flight, for the whole fleet of workers.
        provider_max_concurrency: Option<u32> = "unlimited";
        /// Requests per second one API key may make to one ingress (429 with `Retry-After` above it).
        key_rate_limit_per_sec: Option<u32> = "200";
        /// Requests one API key may make in a burst above its rate.
        key_rate_limit_burst: u32 = "1000";
        /// Failed authentications one peer address may make per minute to one ingress; beyond it, its unknown keys get 429 without a lookup (keys it already used still work). Behind a proxy every client shares the proxy's address.
        auth_failures_per_min: Option<u32> = "60";
        /// Most API key lookups one ingress runs against Postgres at once (a key found in the cache needs none); a lookup that waits 2 s for a slot gets 503.
        auth_max_concurrent_lookups: usize = "16";
        /// Seconds an ingress remembers that a key does not exist, so asking again costs no query.
        auth_unknown_key_cache_secs: u64 = "10";
        /// Largest request body the ingress reads, in bytes (413 above it).
        max_request_bytes: usize = "8388608";
        /// Longest message content, in characters (400 above it).
        max_message_chars: usize = "32000";
        /// Most messages one conversation stores (409 `conversation_full` above it).
        max_messages_per_conversation: u32 = "10000";
        /// Largest `max_tokens` a request may ask for.
        max_output_tokens: u32 = "16384";
        /// Most choices (`n`) one chat completion may ask for.
        max_choices: u32 = "16";
        /// Most image, audio and file content parts one chat completion may carry (400 above it).
        max_media_parts: usize = "16";
        /// Most bytes of inline media (data URLs, base64 audio and files) one chat completion may carry (413 above it; the body limit applies too).
        max_media_bytes: usize = "6291456";
        /// Most tools one chat completion may offer the model.
        max_tools: usize = "128";
        /// Largest JSON schema (of a tool's parameters or a `json_schema` response format), in bytes of JSON.
        max_schema_bytes: usize = "65536";
        /// Most history messages sent to the provider with each turn.
        history_max_messages: usize = "50";
        /// Most estimated tokens of history sent to the provider with each turn (about 4 characters a token).
        history_max_tokens: usize = "16000";
        /// Seconds a job may wait and run in all before it ends `expired`.
        job_deadline_secs: u64 = "600";
        /// Most event streams (SSE connections) one ingress holds open; beyond it new ones get 503.
        max_event_streams: usize = "20000";
        /// Most interactive jobs one tenant may have queued (waiting for a worker), across the fleet; beyond it 429 `quota_exceeded` with `Retry-After`. `chatq tenants set-quota` overrides it for one tenant.
        tenant_max_queued_jobs: Option<u32> = "10000";
        /// Most interactive jobs of one tenant that the fleet runs at once; a tenant's job beyond it waits in the queue (not an attempt) while other tenants' jobs start. `chatq tenants set-quota` overrides it for one tenant.
        tenant_max_jobs_in_flight: Option<u32> = "256";
        /// Most event streams (SSE connections) one tenant holds open on one ingress; beyond it 429 `quota_exceeded` with `Retry-After`. `chatq tenants set-quota` overrides it for one tenant.
        tenant_max_event_streams: Option<u32> = "1000";
        /// Most conversations one tenant stores; beyond it creating one is 429 `quota_exceeded` with `Retry-After`. `chatq tenants set-quota` overrides it for one tenant.
        tenant_max_conversations: Option<u32> = "100000";
        /// Interactive jobs a tenant may have queued in front: a job of a tenant with this many queued already waits behind every other tenant's (README "Security"), so a tenant that floods the queue delays its own jobs, not others'.
        fair_share_queued_jobs: u32 = "8";
        /// Longest wait, in seconds, that `Prefer: wait=N` and `?wait=N` may ask for.
        max_wait_secs: u64 = "60";
        /// Largest file `POST /v1/files` stores, in bytes (413 above it); an upload is streamed to Postgres, never held whole.
        max_file_bytes: u64 = "209715200";
        /// Most lines (batch requests) one uploaded file may hold (400 above it).
        max_file_lines: u64 = "100000";
        /// Shortest `completion_window` a batch may ask for, in seconds.
        batch_min_window_secs: u64 = "3600";
        /// Longest `completion_window` a batch may ask for, in seconds.
        batch_max_window_secs: u64 = "604800";
    }
    /// A worker process.
    worker: WorkerSettings {
        /// Jobs one worker process runs at once.
        concurrency / worker_concurrency: usize = "64";
        /// Where a `chatq worker` serves `/metrics` and `/healthz` (e.g. `0.0.0.0:9091`); unset serves none. The ingress serves them on its own address.
        metrics_addr / worker_metrics_addr: Option<SocketAddr> = "";
        /// Seconds between reconciler passes, which republish jobs Postgres has as queued but NATS may not.
        reconcile_interval_secs: u64 = "5";
        /// Seconds a queued job may stay unpublished, or a dead worker's job unclaimed past its lease, before the reconciler publishes it again.
        reconcile_after_secs: u64 = "10";
        /// Seconds between checks, by one reconciler of the fleet, that every queued job still has a copy in the jobs stream (sooner when the stream holds fewer jobs than Postgres expects).
        reconcile_audit_secs: u64 = "60";
        /// Seconds a stopping worker has to finish what it holds before handing the rest back.
        shutdown_grace_secs: u64 = "30";
    }
    /// The reply cache of deterministic requests (temperature 0 or a seed), in every worker.
    cache: CacheSettings {
        /// Serve repeated deterministic requests (temperature 0, or a fixed seed) from the reply cache, and make concurrent identical ones share one provider call (`true` or `false`).
        enabled / cache_enabled: bool = "true";
        /// Seconds a cached reply is served, in both tiers (a worker's memory and the shared NATS KV bucket).
        ttl_secs / cache_ttl_secs: u64 = "3600";
        /// Most bytes of memory one worker's kept replies take (their text, structure and the cache's own entry, as the allocator counts them); the least used go first beyond it.
        memory_bytes / cache_memory_bytes: u64 = "67108864";
        /// Whose requests share a cached reply: `tenant` (only the tenant's own) or `global` (every tenant's: for deployments whose tenants may see each other's replies).
        scope / cache_scope: CacheScope = "tenant";
        /// Also serve a deterministic request the reply of an earlier one that differs only in the wording of its last user message, by the similarity of their embeddings (the provider's `/embeddings`) in Postgres with the pgvector extension (`true` or `false`; needs `cache_enabled`).
        semantic / cache_semantic: bool = "false";
        /// Least cosine similarity (0 to 1) between the embeddings of two last user messages for the semantic tier to serve one's reply for the other; higher is stricter.
        semantic_threshold / cache_semantic_threshold: f64 = "0.95";
        /// The embedding model the semantic tier asks the provider's `/embeddings` for.
        semantic_model / cache_semantic_model: String = "text-embedding-3-small";
        /// Most bytes of memory one worker's kept conversation windows take (their text, structure and the cache's own entry), so that a conversation's next turn reads only its new messages from Postgres; `0` reads the whole window every turn.
        history_bytes / cache_history_bytes: u64 = "33554432";
    }
    /// How long finished work is kept in Postgres; a background sweep in every worker deletes the rest, in small batches.
    retention: RetentionSettings {
        /// Seconds a job that ended `succeeded`, `cancelled` or `expired` is kept after it ended (its messages stay with their conversation); `unlimited` keeps them all.
        finished_jobs_secs / retention_finished_jobs_secs: Option<u64> = "2592000";
        /// Seconds a dead letter (a job that ended `failed`) is kept after it failed; `unlimited` keeps them all.
        dead_letters_secs / retention_dead_letters_secs: Option<u64> = "2592000";
        /// Seconds a conversation may go without a message before it is deleted with its messages and jobs (never while a job of it is queued or running), and how long a response (Responses API) is kept after it finished; `unlimited` keeps every conversation and response.
        idle_conversations_secs / retention_idle_conversations_secs: Option<u64> = "unlimited";
        /// Seconds a batch that ended (`completed`, `failed`, `expired` or `cancelled`) is kept after it ended, with its lines and its output and error files; `unlimited` keeps them all.
        batches_secs / retention_batches_secs: Option<u64> = "2592000";
        /// Seconds an uploaded file is kept after its upload (a batch's output and error files follow their batch, or `output_expires_after`); `unlimited` keeps them until deleted.
        uploads_secs / retention_uploads_secs: Option<u64> = "2592000";
        /// Seconds a webhook delivery that ended (delivered, or failed after its retries) is kept after it ended; `unlimited` keeps them all.
        webhook_deliveries_secs / retention_webhook_deliveries_secs: Option<u64> = "604800";
        /// Seconds between retention sweeps.
        sweep_interval_secs / retention_sweep_interval_secs: u64 = "60";
        /// Most rows one sweep deletes in one statement; a sweep repeats batches until nothing expired is left.
        sweep_batch / retention_sweep_batch: u32 = "500";
    }
    /// Completion webhooks: where deliveries may go, and how workers send and retry them.
    webhooks: WebhookSettings {
        /// Let webhook endpoints use private, loopback, link-local and other non-public addresses (`true` or `false`); leave it `false` wherever tenants are not trusted with the workers' network.
        allow_private_targets / webhook_allow_private_targets: bool = "false";
        /// Most webhook endpoints one tenant may register.
        max_endpoints / webhook_max_endpoints: i64 = "16";
        /// Webhook deliveries one worker sends at once; a receiver that never answers holds one of them until the timeout, never a job slot.
        max_concurrent / webhook_max_concurrent_deliveries: usize = "32";
        /// Seconds to wait for a webhook receiver's TCP/TLS connection.
        connect_timeout_secs / webhook_connect_timeout_secs: u64 = "5";
        /// Seconds one webhook delivery may take in all, the receiver's answer included.
        timeout_secs / webhook_timeout_secs: u64 = "15";
        /// Milliseconds before the first retry of a failed webhook delivery; each later retry waits about twice as long (with jitter), up to `webhook_retry_max_delay_secs`.
        retry_base_ms / webhook_retry_base_ms: u64 = "5000";
        /// Longest wait between two attempts of a webhook delivery, in seconds.
        retry_max_delay_secs / webhook_retry_max_delay_secs: u64 = "3600";
        /// Seconds after its event a webhook delivery is still retried; after that it ends `failed`.
        retry_for_secs / webhook_retry_for_secs: u64 = "129600";
        /// Milliseconds between a worker's looks for webhook deliveries due (a look finds the outbox's due rows through a partial index, so an idle one costs next to nothing).
        poll_interval_ms / webhook_poll_interval_ms: u64 = "200";
    }
    /// The simulated provider (`CHATQ_PROVIDER=simulated`).
    simulated: SimulatedSettings {
        /// Simulated provider: milliseconds before the first token.
        ttft_ms / simulated_ttft_ms: u64 = "150";
        /// Simulated provider: milliseconds between tokens.
        token_delay_ms / simulated_token_delay_ms: u64 = "15";
        /// Simulated provider: tokens in each reply.
        tokens / simulated_tokens: u32 = "24";
        /// Simulated provider: fraction of calls (0 to 1) that fail with a retryable error.
        failure_rate / simulated_failure_rate: f64 = "0";
    }
    /// Logs.
    telemetry: TelemetrySettings {
        /// Log format: `pretty` or `json`.
        log_format: LogFormat = "pretty";
        /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `chatq=debug,info`).
        log: String = "info,async_nats=warn";
    }
    /// Fault injection, in builds made for the fault tests only (`--features fault-injection`).
    #[cfg(feature = "fault-injection")]
    faults: FaultSettings {
        /// For fault testing only: the ingress exits right after recording this many jobs, before publishing the last (0: never).
        exit_before_publish / fault_exit_before_publish: u64 = "0";
        /// For fault testing only: a worker exits right after committing this many results, before acknowledging the last (0: never).
        exit_after_commit / fault_exit_after_commit: u64 = "0";
        /// For fault testing only: the ingress takes the commits of its first this many batches of recorded jobs as failed, as if their acknowledgement were lost (0: never).
        lose_record_ack / fault_lose_record_ack: u64 = "0";
        /// For fault testing only: the ingress exits in the middle of validating this many batches, after recording the first page of the last one's lines and before committing them (0: never).
        exit_mid_validation / fault_exit_mid_validation: u64 = "0";
    }
}

impl Default for Settings {
    #[expect(
        clippy::expect_used,
        reason = "defaults are literals, and a unit test parses every one of them"
    )]
    fn default() -> Self {
        Self::from_layers(&Layers::default()).expect("every default setting parses")
    }
}

impl Settings {
    /// Loads the settings a binary runs with: defaults, the config file, `CHATQ_*` variables, flags.
    ///
    /// # Errors
    /// An unreadable or invalid file, an unknown key or variable, or a value that does not parse.
    pub fn load(flags: &SettingsFlags) -> Result<Self, SettingsError> {
        let config = flags
            .config
            .clone()
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        let file = match &config {
            Some(path) => Some((
                path.clone(),
                std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile {
                    path: path.clone(),
                    source,
                })?,
            )),
            None => None,
        };
        let file = file
            .as_ref()
            .map(|(path, text)| (path.as_path(), text.as_str()));
        Self::from_sources(file, std::env::vars(), flags)
    }

    /// Builds settings from explicit sources; [`Settings::load`] passes the real ones.
    ///
    /// # Errors
    /// As [`Settings::load`].
    pub fn from_sources(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &SettingsFlags,
    ) -> Result<Self, SettingsError> {
        let mut layers = Layers::default();
        if let Some((path, text)) = file {
            layers.add_file(path, text)?;
        }
        layers.add_env(env)?;
        for (key, value) in &flags.values {
            layers.set(key, value.clone(), Source::Flag(key.replace('_', "-")));
        }
        Self::from_layers(&layers)
    }
}

impl DatabaseSettings {
    /// The database URL with any password replaced, for logs.
    pub fn url_for_logs(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

#[cfg(test)]
mod tests;
