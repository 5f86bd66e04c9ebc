//! How a setting is declared: the `settings!` macro, which turns one declaration into its
//! group's field, its TOML key, its environment variable and its flag, and the [`SettingInfo`]
//! that documents each setting in `--help` and the README.

use super::ENV_PREFIX;

/// One setting, as documented in `--help` and the README.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// TOML key, e.g. `worker_concurrency`.
    pub key: &'static str,
    /// The group (and field of [`Settings`](super::Settings)) it belongs to, e.g. `worker`.
    pub group: &'static str,
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

macro_rules! settings {
    ($(
        #[doc = $group_doc:literal]
        $(#[cfg($cfg:meta)])?
        $group:ident: $group_ty:ident {
            $(
                #[doc = $doc:literal]
                $(#[$secret:ident])?
                $field:ident $(/ $key:ident)?: $ty:ty = $default:literal;
            )+
        }
    )+) => {
        /// Every setting of every role, already validated, by group. Build it with
        /// [`Settings::load`] (binaries) or [`Settings::default`] (tests, which then change
        /// fields).
        #[derive(Debug, Clone)]
        pub struct Settings {
            $(
                #[doc = $group_doc]
                $(#[cfg($cfg)])?
                pub $group: $group_ty,
            )+
        }

        $(
            #[doc = $group_doc]
            #[derive(Debug, Clone)]
            pub struct $group_ty {
                $(#[doc = $doc] pub $field: $ty,)+
            }

            impl $group_ty {
                /// This group's settings, in declaration order.
                pub const SETTINGS: &[SettingInfo] = &[$(
                    SettingInfo {
                        key: settings!(@key $field $($key)?),
                        group: stringify!($group),
                        default: $default,
                        doc: $doc.trim_ascii(),
                        secret: settings!(@secret $($secret)?),
                    },
                )+];

                $(#[cfg_attr(not($cfg), expect(dead_code, reason = "a group this build leaves out"))])?
                fn from_layers(layers: &Layers) -> Result<Self, SettingsError> {
                    Ok(Self {
                        $($field: layers.value(settings!(@key $field $($key)?), $default)?,)+
                    })
                }
            }
        )+

        /// Every setting this build knows, in declaration order.
        pub static SETTINGS: LazyLock<Vec<SettingInfo>> = LazyLock::new(|| {
            let mut all = Vec::new();
            $(
                $(#[cfg($cfg)])?
                all.extend_from_slice($group_ty::SETTINGS);
            )+
            all
        });

        impl Settings {
            fn from_layers(layers: &Layers) -> Result<Self, SettingsError> {
                Ok(Self {
                    $(
                        $(#[cfg($cfg)])?
                        $group: $group_ty::from_layers(layers)?,
                    )+
                })
            }
        }
    };
    (@key $field:ident $key:ident) => { stringify!($key) };
    (@key $field:ident) => { stringify!($field) };
    (@secret secret) => { true };
    (@secret) => { false };
}
pub(super) use settings;
