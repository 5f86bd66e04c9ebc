//! One trace per request, across processes: with JSON logs, the ingress's lines for a send and
//! the worker's lines for its job carry the same trace id, the client's if it sent a
//! `traceparent`, also when the ingress crashed before publishing and the reconciler did it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chatq_common::ids::{ConversationId, JobId};
use chatq_common::trace::{TRACEPARENT, TraceContext};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Stack, StackOptions};

/// The traceparents two clients send.
const CLIENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const CLIENT_OF_THE_CRASH: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// JSON logs, with the DEBUG lines of chatq's own crates ("job queued", "job succeeded").
fn options() -> StackOptions {
    StackOptions {
        workers: 1,
        settings: vec![
            ("CHATQ_LOG_FORMAT", "json".into()),
            (
                "CHATQ_LOG",
                "info,chatq_ingress=debug,chatq_workers=debug,async_nats=warn".into(),
            ),
        ],
        ..StackOptions::default()
    }
}

fn messages_path(conversation: &str) -> String {
    format!("/v1/conversations/{conversation}/messages")
}

/// Sends a message, with `traceparent` if given. Returns the job id and the trace id the
/// ingress answered with.
async fn send(stack: &Stack, conversation: &str, traceparent: Option<&str>) -> (String, String) {
    let mut request = stack
        .client
        .request(Method::POST, &messages_path(conversation))
        .json(&json!({ "content": "hello" }));
    if let Some(traceparent) = traceparent {
        request = request.header(TRACEPARENT, traceparent);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answered = response
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| TraceContext::parse(value.to_str().ok()?))
        .expect("the answer carries a valid traceparent");
    let body: Value = response.json().await.unwrap();
    let job_id = body["job"]["id"].as_str().unwrap().to_owned();
    (job_id, answered.trace_id().to_string())
}

fn uuid_of(id: &str) -> Uuid {
    let (_, hex) = id.split_once('_').unwrap();
    hex.parse().unwrap()
}

async fn wait_succeeded(stack: &Stack, jobs: &[&str]) {
    let ids: Vec<Uuid> = jobs.iter().map(|id| uuid_of(id)).collect();
    stack
        .wait_until("the jobs succeeded", Duration::from_secs(30), || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'succeeded'",
            )
            .bind(&ids)
            .fetch_one(&stack.pool)
            .await
            .unwrap_or(0);
            done == ids.len() as i64
        })
        .await;
}

/// The JSON lines of some log files (a line that is not JSON is skipped).
fn json_lines(logs: &[PathBuf]) -> Vec<Value> {
    logs.iter()
        .flat_map(|log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// The job a line is about: its own `job_id` field, or that of a span it was logged in.
fn job_of(line: &Value) -> Option<&str> {
    line.get("job_id").and_then(Value::as_str).or_else(|| {
        line.get("spans")?
            .as_array()?
            .iter()
            .find_map(|span| span.get("job_id")?.as_str())
    })
}

/// The lines about `job`.
fn lines_of<'a>(lines: &'a [Value], job: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|line| job_of(line) == Some(job))
        .collect()
}

/// The one trace id every line about `job` carries, in one process's logs (in `dir`).
fn trace_of(lines: &[Value], job: &str, process: &str, dir: &Path) -> String {
    let about = lines_of(lines, job);
    assert!(
        !about.is_empty(),
        "no {process} line about {job}; logs in {}",
        dir.display()
    );
    let trace = about[0]["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a {process} line about {job} has no trace id: {}", about[0]));
    for line in &about {
        assert_eq!(
            line["trace_id"].as_str(),
            Some(trace),
            "{process} lines about {job} are in different traces: {line}"
        );
    }
    trace.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_job_are_one_trace_across_processes() {
    let mut stack = Stack::start("traces", options()).await;
    let conversations = stack.client.create_conversations(3).await;
    let (traced, traced_answer) = send(&stack, &conversations[0], Some(CLIENT)).await;
    let (untraced, untraced_answer) = send(&stack, &conversations[1], None).await;
    wait_succeeded(&stack, &[&traced, &untraced]).await;

    // A job published by the reconciler: its ingress crashes between recording and publishing.
    let first_ingress = stack.ingress().log.clone();
    stack.ingress().sigkill().await;
    stack
        .start_ingress(&[("CHATQ_FAULT_EXIT_BEFORE_PUBLISH", "1")])
        .await;
    let crashed_ingress = stack.ingress().log.clone();
    let cut_off = stack
        .client
        .request(Method::POST, &messages_path(&conversations[2]))
        .header(TRACEPARENT, CLIENT_OF_THE_CRASH)
        .json(&json!({ "content": "hello" }))
        .send()
        .await;
    assert!(cut_off.is_err(), "the ingress answered: {cut_off:?}");
    stack
        .ingress()
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the ingress crashes");
    // Recorded, not published: only the reconciler can queue it (and it waits a while first).
    let conversation = ConversationId::from_uuid(uuid_of(&conversations[2]));
    let (recorded, unpublished): (Uuid, bool) =
        sqlx::query_as("SELECT id, published_at IS NULL FROM jobs WHERE conversation_id = $1")
            .bind(conversation.as_uuid())
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert!(unpublished, "the crashed ingress published the job");
    let republished = JobId::from_uuid(recorded).to_string();
    wait_succeeded(&stack, &[&republished]).await;

    // Each process writes a line as it logs it; a worker's last line for a job may follow the
    // job's commit by a moment.
    let ingress_logs = [first_ingress, crashed_ingress];
    let worker_log = stack.workers[0].log.clone();
    let jobs = [&traced, &untraced, &republished];
    stack
        .wait_until(
            "both processes logged every job",
            Duration::from_secs(10),
            || async {
                let ingress = json_lines(&ingress_logs);
                let worker = json_lines(std::slice::from_ref(&worker_log));
                jobs.iter().all(|job| {
                    !lines_of(&ingress, job).is_empty()
                        && lines_of(&worker, job)
                            .iter()
                            .any(|line| line["message"] == "job succeeded")
                })
            },
        )
        .await;
    let ingress = json_lines(&ingress_logs);
    let worker = json_lines(std::slice::from_ref(&worker_log));
    let traces: Vec<String> = jobs
        .iter()
        .map(|job| {
            let at_ingress = trace_of(&ingress, job, "ingress", &stack.dir);
            let at_worker = trace_of(&worker, job, "worker", &stack.dir);
            assert_eq!(
                at_ingress, at_worker,
                "{job} is in one trace at the ingress and another at the worker"
            );
            at_ingress
        })
        .collect();

    let client = TraceContext::parse(CLIENT).unwrap().trace_id().to_string();
    let client_of_the_crash = TraceContext::parse(CLIENT_OF_THE_CRASH)
        .unwrap()
        .trace_id()
        .to_string();
    assert_eq!(traces[0], client, "the client's trace was not kept");
    assert_eq!(traces[0], traced_answer);
    assert_eq!(traces[1], untraced_answer);
    assert_ne!(traces[1], client, "a request without a trace got a new one");
    assert_eq!(
        traces[2], client_of_the_crash,
        "the reconciler published the job outside its request's trace"
    );
    // The ingress says when it queued a job (the crashed one it did not).
    for job in [&traced, &untraced] {
        assert!(
            lines_of(&ingress, job)
                .iter()
                .any(|line| line["message"] == "job queued"),
            "no \"job queued\" line for {job}"
        );
    }
    stack.stop().await;
}
