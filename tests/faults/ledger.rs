//! The ledger every scenario ends with: each job the service accepted (each 202) must reach
//! exactly one terminal state, with at most one assistant message, and nothing may be left in
//! the work queue. The figures are reported per scenario on standard error and appended to
//! `target/tmp/faults-ledger.txt`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::harness::Stack;
use crate::harness::client::Accepted;

/// What one scenario did and found.
#[derive(Debug)]
pub struct LedgerReport {
    pub scenario: String,
    pub submitted: usize,
    pub faults: u64,
    /// Accepted jobs not in a terminal state (or missing, or succeeded without a reply).
    pub lost: usize,
    /// Jobs with more than one assistant message.
    pub duplicated: usize,
    /// From the fault healing (or being injected) to the last job settling and the queue
    /// draining.
    pub recovery: Duration,
    pub statuses: BTreeMap<String, usize>,
    pub attempts: BTreeMap<i32, usize>,
    pub provider_calls: u64,
}

impl LedgerReport {
    /// Fails the test unless nothing was lost or duplicated.
    pub fn assert_clean(&self) {
        assert_eq!(self.lost, 0, "jobs lost: {self:#?}");
        assert_eq!(self.duplicated, 0, "jobs duplicated: {self:#?}");
    }

    /// How many jobs ended with this status.
    pub fn with_status(&self, status: &str) -> usize {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

/// Waits (up to `timeout`) for every accepted job to settle and the queue to drain, then checks
/// the ledger. `healed_at` is when the fault ended (when it was injected, for a crash).
pub async fn settle(
    stack: &Stack,
    accepted: &[Accepted],
    faults: u64,
    healed_at: Instant,
    timeout: Duration,
) -> LedgerReport {
    let ids: Vec<Uuid> = accepted.iter().map(|a| job_uuid(&a.job_id)).collect();
    let unique: std::collections::HashSet<&Uuid> = ids.iter().collect();
    assert_eq!(
        unique.len(),
        ids.len(),
        "the service answered two sends with the same job"
    );
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rows;
    let settled_at = loop {
        rows = job_rows(stack, &ids).await;
        let open = rows
            .iter()
            .filter(|row| matches!(row.status.as_str(), "queued" | "running"))
            .count();
        if open == 0 && rows.len() == ids.len() {
            break Instant::now();
        }
        if tokio::time::Instant::now() >= deadline {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut report = LedgerReport {
        scenario: stack.name.clone(),
        submitted: accepted.len(),
        faults,
        lost: ids.len() - rows.len(),
        duplicated: 0,
        recovery: Duration::ZERO,
        statuses: BTreeMap::new(),
        attempts: BTreeMap::new(),
        provider_calls: stack.mock.stats().requests,
    };
    for row in &rows {
        *report.statuses.entry(row.status.clone()).or_default() += 1;
        *report.attempts.entry(row.attempts).or_default() += 1;
        let open = matches!(row.status.as_str(), "queued" | "running");
        if open || (row.status == "succeeded" && row.replies != 1) {
            report.lost += 1;
        }
        if row.replies > 1 {
            report.duplicated += 1;
        }
    }
    // Every copy of every job leaves the work queue (the last redelivered ones find their job
    // finished and are acknowledged).
    let stream = stack.jobs_stream();
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = stack.stream_messages(&stream).await;
        if left == Some(0) {
            break;
        }
        if tokio::time::Instant::now() >= drain_deadline {
            panic!(
                "{}: {left:?} messages still in {stream}; logs in {}\n{}",
                stack.name,
                stack.dir.display(),
                stack.stream_leftovers(&stream).await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    report.recovery = settled_at
        .max(Instant::now())
        .saturating_duration_since(healed_at);
    record(&report);
    report
}

struct JobRowSummary {
    status: String,
    attempts: i32,
    replies: i64,
}

async fn job_rows(stack: &Stack, ids: &[Uuid]) -> Vec<JobRowSummary> {
    let rows = sqlx::query_as::<_, (String, i32, i64)>(
        "SELECT j.status, j.attempts,
                (SELECT count(*) FROM messages m WHERE m.job_id = j.id AND m.role = 'assistant')
           FROM jobs j WHERE j.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&stack.pool)
    .await;
    match rows {
        Ok(rows) => rows
            .into_iter()
            .map(|(status, attempts, replies)| JobRowSummary {
                status,
                attempts,
                replies,
            })
            .collect(),
        // Postgres restarting: look again.
        Err(_) => Vec::new(),
    }
}

/// The uuid inside a `job_…` id.
pub fn job_uuid(id: &str) -> Uuid {
    let hex = id.strip_prefix("job_").expect("a job id");
    Uuid::try_parse(hex).expect("a job id")
}

/// Adds a line about a scenario to the report.
pub fn note(stack: &Stack, text: &str) {
    write_line(&format!("ledger {}: {text}", stack.name));
}

fn record(report: &LedgerReport) {
    let line = format!(
        "ledger {}: submitted {}, faults injected {}, lost {}, duplicated {}, recovery {:.1} s, \
         statuses {:?}, attempts {:?}, provider calls {}",
        report.scenario,
        report.submitted,
        report.faults,
        report.lost,
        report.duplicated,
        report.recovery.as_secs_f64(),
        report.statuses,
        report.attempts,
        report.provider_calls,
    );
    write_line(&line);
}

#[expect(
    clippy::print_stderr,
    reason = "the ledger is a report for the person running the tests"
)]
fn write_line(line: &str) {
    eprintln!("{line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-ledger.txt");
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        drop(writeln!(file, "{line}"));
    }
}
