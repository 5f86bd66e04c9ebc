//! One typed settings struct for every role.
//!
//! Each setting is declared once, in the [`settings!`] invocation below, with its type, its default
//! and one line of documentation. From that single declaration come:
//!
//! - the field of [`Settings`],
//! - the TOML key (the field name: `worker_concurrency = 64`),
//! - the environment variable (`CHATQ_` + the upper-cased name: `CHATQ_WORKER_CONCURRENCY`),
//! - the command-line flag (`--worker-concurrency`), with its help text,
//! - the row of the settings table in the README (a test checks the README lists every one).
//!
//! Layers, lowest first: defaults, then the TOML file named by `--config` or `CHATQ_CONFIG`, then
//! `CHATQ_*` variables, then flags. Unknown keys in the file and unknown `CHATQ_*` variables are
//! errors, so a typo never silently leaves a default in place.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgMatches, Command};
use secrecy::{ExposeSecret, SecretString};

/// Where a setting's value came from, so an error can point at the right place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(path) => write!(f, "the config file {}", path.display()),
            Source::Env(name) => write!(f, "the environment variable {name}"),
            Source::Flag(flag) => write!(f, "the flag --{flag}"),
        }
    }
}

/// Why the settings could not be loaded. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid TOML: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("unknown setting `{key}` in {origin}; `chatq <role> --help` lists every setting")]
    Unknown { key: String, origin: Source },
    #[error("`{key}` in {origin} must be a single value (a string, number or boolean)")]
    NotScalar { key: String, origin: Source },
    #[error("invalid value {value:?} for `{key}` (from {origin}): {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Source,
        reason: String,
    },
}

/// Parsing of one setting's text form. Implemented for the handful of types settings use.
pub trait SettingValue: Sized {
    /// # Errors
    /// A human-readable reason when the text is not a valid value.
    fn parse_setting(text: &str) -> Result<Self, String>;
}

macro_rules! from_str_setting {
    ($($ty:ty),* $(,)?) => {$(
        impl SettingValue for $ty {
            fn parse_setting(text: &str) -> Result<Self, String> {
                text.trim().parse::<$ty>().map_err(|err| err.to_string())
            }
        }
    )*};
}
from_str_setting!(u16, u32, u64, i64, usize, f64, bool, SocketAddr);

impl SettingValue for String {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(text.to_owned())
    }
}

impl SettingValue for SecretString {
    fn parse_setting(text: &str) -> Result<Self, String> {
        Ok(SecretString::from(text.to_owned()))
    }
}

/// `Option<T>`: empty, `none` or `unlimited` mean "not set".
impl<T: SettingValue> SettingValue for Option<T> {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "none" | "unlimited" => Ok(None),
            other => T::parse_setting(other).map(Some),
        }
    }
}

/// Which LLM provider workers call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Any OpenAI-compatible endpoint: OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM, ...
    OpenAi,
    /// Built in, deterministic, no network: for demos and first runs.
    Simulated,
}

impl SettingValue for ProviderKind {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "openai" => Ok(Self::OpenAi),
            "simulated" => Ok(Self::Simulated),
            _ => Err("expected `openai` or `simulated`".into()),
        }
    }
}

/// How logs are written: for people at a terminal, or for a log pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl SettingValue for LogFormat {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            _ => Err("expected `pretty` or `json`".into()),
        }
    }
}

/// A namespace must be usable inside stream, consumer and bucket names and subjects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace(String);

impl Namespace {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl SettingValue for Namespace {
    fn parse_setting(text: &str) -> Result<Self, String> {
        let valid = !text.is_empty()
            && text.len() <= 32
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err("use 1 to 32 characters among a-z, 0-9 and _".into())
        }
    }
}

/// One setting, as documented in `--help` and the README.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// TOML key and field name, e.g. `worker_concurrency`.
    pub key: &'static str,
    /// Default in its text form; empty means "not set".
    pub default: &'static str,
    pub doc: &'static str,
    /// Secrets are never printed, not even their defaults.
    pub secret: bool,
}

impl SettingInfo {
    /// `CHATQ_WORKER_CONCURRENCY`.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}{}", self.key.to_ascii_uppercase())
    }

    /// `worker-concurrency` (without the dashes in front).
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }
}

/// Prefix of every environment variable chatq reads.
pub const ENV_PREFIX: &str = "CHATQ_";
/// The environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "CHATQ_CONFIG";

