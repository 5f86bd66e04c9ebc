//! The web page in a real browser: `tests/web/chat.test.cjs` drives Debian's chromium with
//! playwright-core against chatqs started here (the LLM mocked over HTTP, as everywhere), finding
//! controls by their accessible role and name. It saves a screenshot per test and the measured
//! first-load size, LCP and CLS under `target/web-screenshots/`.
//!
//! `scripts/test` installs chromium, Node.js and playwright-core (`ensure_browser` in
//! scripts/lib.sh) and exports where they are; without them this test says it was skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, TestOptions, id_of, spawn_app_with};

/// What the browser tests need, from `scripts/test`'s `ensure_browser`.
struct BrowserTools {
    node: PathBuf,
    node_modules: PathBuf,
    chromium: PathBuf,
}

impl BrowserTools {
    /// The tools, or why they cannot be used.
    fn find() -> Result<Self, String> {
        let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
        let node = var("CQTEST_NODE").unwrap_or_else(|| "node".into());
        let chromium = var("CQTEST_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
        let node_modules = var("CQTEST_NODE_MODULES").ok_or(
            "CQTEST_NODE_MODULES is not set: run the suite with scripts/test, which installs playwright-core",
        )?;
        if !node_modules.join("playwright-core/package.json").is_file() {
            return Err(format!(
                "playwright-core is not in {}",
                node_modules.display()
            ));
        }
        if !chromium.is_file() {
            return Err(format!("no chromium at {}", chromium.display()));
        }
        let node_runs = std::process::Command::new(&node)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !node_runs {
            return Err(format!("{} does not run", node.display()));
        }
        Ok(Self {
            node,
            node_modules,
            chromium,
        })
    }
}

#[tokio::test]
async fn the_web_page_works_in_a_real_browser() {
    let tools = match BrowserTools::find() {
        Ok(tools) => tools,
        Err(why) => {
            eprintln!("SKIPPED the_web_page_works_in_a_real_browser: {why}");
            return;
        }
    };
    // The chatq most tests use; a second whose queue is full (no workers, room for one job);
    // a third whose key is limited to one request a second.
    let (app, busy, limited) = tokio::join!(
        spawn_app_with(TestOptions::default()),
        spawn_app_with(TestOptions {
            workers: 0,
            settings: Box::new(|s| s.nats.queue_max_jobs = 1),
            ..TestOptions::default()
        }),
        spawn_app_with(TestOptions {
            settings: Box::new(|s| {
                s.limits.key_rate_limit_per_sec = Some(1);
                s.limits.key_rate_limit_burst = 6;
            }),
            ..TestOptions::default()
        }),
    );
    let big = five_hundred_messages(&app).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let screenshots = root.join("target/web-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let url = |app: &TestApp| format!("http://{}", app.addr);

    let mut node = tokio::process::Command::new(&tools.node);
    node.arg("--test")
        .arg("--test-reporter=spec")
        .arg(root.join("tests/web/chat.test.cjs"))
        .current_dir(root)
        .env("NODE_PATH", &tools.node_modules)
        .env("WEBTEST_CHROMIUM", &tools.chromium)
        .env("WEBTEST_SCREENSHOTS", &screenshots)
        .env("WEBTEST_URL", url(&app))
        .env("WEBTEST_KEY", &app.key)
        .env("WEBTEST_MOCK", format!("http://{}", app.mock.addr()))
        .env("WEBTEST_BIG", &big)
        .env("WEBTEST_BUSY_URL", url(&busy))
        .env("WEBTEST_BUSY_KEY", &busy.key)
        .env("WEBTEST_LIMITED_URL", url(&limited))
        .env("WEBTEST_LIMITED_KEY", &limited.key)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(240), node.output())
        .await
        .expect("the browser tests finish within 4 minutes")
        .expect("node starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser tests failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The measured figures belong in the test's output.
    eprintln!("{stdout}");
    tokio::join!(app.stop(), busy.stop(), limited.stop());
}

/// A conversation with 500 messages already in it (written straight to the database: sending
/// them one turn at a time would take longer than the whole browser suite); returns its id.
async fn five_hundred_messages(app: &TestApp) -> String {
    let id = id_of(
        &app.create_conversation(json!({ "title": "Five hundred" }))
            .await,
    );
    let uuid = uuid::Uuid::parse_str(id.trim_start_matches("conv_")).unwrap();
    sqlx::query(
        "INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content)
         SELECT gen_random_uuid(), c.id, c.tenant_id, n,
                CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END, 'message ' || n
           FROM conversations c, generate_series(1, 500) AS n WHERE c.id = $1",
    )
    .bind(uuid)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE conversations SET next_seq = 501, message_count = 500 WHERE id = $1")
        .bind(uuid)
        .execute(&app.pool)
        .await
        .unwrap();
    id
}
