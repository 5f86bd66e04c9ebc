//! Keeps the README honest about settings: it lists every setting with the names and default the
//! code gives it (`chatq_common::settings::SETTINGS`), and it names no `CHATQ_*` variable that
//! chatq would reject.
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

#[test]
fn every_chatq_variable_the_readme_names_is_a_setting() {
    let topology = Topology::new(&chatq_common::Settings::default().nats);
    let known: BTreeSet<String> = documented()
        .iter()
        .map(SettingInfo::env_var)
        .chain([CONFIG_ENV.to_owned()])
        // Not variables: the JetStream streams of the default namespace, which the README names.
        .chain([
            topology.jobs_stream(),
            topology.dead_letter_stream(),
            topology.events_stream(),
        ])
        .collect();
    let unknown: Vec<String> = chatq_names(&readme())
        .into_iter()
        .filter(|name| match name.strip_suffix('*') {
            Some(family) => !known.iter().any(|known| known.starts_with(family)),
            None => !known.contains(name),
        })
        .collect();
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