macro_rules! settings {
    ($(
        #[doc = $doc:literal]
        $(#[$secret:ident])?
        $name:ident : $ty:ty = $default:literal;
    )+) => {
        /// Every setting of every role, already validated. Build it with [`Settings::load`]
        /// (binaries) or [`Settings::default`] (tests, which then change fields).
        #[derive(Debug, Clone)]
        pub struct Settings {
            $(#[doc = $doc] pub $name: $ty,)+
        }

        /// Every setting, in declaration order.
        pub const SETTINGS: &[SettingInfo] = &[$(
            SettingInfo {
                key: stringify!($name),
                default: $default,
                doc: $doc.trim_ascii(),
                secret: settings!(@secret $($secret)?),
            },
        )+];

        impl Settings {
            fn from_layers(layers: &Layers) -> Result<Self, SettingsError> {
                Ok(Self { $($name: layers.value(stringify!($name), $default)?,)+ })
            }
        }
    };
    (@secret secret) => { true };
    (@secret) => { false };
}

settings! {
    /// Address the HTTP ingress listens on.
    http_addr: SocketAddr = "127.0.0.1:8080";
    /// Postgres connection URL (the source of truth). The database is created if it is missing.
    #[secret]
    database_url: SecretString = "postgres://postgres@127.0.0.1:5432/chatq";
    /// Most Postgres connections one process opens.
    database_max_connections: u32 = "32";
    /// NATS server URL (JetStream must be enabled).
    nats_url: String = "nats://127.0.0.1:4222";
    /// Prefix of every stream, subject, consumer and bucket, so deployments or test runs can share one NATS.
    namespace: Namespace = "chatq";
    /// LLM provider workers call: `openai` (any OpenAI-compatible endpoint) or `simulated`.
    provider: ProviderKind = "simulated";
    /// Base URL of the OpenAI-compatible provider, e.g. `https://api.openai.com/v1`.
    provider_base_url: Option<String> = "";
    /// API key sent to the provider as a bearer token. Never logged.
    #[secret]
    provider_api_key: Option<SecretString> = "";
    /// Model used when a request and its conversation name none.
    model: Option<String> = "";
    /// Comma-separated model names clients may ask for (listed by `GET /v1/models` with `model`); empty accepts any name.
    models: String = "";
    /// Seconds to wait for a TCP/TLS connection to the provider.
    provider_connect_timeout_secs: u64 = "5";
    /// Seconds the provider may stay silent (before the first byte, or between streamed chunks) before the attempt fails.
    provider_idle_timeout_secs: u64 = "60";
    /// Seconds one provider call may take in all.
    provider_request_timeout_secs: u64 = "300";
    /// Most bytes read from one provider response; a larger reply fails the job instead of growing memory.
    provider_max_response_bytes: usize = "4194304";
    /// Jobs one worker process runs at once.
    worker_concurrency: usize = "64";
    /// Provider requests per minute, for the whole fleet of workers.
    provider_rpm: Option<u32> = "unlimited";
    /// Provider tokens per minute, for the whole fleet of workers.
    provider_tpm: Option<u32> = "unlimited";
    /// Provider requests in flight, for the whole fleet of workers.
    provider_max_concurrency: Option<u32> = "unlimited";
    /// Seconds between worker heartbeats; the fleet forgets a worker three heartbeats after its last.
    worker_heartbeat_secs: u64 = "2";
    /// Where a `chatq worker` serves `/metrics` and `/healthz` (e.g. `0.0.0.0:9091`); unset serves none. The ingress serves them on its own address.
    worker_metrics_addr: Option<SocketAddr> = "";
    /// Simulated provider: milliseconds before the first token.
    simulated_ttft_ms: u64 = "150";
    /// Simulated provider: milliseconds between tokens.
    simulated_token_delay_ms: u64 = "15";
    /// Simulated provider: tokens in each reply.
    simulated_tokens: u32 = "24";
    /// Simulated provider: fraction of calls (0 to 1) that fail with a retryable error.
    simulated_failure_rate: f64 = "0";
    /// Requests per second one API key may make to one ingress (429 with `Retry-After` above it).
    key_rate_limit_per_sec: Option<u32> = "200";
    /// Requests one API key may make in a burst above its rate.
    key_rate_limit_burst: u32 = "1000";
    /// Largest request body the ingress reads, in bytes (413 above it).
    max_request_bytes: usize = "1048576";
    /// Longest message content, in characters (400 above it).
    max_message_chars: usize = "32000";
    /// Most messages one conversation stores (409 `conversation_full` above it).
    max_messages_per_conversation: u32 = "10000";
    /// Largest `max_tokens` a request may ask for.
    max_output_tokens: u32 = "16384";
    /// Most history messages sent to the provider with each turn.
    history_max_messages: usize = "50";
    /// Most estimated tokens of history sent to the provider with each turn (about 4 characters a token).
    history_max_tokens: usize = "16000";
    /// Copies JetStream keeps of each chatq stream (1 for a single server; 3 on a 3-node cluster).
    stream_replicas: usize = "1";
    /// Most jobs waiting in the queue; a full queue answers 503 with `Retry-After`.
    queue_max_jobs: i64 = "1000000";
    /// Most jobs the whole fleet holds at once (each lane consumer's `max_ack_pending`); keep it at least the sum of every worker's concurrency.
    queue_max_in_flight: i64 = "10000";
    /// Attempts a job gets before it ends `failed` and goes to the dead-letter stream.
    job_max_attempts: u32 = "5";
    /// Seconds a worker may hold a job without reporting progress before it is handed to another worker.
    job_ack_wait_secs: u64 = "30";
    /// Seconds a job may wait and run in all before it ends `expired`.
    job_deadline_secs: u64 = "600";
    /// Seconds a job's events stay replayable (`Last-Event-ID`, late subscribers) after they were emitted.
    events_retention_secs: u64 = "600";
    /// Most bytes the job-events stream keeps; the oldest events go first beyond it.
    events_max_bytes: i64 = "1073741824";
    /// Most event streams (SSE connections) one ingress holds open; beyond it new ones get 503.
    max_event_streams: usize = "20000";
    /// Seconds between keep-alive comments on an idle event stream.
    sse_keepalive_secs: u64 = "15";
    /// Longest wait, in seconds, that `Prefer: wait=N` and `?wait=N` may ask for.
    max_wait_secs: u64 = "60";
    /// Seconds between reconciler passes, which republish jobs Postgres has as queued but NATS may not.
    reconcile_interval_secs: u64 = "5";
    /// Seconds a queued job may stay unpublished, or a dead worker's job unclaimed past its lease, before the reconciler publishes it again.
    reconcile_after_secs: u64 = "10";
    /// Seconds a stopping worker has to finish what it holds before handing the rest back.
    shutdown_grace_secs: u64 = "30";
    /// For fault testing only: the ingress exits right after recording this many jobs, before publishing the last (0: never).
    fault_exit_before_publish: u64 = "0";
    /// For fault testing only: a worker exits right after committing this many results, before acknowledging the last (0: never).
    fault_exit_after_commit: u64 = "0";
    /// Log format: `pretty` or `json`.
    log_format: LogFormat = "pretty";
    /// Log filter, in `RUST_LOG` syntax (e.g. `info`, `chatq=debug,info`).
    log: String = "info,async_nats=warn";
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

    /// The database URL with any password replaced, for logs.
    pub fn database_url_for_logs(&self) -> String {
        redact_url(self.database_url.expose_secret())
    }
}

/// Hides the password of a `scheme://user:password@host/...` URL.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => url.to_owned(),
    }
}

