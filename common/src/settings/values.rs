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
