//! How a setting's text becomes a value: the types settings use, and their parsing.

use std::fmt;
use std::net::SocketAddr;

use secrecy::SecretString;

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

/// What sits between chatq and Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabasePooler {
    /// Nothing, or a pooler in session mode: a connection is one Postgres session.
    None,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`): consecutive
    /// transactions of one connection may run in different Postgres sessions.
    Transaction,
}

impl SettingValue for DatabasePooler {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "none" => Ok(Self::None),
            "transaction" => Ok(Self::Transaction),
            _ => Err("expected `none` or `transaction`".into()),
        }
    }
}

/// What the chat completions API does with a parameter it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownParameters {
    /// A 400 that names the parameter: a client relying on it learns at once that it is ignored.
    Refuse,
    /// Sent to the provider as given: chatq is a gateway to a provider that may know it.
    Forward,
}

impl SettingValue for UnknownParameters {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "refuse" => Ok(Self::Refuse),
            "forward" => Ok(Self::Forward),
            _ => Err("expected `refuse` or `forward`".into()),
        }
    }
}

/// Whose requests may share a cached reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheScope {
    /// Only the tenant that asked first: one tenant never receives another's cached reply.
    Tenant,
    /// Every tenant of the deployment (an operator's deliberate choice, for public prompts).
    Global,
}

impl SettingValue for CacheScope {
    fn parse_setting(text: &str) -> Result<Self, String> {
        match text.trim() {
            "tenant" => Ok(Self::Tenant),
            "global" => Ok(Self::Global),
            _ => Err("expected `tenant` or `global`".into()),
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

/// The NATS servers to start from: one URL, or several separated by commas
/// (`nats://n1:4222,nats://n2:4222`). The client tries them in turn, learns the other members of a
/// cluster from the server it reaches, and reconnects to any of them when its server goes away, so
/// naming more than one only matters when the first one named may be down at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsServers {
    /// As written, for logs and errors.
    urls: Vec<String>,
    /// The same, parsed; never empty.
    addrs: Vec<async_nats::ServerAddr>,
}

impl NatsServers {
    /// The parsed addresses, for `ConnectOptions::connect`.
    pub fn addrs(&self) -> &[async_nats::ServerAddr] {
        &self.addrs
    }
}

impl fmt::Display for NatsServers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted: Vec<String> = self.urls.iter().map(|url| redact_url(url)).collect();
        f.write_str(&redacted.join(","))
    }
}

impl std::str::FromStr for NatsServers {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut urls = Vec::new();
        let mut addrs = Vec::new();
        for url in text.split(',').map(str::trim) {
            if url.is_empty() {
                return Err("expected one or more NATS URLs separated by commas, \
                     e.g. `nats://n1:4222,nats://n2:4222`"
                    .into());
            }
            let addr = url
                .parse::<async_nats::ServerAddr>()
                .map_err(|err| format!("`{}` is not a NATS server URL: {err}", redact_url(url)))?;
            urls.push(url.to_owned());
            addrs.push(addr);
        }
        Ok(Self { urls, addrs })
    }
}

impl SettingValue for NatsServers {
    fn parse_setting(text: &str) -> Result<Self, String> {
        text.parse()
    }
}

/// Query parameters whose values are credentials, by the words their names contain
/// (`password`, `sslpassword`, `api_key`, `access_token`, `X-Amz-Signature`, …).
const SECRET_PARAMETER_WORDS: [&str; 7] =
    ["pass", "pwd", "secret", "token", "key", "auth", "signature"];

/// A URL as it may appear in logs and errors: the one redaction every URL chatq prints goes
/// through (database, NATS, provider).
///
/// Hidden: the password of `scheme://user:password@host`; the whole user part of a NATS URL
/// (`nats://TOKEN@host`: NATS reads a lone user as a token); and the value of any query parameter
/// whose name says it holds a credential (`?password=`, `?sslpassword=`, `?api_key=`,
/// `?access_token=`). Everything else stays, so an operator can still tell which server is meant.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None if scheme.eq_ignore_ascii_case("postgres")
                || scheme.eq_ignore_ascii_case("postgresql")
                || scheme.eq_ignore_ascii_case("http")
                || scheme.eq_ignore_ascii_case("https") =>
            {
                format!("{userinfo}@{host}")
            }
            None => format!("***@{host}"),
        },
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((before, query)) => {
            let (query, fragment) = match query.split_once('#') {
                Some((query, fragment)) => (query, Some(fragment)),
                None => (query, None),
            };
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if is_secret_parameter(name) => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            let fragment = fragment.map_or(String::new(), |f| format!("#{f}"));
            format!("{before}?{}{fragment}", query.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_PARAMETER_WORDS
        .iter()
        .any(|word| name.contains(word))
}