/// Values by key, each with where it came from; later layers overwrite earlier ones.
#[derive(Debug, Default)]
struct Layers {
    values: BTreeMap<String, (String, Source)>,
}

impl Layers {
    fn known(key: &str) -> bool {
        SETTINGS.iter().any(|s| s.key == key)
    }

    fn set(&mut self, key: &str, value: String, source: Source) {
        self.values.insert(key.to_owned(), (value, source));
    }

    fn add_file(&mut self, path: &Path, text: &str) -> Result<(), SettingsError> {
        let table: toml::Table =
            text.parse()
                .map_err(|err: toml::de::Error| SettingsError::ParseFile {
                    path: path.to_owned(),
                    message: err.to_string(),
                })?;
        let source = Source::File(path.to_owned());
        for (key, value) in table {
            if !Self::known(&key) {
                return Err(SettingsError::Unknown {
                    key,
                    origin: source,
                });
            }
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    return Err(SettingsError::NotScalar {
                        key,
                        origin: source,
                    });
                }
            };
            self.set(&key, text, source.clone());
        }
        Ok(())
    }

    fn add_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), SettingsError> {
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if name == CONFIG_ENV {
                continue;
            }
            let key = rest.to_ascii_lowercase();
            if !Self::known(&key) {
                return Err(SettingsError::Unknown {
                    key: name.clone(),
                    origin: Source::Env(name),
                });
            }
            self.set(&key, value, Source::Env(name));
        }
        Ok(())
    }

    fn value<T: SettingValue>(
        &self,
        key: &'static str,
        default: &'static str,
    ) -> Result<T, SettingsError> {
        let (text, source) = match self.values.get(key) {
            Some((text, source)) => (text.as_str(), source.clone()),
            None => (default, Source::Default),
        };
        T::parse_setting(text).map_err(|reason| {
            let secret = SETTINGS.iter().any(|s| s.key == key && s.secret);
            SettingsError::Invalid {
                key,
                value: if secret {
                    "***".into()
                } else {
                    text.to_owned()
                },
                origin: source,
                reason,
            }
        })
    }
}

