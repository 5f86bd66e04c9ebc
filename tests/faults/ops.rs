//! The operations kit in `deploy/` against a running chatq: an ingress and a worker as separate
//! processes, each serving its own `/metrics`.
//!
//! - Every metric the alerting rules and the Grafana dashboard name is in what they export (a
//!   histogram's `_bucket`, `_sum` and `_count` are names of their own in the exposition, so the
//!   check needs no special case for them).
//! - A real Prometheus (Debian's, `CQTEST_PROMETHEUS`) scrapes both, evaluates
//!   `deploy/prometheus/rules.yml`, and fires `ChatqQueueWaitHigh` when jobs wait for a slow
//!   provider; every dashboard query then answers with data.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chatq_mock_llm::MockConfig;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::harness::{Stack, StackOptions, spare_port};

/// The kit's files, from the repository root.
fn deploy_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Settings that make every metric appear: fleet-wide limits (the share and limit gauges exist
/// only when they are set), high enough never to slow the tests down.
fn limit_settings() -> Vec<(&'static str, String)> {
    vec![
        ("CHATQ_PROVIDER_RPM", "60000".into()),
        ("CHATQ_PROVIDER_MAX_CONCURRENCY", "64".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_exported_metrics() {
    let mut stack = Stack::start(
        "ops_metric_names",
        StackOptions {
            workers: 0,
            settings: limit_settings(),
            ..StackOptions::default()
        },
    )
    .await;
    let worker_metrics = format!("127.0.0.1:{}", spare_port());
    stack
        .start_worker(
            "worker-0",
            &[("CHATQ_WORKER_METRICS_ADDR", worker_metrics.as_str())],
        )
        .await;

    let named = names_in_rules()
        .into_iter()
        .chain(names_in_dashboard())
        .collect::<BTreeSet<_>>();
    // Not vacuous: the files were read and parsed.
    assert!(
        named.contains("chatq_job_queue_wait_seconds_bucket")
            && named.contains("chatq_fleet_workers")
            && named.len() >= 15,
        "the rules and dashboard should name chatq's metrics: {named:?}"
    );

    // Jobs through the whole path, so the histograms have observations.
    let conversations = stack.client.create_conversations(3).await;
    for accepted in stack.client.send_to_each(&conversations, 3).await {
        let job = stack
            .client
            .wait_for_job(&accepted.job_id, Duration::from_secs(30))
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }

    // Gauges are set by periodic tasks (the queue monitor, heartbeats): poll until the exported
    // names cover what the kit names, and report what is missing if they never do.
    let http = reqwest::Client::new();
    let targets = [
        format!("{}/metrics", stack.ingress_url()),
        format!("http://{worker_metrics}/metrics"),
    ];
    let mut missing = named.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() && tokio::time::Instant::now() < deadline {
        let mut exported = BTreeSet::new();
        for target in &targets {
            if let Ok(response) = http.get(target).send().await
                && let Ok(text) = response.text().await
            {
                exported.extend(exported_names(&text));
            }
        }
        missing = named.difference(&exported).cloned().collect();
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/prometheus/rules.yml or deploy/grafana/dashboards/chatq.json name metrics that \
         neither the ingress nor the worker exports: {missing:?}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_the_queue_wait_alert_under_load() {
    const JOBS: usize = 40;
    let mut stack = Stack::start(
        "ops_prometheus",
        StackOptions {
            workers: 0,
            // Two jobs at a time, each a second and a half at the provider: the 40 jobs sent at
            // once wait up to half a minute in the queue.
            worker_concurrency: 2,
            mock: MockConfig {
                ttft_ms: 1500,
                tokens: 4,
                token_delay_ms: 10,
                ..MockConfig::default()
            },
            settings: limit_settings(),
            ..StackOptions::default()
        },
    )
    .await;
    let worker_metrics = format!("127.0.0.1:{}", spare_port());
    stack
        .start_worker(
            "worker-0",
            &[("CHATQ_WORKER_METRICS_ADDR", worker_metrics.as_str())],
        )
        .await;
    let ingress = stack.ingress_url();
    let ingress_target = ingress.trim_start_matches("http://").to_owned();
    let prometheus = Prometheus::start(&stack.dir, &[&ingress_target, &worker_metrics]).await;

    // Both targets are scraped before the load starts.
    stack
        .wait_until(
            "Prometheus scrapes the ingress and the worker",
            Duration::from_secs(30),
            || async {
                let targets = prometheus.api("targets", &[]).await;
                let up = targets["activeTargets"]
                    .as_array()
                    .map_or(0, |all| all.iter().filter(|t| t["health"] == "up").count());
                up == 2
            },
        )
        .await;
    assert!(
        !prometheus.firing("ChatqQueueWaitHigh").await,
        "the alert fires before any load"
    );

    let conversations = stack.client.create_conversations(JOBS).await;
    let accepted = stack.client.send_to_each(&conversations, JOBS).await;
    stack
        .wait_until(
            "Prometheus fires ChatqQueueWaitHigh for the interactive lane",
            Duration::from_secs(90),
            || prometheus.firing("ChatqQueueWaitHigh"),
        )
        .await;

    // Every dashboard query is valid PromQL and, with traffic flowing, has data.
    for expr in dashboard_queries() {
        let query = expr.replace("$__rate_interval", "1m");
        let data = prometheus.api("query", &[("query", &query)]).await;
        assert!(
            data["result"].as_array().is_some_and(|r| !r.is_empty()),
            "the dashboard query {query} has no data: {data}"
        );
    }

    for job in &accepted {
        let job = stack
            .client
            .wait_for_job(&job.job_id, Duration::from_secs(90))
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
    }
    drop(prometheus);
    stack.stop().await;
}

/// A Prometheus on a spare port, scraping `targets` every second and evaluating the kit's rules
/// every second. The rules are the file's, but for their `for:` hold times, cut to a second so
/// that an alert fires within a test's time.
struct Prometheus {
    /// Killed when dropped.
    _child: Child,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn start(dir: &Path, targets: &[&str]) -> Self {
        let binary = std::env::var_os("CQTEST_PROMETHEUS").unwrap_or_else(|| "prometheus".into());
        let home = dir.join("prometheus");
        std::fs::create_dir_all(&home).unwrap();
        let rules = std::fs::read_to_string(deploy_file("prometheus/rules.yml")).unwrap();
        let rules: String = rules
            .lines()
            .map(|line| match line.trim_start().strip_prefix("for:") {
                Some(_) => format!("{}for: 1s\n", &line[..line.len() - line.trim_start().len()]),
                None => format!("{line}\n"),
            })
            .collect();
        std::fs::write(home.join("rules.yml"), rules).unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            home.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: chatq\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .unwrap();
        let port = spare_port();
        let log = std::fs::File::create(home.join("prometheus.log")).unwrap();
        let child = Command::new(&binary)
            .arg(format!(
                "--config.file={}",
                home.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                home.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| {
                panic!(
                    "cannot start {} ({err}); run the tests with scripts/test, which installs \
                     Debian's prometheus package and exports CQTEST_PROMETHEUS",
                    binary.to_string_lossy()
                )
            });
        let prometheus = Self {
            _child: child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        // Ready once its API answers: the rules were loaded by then, or it has exited.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let ready = prometheus
                .http
                .get(format!("{}/-/ready", prometheus.base))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus is not ready after 30 s; see {}",
                home.join("prometheus.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        prometheus
    }

    /// `GET /api/v1/{path}`: its `data`, after checking the call succeeded.
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let query_string = query
            .iter()
            .map(|(key, value)| format!("{key}={}", percent_encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let body: Value = self
            .http
            .get(format!("{}/api/v1/{path}?{query_string}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["status"], "success",
            "/api/v1/{path} {query:?}: {body}"
        );
        body["data"].clone()
    }

    /// Whether `alert` is firing (for the interactive lane, when it has a lane).
    async fn firing(&self, alert: &str) -> bool {
        let alerts = self.api("alerts", &[]).await;
        alerts["alerts"].as_array().is_some_and(|all| {
            all.iter().any(|a| {
                a["labels"]["alertname"] == alert
                    && a["state"] == "firing"
                    && a["labels"]["lane"]
                        .as_str()
                        .is_none_or(|l| l == "interactive")
            })
        })
    }
}

/// `value` as a URL query component: every byte but the unreserved ones as `%XX`.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The names of the metrics in a Prometheus text exposition.
fn exported_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names in a PromQL expression: identifiers outside quoted strings that start with
/// `chatq_` (recording rules, `chatq:…`, contain colons and are not metrics chatq exports).
fn names_in_expr(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while let Some((start, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            // A label value or other string: skip to its closing quote.
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if !escaped && d == c {
                    break;
                }
                escaped = !escaped && d == '\\';
            }
        } else if ident(c) {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !ident(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let word = &expr[start..end];
            if word.starts_with("chatq_") && !word.contains(':') {
                names.insert(word.to_owned());
            }
        }
    }
    names
}

/// The `expr` of every rule in `deploy/prometheus/rules.yml`, single-line or block scalar.
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy_file("prometheus/rules.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut exprs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                .copied()
                .collect();
            exprs.push(block.join("\n"));
        } else {
            exprs.push(rest.to_owned());
        }
    }
    exprs
}

fn names_in_rules() -> BTreeSet<String> {
    rule_exprs().iter().flat_map(|e| names_in_expr(e)).collect()
}

/// The `expr` of every target of every panel of the dashboard.
fn dashboard_queries() -> Vec<String> {
    fn collect(value: &Value, into: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(expr)) = map.get("expr") {
                    into.push(expr.clone());
                }
                map.values().for_each(|v| collect(v, into));
            }
            Value::Array(items) => items.iter().for_each(|v| collect(v, into)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(deploy_file("grafana/dashboards/chatq.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    collect(&dashboard, &mut queries);
    queries
}

fn names_in_dashboard() -> BTreeSet<String> {
    dashboard_queries()
        .iter()
        .flat_map(|e| names_in_expr(e))
        .collect()
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = names_in_expr(
        r#"histogram_quantile(0.99, sum by (lane, le) (rate(chatq_job_queue_wait_seconds_bucket{lane="chatq_not_a_metric"}[5m])))
           / on() group_left() chatq:recorded:rate5m + chatq_fleet_workers"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["chatq_fleet_workers", "chatq_job_queue_wait_seconds_bucket"]
    );
    assert!(rule_exprs().len() >= 20, "{:?}", rule_exprs());
}
