//! The layers settings come from (defaults, file, environment, flags), merged by key, and the
//! errors that say which layer to fix.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::values::SettingValue;
use super::{CONFIG_ENV, ENV_PREFIX, SETTINGS};

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

/// Values by key, each with where it came from; later layers overwrite earlier ones.
#[derive(Debug, Default)]
pub(super) struct Layers {
    values: BTreeMap<String, (String, Source)>,
}

impl Layers {
    fn known(key: &str) -> bool {
        SETTINGS.iter().any(|s| s.key == key)
    }

    pub(super) fn set(&mut self, key: &str, value: String, source: Source) {
        self.values.insert(key.to_owned(), (value, source));
    }

    pub(super) fn add_file(&mut self, path: &Path, text: &str) -> Result<(), SettingsError> {
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

    pub(super) fn add_env(
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

    pub(super) fn value<T: SettingValue>(
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
