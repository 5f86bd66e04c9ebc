//! The provider's limits hold for the whole fleet, whatever its size: worker processes join,
//! die, and find a limit nobody configured, and the mock provider counts what reaches it.

use std::time::{Duration, Instant};

use chatq_mock_llm::MockConfig;
use reqwest::Method;
use serde_json::Value;

use chatq_workers::limits::REQUESTS_AHEAD;

use crate::harness::{Stack, StackOptions};

/// A quick provider, so the limits, not its latency, decide the pace.
fn quick_provider() -> MockConfig {
    MockConfig {
        ttft_ms: 5,
        tokens: 2,
        ..MockConfig::default()
    }
}

/// The most requests the provider may see in one second from `workers` workers that share a
/// fleet-wide `rate` (requests a second): the rate, plus what each worker's limiter lets it start
/// ahead of its share ([`REQUESTS_AHEAD`], a request and a half), and one more for the arrival
/// jitter (a request let through just before a window may reach the mock just inside it). A
/// worker that took more than its share, even for a second, goes past this.
pub(crate) fn most_in_a_second(rate: usize, workers: usize) -> usize {
    rate + (REQUESTS_AHEAD * workers as f64).floor() as usize + 1
}

/// The most requests that reached the provider in any one-second window, among arrivals (ms,
/// ascending).
pub(crate) fn busiest_second(arrivals: &[u64]) -> usize {
    let mut most = 0;
    let mut end = 0;
    for (start, at) in arrivals.iter().enumerate() {
        while end < arrivals.len() && arrivals[end] < at + 1000 {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

/// Workers as the fleet sees them, from `GET /v1/admin/workers`.
async fn workers(stack: &Stack) -> Vec<Value> {
    let (_, body) = stack
        .client
        .with_key(&stack.admin_key)
        .once(Method::GET, "/v1/admin/workers")
        .await;
    body["data"].as_array().cloned().unwrap_or_default()
}

/// Waits until exactly `n` workers are alive and every one of them counts `n`.
pub(crate) async fn wait_for_fleet(stack: &Stack, n: usize) -> Duration {
    let started = Instant::now();
    stack
        .wait_until(
            &format!("the fleet settles at {n} workers"),
            Duration::from_secs(20),
            || async {
                let workers = workers(stack).await;
                workers.len() == n && workers.iter().all(|w| w["fleet_size"] == n)
            },
        )
        .await;
    started.elapsed()
}

/// Provider arrivals (ms since the mock started) from `from` on.
fn arrivals_since(stack: &Stack, from: usize) -> Vec<u64> {
    stack.mock.stats().arrivals_ms[from..].to_vec()
}

#[tokio::test]
async fn a_fleet_of_one_two_and_four_workers_holds_the_provider_rate() {
    const RATE: usize = 100;
    let mut stack = Stack::start(
        "fleet_rate",
        StackOptions {
            workers: 1,
            // Plenty of slots, so the provider limit, not the worker, sets the pace.
            worker_concurrency: 64,
            mock: quick_provider(),
            settings: vec![
                ("CHATQ_PROVIDER_RPM", (RATE * 60).to_string()),
                ("CHATQ_WORKER_HEARTBEAT_SECS", "1".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    // Enough queued work that the workers never run out during the measurements.
    let conversations = stack.client.create_conversations(4000).await;
    stack.client.send_to_each(&conversations, 64).await;

    let mut report = Vec::new();
    for (size, to_add) in [(1, 0), (2, 1), (4, 2)] {
        for i in 0..to_add {
            stack.start_worker(&format!("extra-{size}-{i}"), &[]).await;
        }
        wait_for_fleet(&stack, size).await;
        let from = stack.mock.stats().arrivals_ms.len();
        let started = Instant::now();
        stack
            .wait_until(
                "five seconds of traffic",
                Duration::from_secs(30),
                || async { started.elapsed() >= Duration::from_secs(5) },
            )
            .await;
        let arrivals = arrivals_since(&stack, from);
        let elapsed = started.elapsed().as_secs_f64();
        let throughput = arrivals.len() as f64 / elapsed;
        let busiest = busiest_second(&arrivals);
        report.push((size, throughput, busiest));
        assert!(
            busiest <= most_in_a_second(RATE, size),
            "{size} workers: {busiest} requests in one second, limit {RATE}/s: {report:?}"
        );
        assert!(
            throughput >= RATE as f64 * 0.9,
            "{size} workers: {throughput:.1} requests/s, the limit is {RATE}/s: {report:?}"
        );
    }
    eprintln!("fleet rate (workers, requests/s, busiest second): {report:?}");
    stack.stop().await;
}

#[tokio::test]
async fn when_one_of_three_workers_dies_the_others_take_over_its_share() {
    const RATE: usize = 60;
    let stack_options = StackOptions {
        workers: 3,
        worker_concurrency: 32,
        mock: quick_provider(),
        settings: vec![
            ("CHATQ_PROVIDER_RPM", (RATE * 60).to_string()),
            ("CHATQ_WORKER_HEARTBEAT_SECS", "1".into()),
        ],
        ..StackOptions::default()
    };
    let mut stack = Stack::start("fleet_death", stack_options).await;
    let conversations = stack.client.create_conversations(1200).await;
    stack.client.send_to_each(&conversations, 64).await;
    wait_for_fleet(&stack, 3).await;

    stack.workers[0].sigkill().await;
    // Three heartbeats for its key to expire, one more for the others to notice.
    let rebalanced_in = wait_for_fleet(&stack, 2).await;
    assert!(
        rebalanced_in <= Duration::from_secs(6),
        "took {rebalanced_in:?} to rebalance"
    );

    let from = stack.mock.stats().arrivals_ms.len();
    let started = Instant::now();
    stack
        .wait_until(
            "four seconds of traffic",
            Duration::from_secs(30),
            || async { started.elapsed() >= Duration::from_secs(4) },
        )
        .await;
    let arrivals = arrivals_since(&stack, from);
    let throughput = arrivals.len() as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "after a death: rebalanced in {rebalanced_in:?}, then {throughput:.1} requests/s (limit {RATE})"
    );
    assert!(
        throughput >= RATE as f64 * 0.9,
        "the two left run at {throughput:.1}/s, not {RATE}/s"
    );
    let busiest = busiest_second(&arrivals);
    assert!(
        busiest <= most_in_a_second(RATE, 2),
        "{busiest} requests in one second, the limit is {RATE}/s"
    );
    stack.stop().await;
}

/// Lets traffic run for `secs` seconds (time passing is what is measured here).
async fn traffic_for(stack: &Stack, secs: u64) {
    let started = Instant::now();
    stack
        .wait_until(
            &format!("{secs} s of traffic"),
            Duration::from_secs(secs + 30),
            || async { started.elapsed() >= Duration::from_secs(secs) },
        )
        .await;
}

/// One of `workers` is paused (SIGSTOP) for longer than its capacity leases last, resumed, then
/// paused again for less. The others take the paused worker's capacity only once its leases have
/// expired, and it sends again only once it holds leases anew: the provider never sees more than
/// the limit in any second, and gets the limit again afterwards.
async fn pausing_one_worker_keeps_the_fleet_within_its_limit(name: &str, workers: usize) {
    const RATE: usize = 60;
    let mut stack = Stack::start(
        name,
        StackOptions {
            workers,
            worker_concurrency: 32,
            mock: quick_provider(),
            settings: vec![
                ("CHATQ_PROVIDER_RPM", (RATE * 60).to_string()),
                // Leases last three heartbeats: 3 s.
                ("CHATQ_WORKER_HEARTBEAT_SECS", "1".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(2400).await;
    stack.client.send_to_each(&conversations, 64).await;
    wait_for_fleet(&stack, workers).await;
    let from = stack.mock.stats().arrivals_ms.len();
    traffic_for(&stack, 3).await;

    // Longer than its leases: the others take its capacity once they expire.
    stack.workers[0].sigstop().await;
    traffic_for(&stack, 6).await;
    stack.workers[0].sigcont().await;
    wait_for_fleet(&stack, workers).await;
    traffic_for(&stack, 4).await;
    // Shorter than its leases: nobody else may take them meanwhile.
    stack.workers[0].sigstop().await;
    traffic_for(&stack, 1).await;
    stack.workers[0].sigcont().await;
    let settled = stack.mock.stats().arrivals_ms.len();
    traffic_for(&stack, 4).await;

    let arrivals = arrivals_since(&stack, from);
    let busiest = busiest_second(&arrivals);
    let last = arrivals_since(&stack, settled);
    let span_ms = last
        .last()
        .zip(last.first())
        .map_or(1, |(b, a)| (b - a).max(1));
    let throughput = last.len() as f64 * 1000.0 / span_ms as f64;
    crate::ledger::note(
        &stack,
        &format!(
            "{workers} workers, one paused twice: busiest second {busiest} (limit {RATE}), then {throughput:.1}/s"
        ),
    );
    assert!(
        busiest <= most_in_a_second(RATE, workers),
        "{busiest} requests in one second, the limit is {RATE}/s"
    );
    assert!(
        throughput >= RATE as f64 * 0.9,
        "after the pauses the fleet runs at {throughput:.1}/s, not {RATE}/s"
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_paused_worker_of_two_never_puts_the_fleet_over_its_limit() {
    pausing_one_worker_keeps_the_fleet_within_its_limit("fleet_pause_two", 2).await;
}

#[tokio::test]
async fn a_paused_worker_of_three_never_puts_the_fleet_over_its_limit() {
    pausing_one_worker_keeps_the_fleet_within_its_limit("fleet_pause_three", 3).await;
}

#[tokio::test]
async fn the_fleet_never_has_more_requests_in_flight_than_the_limit() {
    const LIMIT: u64 = 5;
    let stack = Stack::start(
        "fleet_concurrency",
        StackOptions {
            workers: 3,
            worker_concurrency: 8,
            // Slow replies, so requests pile up in flight if anything lets them.
            mock: MockConfig {
                ttft_ms: 200,
                tokens: 2,
                ..MockConfig::default()
            },
            settings: vec![
                ("CHATQ_PROVIDER_MAX_CONCURRENCY", LIMIT.to_string()),
                ("CHATQ_WORKER_HEARTBEAT_SECS", "1".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(150).await;
    stack.client.send_to_each(&conversations, 64).await;
    stack
        .wait_until("every job succeeds", Duration::from_secs(60), || async {
            stack.count_status("succeeded").await == 150
        })
        .await;
    let stats = stack.mock.stats();
    eprintln!(
        "max concurrency {LIMIT} over three workers: at most {} in flight",
        stats.max_in_flight
    );
    assert!(
        stats.max_in_flight <= LIMIT,
        "the provider had {} requests in flight at once, the limit is {LIMIT}",
        stats.max_in_flight
    );
    assert!(
        stats.max_in_flight >= LIMIT - 1,
        "the fleet used at most {} of the {LIMIT} allowed",
        stats.max_in_flight
    );
    stack.stop().await;
}

/// The most tokens the provider counted in any window of `window_ms`, among (arrival ms, tokens)
/// in arrival order.
fn busiest_window_tokens(tokens_ms: &[(u64, u32)], window_ms: u64) -> u64 {
    let mut most = 0;
    let mut sum = 0u64;
    let mut start = 0;
    for (at, tokens) in tokens_ms {
        sum += u64::from(*tokens);
        while tokens_ms[start].0 + window_ms <= *at {
            sum -= u64::from(tokens_ms[start].1);
            start += 1;
        }
        most = most.max(sum);
    }
    most
}

#[tokio::test]
async fn large_prompts_stay_within_the_fleets_tokens_per_minute() {
    const TPM: u64 = 12_000;
    let stack = Stack::start(
        "fleet_tpm",
        StackOptions {
            workers: 2,
            worker_concurrency: 16,
            mock: quick_provider(),
            settings: vec![
                ("CHATQ_PROVIDER_TPM", TPM.to_string()),
                ("CHATQ_WORKER_HEARTBEAT_SECS", "1".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    // About 2,000 tokens a prompt: each is ten seconds' worth of the limit.
    let prompt = "lorem ipsum ".repeat(666);
    let conversations = stack.client.create_conversations(40).await;
    for conversation in &conversations {
        let (status, body) = stack
            .client
            .request(
                Method::POST,
                &format!("/v1/conversations/{conversation}/messages"),
            )
            .json(&serde_json::json!({ "content": prompt }))
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        assert_eq!(
            status,
            reqwest::StatusCode::ACCEPTED,
            "{:?}",
            body.text().await
        );
    }
    traffic_for(&stack, 65).await;
    let stats = stack.mock.stats();
    let busiest = busiest_window_tokens(&stats.tokens_ms, 60_000);
    crate::ledger::note(
        &stack,
        &format!(
            "{} calls of about 2,000 tokens under {TPM} tokens/min over two workers (at {:?} ms): busiest minute {busiest} tokens",
            stats.tokens_ms.len(),
            stats.tokens_ms.iter().map(|(at, _)| at).collect::<Vec<_>>()
        ),
    );
    assert!(
        busiest as f64 <= TPM as f64 * 1.05,
        "the provider counted {busiest} tokens in one minute, the limit is {TPM} (+5 %)"
    );
    // Each worker's budget starts empty and refills at 100 tokens a second: a call every 23 s
    // or so, two a worker in the time given (the third may still be paying at the end).
    assert!(
        stats.tokens_ms.len() >= 3,
        "only {} calls: the limit allows about five a minute",
        stats.tokens_ms.len()
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_limit_nobody_configured_is_found_without_failing_jobs() {
    const HIDDEN_LIMIT: u32 = 30;
    const JOBS: usize = 400;
    let stack = Stack::start(
        "fleet_hidden_limit",
        StackOptions {
            workers: 1,
            worker_concurrency: 16,
            mock: MockConfig {
                max_requests_per_sec: Some(HIDDEN_LIMIT),
                retry_after_secs: Some(1),
                ..quick_provider()
            },
            settings: Vec::new(),
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let accepted = stack.client.send_to_each(&conversations, 64).await;
    let started = Instant::now();
    stack
        .wait_until(
            "every job is finished",
            Duration::from_secs(120),
            || async {
                stack.count_status("succeeded").await + stack.count_status("failed").await
                    == JOBS as i64
            },
        )
        .await;
    assert_eq!(accepted.len(), JOBS);
    assert_eq!(
        stack.count_status("failed").await,
        0,
        "no job may fail on a limit it can wait for"
    );
    let stats = stack.mock.stats();
    // Once converged (the second half of the run), what reaches the provider stays near its limit:
    // few requests beyond what it accepts.
    let arrivals = &stats.arrivals_ms;
    let half = arrivals[arrivals.len() / 2];
    let later: Vec<u64> = arrivals.iter().copied().filter(|at| *at >= half).collect();
    let busiest = busiest_second(&later);
    eprintln!(
        "hidden limit {HIDDEN_LIMIT}/s: {} requests, {} answered 429, busiest second later on {busiest}, {:.1} s",
        stats.requests,
        stats.rate_limited,
        started.elapsed().as_secs_f64()
    );
    assert!(
        busiest as f64 <= f64::from(HIDDEN_LIMIT) * 1.2,
        "after converging, {busiest} requests in one second against a limit of {HIDDEN_LIMIT}"
    );
    stack.stop().await;
}
