//! Keeps the README honest about settings: it lists every setting with the names and default the
//! code gives it (`chatq_common::settings::SETTINGS`), and it names no `CHATQ_*` variable that
//! chatq would reject. The same holds for the deployment files (`compose.yaml`, `deploy/`), and
//! the Kubernetes worker Deployment leaves a worker the time its drain takes.
//!
//! When a setting is added or changed, the failure message holds the whole settings table as it
//! should read, ready to paste into the README.

use std::collections::BTreeSet;

use chatq_common::settings::{CONFIG_ENV, ENV_PREFIX, FaultSettings, SETTINGS, SettingInfo};
use chatq_common::topology::Topology;

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
}

/// A default as the README shows it: "—" when the setting is unset by default.
fn shown_default(setting: &SettingInfo) -> String {
    if setting.default.is_empty() {
        "—".to_owned()
    } else {
        format!("`{}`", setting.default)
    }
}

/// The four cells the README must agree on: variable, TOML key, flag, default.
fn expected_cells(setting: &SettingInfo) -> [String; 4] {
    [
        format!("`{}`", setting.env_var()),
        format!("`{}`", setting.key),
        format!("`--{}`", setting.flag()),
        shown_default(setting),
    ]
}

/// The settings table, generated from the code.
/// Every setting the README documents: those of this build, and those of builds for the fault
/// tests (whichever this build is).
fn documented() -> Vec<SettingInfo> {
    let mut all = SETTINGS.clone();
    for setting in FaultSettings::SETTINGS {
        if !all.iter().any(|s| s.key == setting.key) {
            all.push(*setting);
        }
    }
    all
}

fn expected_table() -> String {
    let mut table = String::new();
    let mut group = "";
    for setting in documented() {
        if setting.group != group {
            group = setting.group;
            table.push_str(&format!(
                "\n{group}:\n\n| variable | TOML key | flag | default | meaning |\n|---|---|---|---|---|\n"
            ));
        }
        let [env, key, flag, default] = expected_cells(&setting);
        table.push_str(&format!(
            "| {env} | {key} | {flag} | {default} | {} |\n",
            setting.doc.replace('|', "\\|")
        ));
    }
    table
}

/// The cells of the README's table row for `env_var`, if there is one.
fn row_of(readme: &str, env_var: &str) -> Option<Vec<String>> {
    let start = format!("| `{env_var}` |");
    readme
        .lines()
        .find(|line| line.starts_with(&start))
        .map(|line| {
            line.trim_matches('|')
                .split(" | ")
                .map(|cell| cell.trim().to_owned())
                .collect()
        })
}

#[test]
fn the_readme_lists_every_setting_with_its_names_and_default() {
    let readme = readme();
    let mut wrong = Vec::new();
    for setting in &documented() {
        let env_var = setting.env_var();
        let expected = expected_cells(setting);
        match row_of(&readme, &env_var) {
            None => wrong.push(format!("{env_var}: no row in the settings table")),
            Some(cells) if cells.len() < 5 || cells[..4] != expected[..] => {
                wrong.push(format!(
                    "{env_var}: the row says {cells:?}, expected {expected:?}"
                ));
            }
            Some(_) => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "README.md's settings table does not match common/src/settings.rs:\n  {}\n\n\
         The table as the code has it:\n\n{}",
        wrong.join("\n  "),
        expected_table()
    );
}

/// `CHATQ_` followed by upper-case letters, digits and underscores, as a whole word. A name
/// ending in `_*` (`CHATQ_FAULT_*`) stands for a family of settings and is kept with its `*`.
fn chatq_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(ENV_PREFIX) {
        let start = from + found;
        let preceded_by_word = start > 0 && {
            let before = bytes[start - 1];
            before.is_ascii_alphanumeric() || before == b'_'
        };
        let mut end = start + ENV_PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_uppercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let family = end > start + ENV_PREFIX.len()
            && text[..end].ends_with('_')
            && bytes.get(end) == Some(&b'*');
        let name = if family {
            format!("{}*", &text[start..end])
        } else {
            text[start..end].trim_end_matches('_').to_owned()
        };
        if !preceded_by_word && name.len() > ENV_PREFIX.len() {
            names.insert(name);
        }
        from = end;
    }
    names
}

