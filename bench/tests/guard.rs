//! `chatq-bench guard` as `scripts/test` runs it: the executable the test build leaves beside
//! `chatq`, judging nothing it cannot compare.

use std::process::Command;

fn guard(baseline: &std::path::Path) -> std::io::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_chatq-bench"))
        .arg("guard")
        .arg("--guard-baseline")
        .arg(baseline)
        .output()
}

#[test]
fn a_baseline_that_cannot_be_read_fails_the_guard_before_anything_is_measured() {
    let missing = std::env::temp_dir().join(format!("no-baseline-{}.json", std::process::id()));
    let output = guard(&missing).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read the baseline") && stderr.contains(&*missing.to_string_lossy()),
        "{stderr}"
    );
}

#[test]
fn a_baseline_of_the_other_kind_of_build_is_refused() {
    let path = std::env::temp_dir().join(format!("other-build-{}.json", std::process::id()));
    let other = if cfg!(debug_assertions) {
        "release"
    } else {
        "debug"
    };
    let text = format!(
        r#"{{"about": "", "measured": "", "build": "{other}", "figures": {{"e2e ÷ HTTP": 0.1}}}}"#
    );
    std::fs::write(&path, text).unwrap();
    let output = guard(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("do not compare"), "{stderr}");
}