/// The `--config` flag and one flag per setting, for every role's command line.
///
/// Flags are kept as text and parsed with the other layers, so a bad value gets the same error
/// whatever its source.
#[derive(Debug, Clone, Default)]
pub struct SettingsFlags {
    pub config: Option<PathBuf>,
    values: BTreeMap<String, String>,
}

impl SettingsFlags {
    /// Sets a flag as if it had been given on the command line (used by tests and by `chatq serve`
    /// when it derives one role's settings from another's).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.values.insert(key.to_owned(), value.into());
        self
    }
}

impl clap::FromArgMatches for SettingsFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            self.config = Some(path.clone());
        }
        for setting in SETTINGS {
            if let Some(value) = matches.get_one::<String>(setting.key) {
                self.values.insert(setting.key.to_owned(), value.clone());
            }
        }
        Ok(())
    }
}

impl clap::Args for SettingsFlags {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(format!("TOML file of settings (also {CONFIG_ENV})"))
                .help_heading("Settings"),
        );
        SETTINGS.iter().fold(cmd, |cmd, setting| {
            let default = if setting.secret || setting.default.is_empty() {
                String::new()
            } else {
                format!(" [default: {}]", setting.default)
            };
            cmd.arg(
                Arg::new(setting.key)
                    .long(setting.flag())
                    .value_name("VALUE")
                    .help(format!(
                        "{} [env: {}]{default}",
                        setting.doc,
                        setting.env_var()
                    ))
                    .help_heading("Settings"),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_default_parses() {
        let settings = Settings::default();
        assert_eq!(settings.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.namespace.as_str(), "chatq");
        assert_eq!(settings.provider, ProviderKind::Simulated);
        assert_eq!(settings.provider_rpm, None);
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let file = "worker_concurrency = 8\nnamespace = \"fromfile\"\nprovider_rpm = 100\n";
        let settings = Settings::from_sources(
            Some((Path::new("chatq.toml"), file)),
            env(&[("CHATQ_NAMESPACE", "fromenv"), ("PATH", "/bin")]),
            &SettingsFlags::default().with("provider_rpm", "200"),
        )
        .unwrap();
        assert_eq!(settings.worker_concurrency, 8);
        assert_eq!(settings.namespace.as_str(), "fromenv");
        assert_eq!(settings.provider_rpm, Some(200));
    }

    #[test]
    fn unknown_keys_and_variables_are_errors() {
        let err = Settings::from_sources(
            Some((Path::new("chatq.toml"), "worker_concurency = 8")),
            env(&[]),
            &SettingsFlags::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("worker_concurency"), "{err}");

        let err = Settings::from_sources(
            None,
            env(&[("CHATQ_WORKER_CONCURENCY", "8")]),
            &SettingsFlags::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("CHATQ_WORKER_CONCURENCY"), "{err}");
    }

    #[test]
    fn bad_values_name_their_source_and_hide_secrets() {
        let err = Settings::from_sources(
            None,
            env(&[("CHATQ_WORKER_CONCURRENCY", "many")]),
            &SettingsFlags::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("CHATQ_WORKER_CONCURRENCY"), "{text}");
        assert!(text.contains("many"), "{text}");

        let err = Settings::from_sources(
            None,
            env(&[("CHATQ_NAMESPACE", "Has Spaces")]),
            &SettingsFlags::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("a-z"), "{err}");
    }

    #[test]
    fn secrets_are_not_printed() {
        let settings = Settings::from_sources(
            None,
            env(&[("CHATQ_PROVIDER_API_KEY", "sk-very-secret")]),
            &SettingsFlags::default(),
        )
        .unwrap();
        let debug = format!("{settings:?}");
        assert!(!debug.contains("sk-very-secret"), "{debug}");
        assert_eq!(
            redact_url("postgres://user:hunter2@db:5432/chatq"),
            "postgres://user:***@db:5432/chatq"
        );
    }

    #[test]
    fn flags_are_generated_for_every_setting() {
        use clap::{Args, FromArgMatches};
        let cmd = SettingsFlags::augment_args(Command::new("t"));
        let matches = cmd
            .try_get_matches_from(["t", "--worker-concurrency", "3", "--provider", "openai"])
            .unwrap();
        let flags = SettingsFlags::from_arg_matches(&matches).unwrap();
        let settings = Settings::from_sources(None, env(&[]), &flags).unwrap();
        assert_eq!(settings.worker_concurrency, 3);
        assert_eq!(settings.provider, ProviderKind::OpenAi);
    }
}
