//! The command-line side of the settings: `--config` and one flag per setting, generated.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Arg, ArgMatches, Command};

use super::{CONFIG_ENV, SETTINGS};

/// The `--config` flag and one flag per setting, for every role's command line.
///
/// Flags are kept as text and parsed with the other layers, so a bad value gets the same error
/// whatever its source.
#[derive(Debug, Clone, Default)]
pub struct SettingsFlags {
    pub config: Option<PathBuf>,
    pub(super) values: BTreeMap<String, String>,
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
        for setting in SETTINGS.iter() {
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
