//! The settings' layers, names and secrecy, tested through `Settings::from_sources`.

use std::path::Path;

use clap::Command;

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
    assert_eq!(settings.ingress.http_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(settings.nats.namespace.as_str(), "chatq");
    assert_eq!(settings.provider.kind, ProviderKind::Simulated);
    assert_eq!(settings.limits.provider_rpm, None);
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
    assert_eq!(settings.worker.concurrency, 8);
    assert_eq!(settings.nats.namespace.as_str(), "fromenv");
    assert_eq!(settings.limits.provider_rpm, Some(200));
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
fn every_credential_in_a_url_is_redacted() {
    for (url, shown) in [
        (
            "postgres://chatq@db:5432/chatq?password=hunter2&sslmode=require",
            "postgres://chatq@db:5432/chatq?password=***&sslmode=require",
        ),
        (
            "postgres://db/chatq?user=chatq&sslpassword=hunter2",
            "postgres://db/chatq?user=chatq&sslpassword=***",
        ),
        (
            "postgres://u:p@ss:w0rd@db/chatq",
            "postgres://u:***@db/chatq",
        ),
        ("nats://s3cr3t-token@nats:4222", "nats://***@nats:4222"),
        ("nats://app:hunter2@nats:4222", "nats://app:***@nats:4222"),
        (
            "https://proxy:hunter2@llm.example/v1?api_key=sk-1&x=1#top",
            "https://proxy:***@llm.example/v1?api_key=***&x=1#top",
        ),
        (
            "https://llm.example/v1?access_token=abc",
            "https://llm.example/v1?access_token=***",
        ),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ] {
        assert_eq!(redact_url(url), shown, "{url}");
    }
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
    assert_eq!(settings.worker.concurrency, 3);
    assert_eq!(settings.provider.kind, ProviderKind::OpenAi);
}

#[test]
fn every_setting_has_one_key_and_belongs_to_one_group() {
    let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
    let count = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), count, "two settings share a key");
    let settings = Settings::from_sources(
        None,
        env(&[
            ("CHATQ_DATABASE_MAX_CONNECTIONS", "7"),
            ("CHATQ_SIMULATED_TOKENS", "3"),
        ]),
        &SettingsFlags::default(),
    )
    .unwrap();
    assert_eq!(settings.database.max_connections, 7);
    assert_eq!(settings.simulated.tokens, 3);
}

#[test]
fn nats_url_takes_several_servers() {
    let settings = Settings::from_sources(
        None,
        env(&[("CHATQ_NATS_URL", "nats://n1:4222, nats://n2:4223,n3")]),
        &SettingsFlags::default(),
    )
    .unwrap();
    let ports: Vec<_> = settings
        .nats
        .url
        .addrs()
        .iter()
        .map(|addr| (addr.host().to_owned(), addr.port()))
        .collect();
    assert_eq!(
        ports,
        [
            ("n1".to_owned(), 4222),
            ("n2".to_owned(), 4223),
            ("n3".to_owned(), 4222)
        ]
    );
    assert_eq!(
        settings.nats.url.to_string(),
        "nats://n1:4222,nats://n2:4223,n3"
    );
}

#[test]
fn a_bad_nats_url_names_itself() {
    for (value, reason) in [
        (
            "nats://n1:4222,nats://n2:42x2",
            "`nats://n2:42x2` is not a NATS server URL",
        ),
        ("nats://n1:4222,,nats://n2:4222", "separated by commas"),
        ("http://n1:4222", "invalid scheme"),
        ("nats://n1:99999", "not a NATS server URL"),
    ] {
        let err = Settings::from_sources(
            None,
            env(&[("CHATQ_NATS_URL", value)]),
            &SettingsFlags::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("CHATQ_NATS_URL"), "{err}");
        assert!(err.contains(reason), "{value}: {err}");
    }
}