/// Every `CHATQ_*` name chatq knows: its settings, the configuration file's variable, and the
/// streams of the default namespace (`CHATQ_JOBS`, …), which documents name too.
fn known_names() -> BTreeSet<String> {
    let topology = Topology::new(&chatq_common::Settings::default().nats);
    documented()
        .iter()
        .map(SettingInfo::env_var)
        .chain([CONFIG_ENV.to_owned()])
        // Not variables: the JetStream streams of the default namespace, which the README names.
        .chain([
            topology.jobs_stream(),
            topology.dead_letter_stream(),
            topology.events_stream(),
        ])
        .collect()
}

/// The `CHATQ_*` names in `text` that are no setting (a family, `CHATQ_FAULT_*`, is known when
/// some setting belongs to it).
fn unknown_names(text: &str) -> Vec<String> {
    let known = known_names();
    chatq_names(text)
        .into_iter()
        .filter(|name| match name.strip_suffix('*') {
            Some(family) => !known.iter().any(|known| known.starts_with(family)),
            None => !known.contains(name),
        })
        .collect()
}

#[test]
fn every_chatq_variable_the_readme_names_is_a_setting() {
    let unknown = unknown_names(&readme());
    assert!(
        unknown.is_empty(),
        "README.md names CHATQ_* variables that are not settings (chatq refuses to start with \
         them set): {unknown:?}"
    );
}

#[test]
fn names_are_found_as_whole_words() {
    let names = chatq_names(
        "CHATQ_MODEL, `CHATQ_MODELS`, MY_CHATQ_X, CHATQ_*, CHATQ_<NAME> CHATQ_A_ CHATQ_B_*",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        ["CHATQ_A", "CHATQ_B_*", "CHATQ_MODEL", "CHATQ_MODELS"]
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path, into: &mut Vec<std::path::PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
    for entry in entries {
        let path = entry
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
            .path();
        if path.is_dir() {
            files_under(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// The files of the operations kit (`deploy/`, recursively) and `compose.yaml`.
fn deploy_files() -> Vec<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("compose.yaml")];
    files_under(&root.join("deploy"), &mut files);
    files.sort();
    files
}

#[test]
fn every_chatq_variable_the_deploy_files_name_is_a_setting() {
    let mut unknown = Vec::new();
    let files = deploy_files();
    assert!(files.len() > 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a deploy file is readable");
        for name in unknown_names(&text) {
            unknown.push(format!("{}: {name}", file.display()));
        }
    }
    assert!(
        unknown.is_empty(),
        "deploy files name CHATQ_* variables that are not settings (chatq refuses to start with \
         them set): {unknown:?}"
    );
}

/// The number after `key:` on the first line that has it, quoted or not.
fn yaml_number(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
        value.trim().trim_matches('"').parse().ok()
    })
}

#[test]
fn kubernetes_gives_workers_time_to_drain() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("the manifest exists");
    let grace = yaml_number(&read("10-settings.yaml"), "CHATQ_SHUTDOWN_GRACE_SECS")
        .expect("the ConfigMap sets CHATQ_SHUTDOWN_GRACE_SECS");
    let termination = yaml_number(&read("40-worker.yaml"), "terminationGracePeriodSeconds")
        .expect("the worker Deployment sets terminationGracePeriodSeconds");
    // A worker drains for the grace period, then hands back what it holds and flushes its writes.
    assert!(
        termination >= grace + 10,
        "Kubernetes kills a worker {termination} s after SIGTERM, but it may drain for {grace} s \
         (CHATQ_SHUTDOWN_GRACE_SECS) and then needs a few seconds to hand jobs back"
    );
}
