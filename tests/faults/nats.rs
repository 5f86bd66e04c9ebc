//! nats-server killed while jobs run: restarted with its store, or with its store wiped (then
//! only Postgres remembers the queue, and the reconciler must publish it all again).

use std::time::{Duration, Instant};

use chatq_common::db::jobs::reconcile::{StreamSighting, note_stream_created};
use chatq_mock_llm::{Fault, MockConfig};

use crate::harness::{Stack, StackOptions};
use crate::ledger::{self, settle};

const JOBS: usize = 300;

fn options(worker_concurrency: usize) -> StackOptions {
    StackOptions {
        workers: 2,
        worker_concurrency,
        mock: MockConfig {
            ttft_ms: 200,
            tokens: 8,
            token_delay_ms: 40,
            ..MockConfig::default()
        },
        ..StackOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_nothing() {
    let mut stack = Stack::start("nats_restart", options(16)).await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let client = stack.client.clone();
    // Sending goes on through the outage: the ingress records what it cannot publish.
    let load = tokio::spawn(async move { client.send_to_each(&conversations, 16).await });

    stack
        .wait_until("jobs are flowing", Duration::from_secs(60), || async {
            stack.count_status("succeeded").await >= 40
        })
        .await;
    stack.nats.kill().await;
    // The outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.nats.restart().await;
    let restarted_at = Instant::now();

    let accepted = load.await.unwrap();
    let report = settle(&stack, &accepted, 1, restarted_at, Duration::from_secs(90)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_nats_store_is_rebuilt_from_postgres() {
    // Few slots and short jobs, so most jobs wait in the stream when it is lost.
    let mut stack = Stack::start(
        "nats_store_wiped",
        StackOptions {
            mock: MockConfig {
                ttft_ms: 100,
                tokens: 4,
                token_delay_ms: 25,
                ..MockConfig::default()
            },
            ..options(4)
        },
    )
    .await;
    let conversations = stack.client.create_conversations(JOBS).await;
    let accepted = stack.client.send_to_each(&conversations, 32).await;
    stack
        .wait_until("jobs are flowing", Duration::from_secs(60), || async {
            stack.count_status("succeeded").await >= 10
        })
        .await;
    let waiting = stack.stream_messages(&stack.jobs_stream()).await.unwrap();
    assert!(
        waiting > 100,
        "only {waiting} jobs were waiting in the stream"
    );
    let first_stream = recorded_stream(&stack).await;
    assert!(
        first_stream.is_some(),
        "the reconciler did not record the stream"
    );

    stack.nats.kill().await;
    stack.nats.wipe_store();
    stack.nats.restart().await;
    let restarted_at = Instant::now();
    // The reconcilers notice the new stream and publish every queued job again.
    stack
        .wait_until("the queue is rebuilt", Duration::from_secs(30), || async {
            let unpublished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE status = 'queued' AND published_at IS NULL",
            )
            .fetch_one(&stack.pool)
            .await
            .unwrap_or(i64::MAX);
            unpublished == 0 && recorded_stream(&stack).await != first_stream
        })
        .await;
    ledger::note(
        &stack,
        &format!(
            "queue rebuilt {:.1} s after restart",
            restarted_at.elapsed().as_secs_f64()
        ),
    );

    let report = settle(&stack, &accepted, 1, restarted_at, Duration::from_secs(120)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), JOBS, "{report:#?}");
    let second_stream = recorded_stream(&stack).await;
    assert_ne!(
        first_stream, second_stream,
        "the reconciler did not notice the new stream"
    );
    stack.stop().await;
}

/// Queued jobs whose copy JetStream acknowledged (so no reconciler publishes them again unless it
/// finds the copy gone).
async fn published_queued(stack: &Stack) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE status = 'queued' AND published_at IS NOT NULL",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_lost_while_the_stream_survives_are_published_again() {
    const LOST: usize = 50;
    let mut stack = Stack::start(
        "nats_copies_lost",
        StackOptions {
            workers: 0,
            settings: vec![("CHATQ_RECONCILE_AUDIT_SECS", "5".into())],
            ..StackOptions::default()
        },
    )
    .await;
    let conversations = stack.client.create_conversations(LOST).await;
    let accepted = stack.client.send_to_each(&conversations, 16).await;
    stack
        .wait_until(
            "every job is noted as published",
            Duration::from_secs(30),
            || async { published_queued(&stack).await == LOST as i64 },
        )
        .await;
    // The copies vanish, the stream stays (as when NATS loses its last unsynced writes): no new
    // stream for the reconciler to notice, and every job still marked published.
    let jobs = stack
        .jetstream
        .get_stream(stack.jobs_stream())
        .await
        .unwrap();
    jobs.purge().await.unwrap();
    assert_eq!(stack.stream_messages(&stack.jobs_stream()).await, Some(0));
    let lost_at = Instant::now();

    stack.start_worker("worker-0", &[]).await;
    let report = settle(&stack, &accepted, 1, lost_at, Duration::from_secs(60)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), LOST, "{report:#?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_back_to_a_recreated_stream_runs_again() {
    let mut stack = Stack::start(
        "nats_handed_back_after_wipe",
        StackOptions {
            // The provider takes the job's call and never answers, until the worker gives up on it.
            mock: MockConfig {
                fault: Some(Fault::Hang),
                ..MockConfig::default()
            },
            // Long enough that the call is still held when the reconciler notices the new
            // stream, however slowly NATS restarts on a busy machine (seen: 10 s).
            settings: vec![
                ("CHATQ_PROVIDER_IDLE_TIMEOUT_SECS", "20".into()),
                ("CHATQ_RECONCILE_AUDIT_SECS", "5".into()),
            ],
            ..StackOptions::default()
        },
    )
    .await;
    let conversation = stack.client.create_conversations(1).await.remove(0);
    let accepted = vec![stack.client.send(&conversation, "hello").await];
    stack
        .wait_until("the job is running", Duration::from_secs(30), || async {
            stack.count_status("running").await == 1
        })
        .await;
    let first_stream = recorded_stream(&stack).await;

    // While the provider holds the call, NATS loses its store. The reconciler notices the new
    // stream while the job still runs: a running job is not republished then.
    stack.nats.kill().await;
    stack.nats.wipe_store();
    stack.nats.restart().await;
    stack
        .wait_until(
            "the new stream is noticed",
            Duration::from_secs(30),
            || async { recorded_stream(&stack).await != first_stream },
        )
        .await;
    assert_eq!(
        stack.count_status("running").await,
        1,
        "the call still runs"
    );
    // The provider recovers; the hanging call times out and the job is handed back, queued,
    // to a stream that never had its copy.
    stack.mock.set_config(MockConfig::default());
    let healed_at = Instant::now();
    let report = settle(&stack, &accepted, 1, healed_at, Duration::from_secs(60)).await;
    report.assert_clean();
    assert_eq!(report.with_status("succeeded"), 1, "{report:#?}");
    assert_eq!(
        stack.mock.stats().requests,
        2,
        "the hung call, then one that answered"
    );
    stack.stop().await;
}

/// The creation time of the jobs stream, as the reconcilers recorded it.
async fn recorded_stream(stack: &Stack) -> Option<time::OffsetDateTime> {
    sqlx::query_scalar("SELECT created_at FROM jetstream_streams WHERE name = $1")
        .bind(stack.jobs_stream())
        .fetch_optional(&stack.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_reconcilers_racing_over_a_new_stream_exactly_one_republishes() {
    let stack = Stack::start(
        "reconcilers_racing",
        StackOptions {
            workers: 0,
            ..StackOptions::default()
        },
    )
    .await;
    let stream = "RACE_JOBS";
    let sightings = |created: time::OffsetDateTime| {
        let pool = stack.pool.clone();
        async move {
            let racers = (0..8).map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut conn = pool.acquire().await.unwrap();
                    note_stream_created(&mut conn, stream, created)
                        .await
                        .unwrap()
                })
            });
            let mut seen = Vec::new();
            for racer in racers.collect::<Vec<_>>() {
                seen.push(racer.await.unwrap());
            }
            seen
        }
    };
    let first = time::OffsetDateTime::now_utc();
    let seen = sightings(first).await;
    assert_eq!(count(&seen, StreamSighting::First), 1, "{seen:?}");
    assert_eq!(count(&seen, StreamSighting::Known), 7, "{seen:?}");
    let seen = sightings(first + Duration::from_secs(60)).await;
    assert_eq!(count(&seen, StreamSighting::Recreated), 1, "{seen:?}");
    assert_eq!(count(&seen, StreamSighting::Known), 7, "{seen:?}");
    stack.stop().await;
}

fn count(seen: &[StreamSighting], which: StreamSighting) -> usize {
    seen.iter().filter(|s| **s == which).count()
}
