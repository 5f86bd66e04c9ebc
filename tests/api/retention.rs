//! Retention: the workers' sweep deletes exactly what has expired (finished jobs, dead letters,
//! idle conversations with their messages, ended batches with their lines and files, expired
//! files) while traffic runs, and never a job that has not finished, nor a conversation or batch
//! that has one.
//!
//! The rows are made old by moving their timestamps back (retention is measured in hours here):
//! what is measured is which rows the sweep picks, not the passing of time.

use std::collections::BTreeSet;
use std::time::Duration;

use chatq_common::db::Db;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, TestOptions, id_of, spawn_app_with};

const HOUR: u64 = 3600;

/// The uuid inside a `job_…` or `conv_…` id.
fn uuid_of(id: &str) -> Uuid {
    let hex = id.rsplit_once('_').map_or(id, |(_, hex)| hex);
    Uuid::try_parse(hex).unwrap()
}

/// Moves a job's end `hours` into the past, with the status it ends up in.
async fn age_job(pool: &Db, job: Uuid, status: &str, hours: f64) {
    sqlx::query(
        "UPDATE jobs SET status = $2, finished_at = now() - make_interval(secs => $3)
          WHERE id = $1",
    )
    .bind(job)
    .bind(status)
    .bind(hours * HOUR as f64)
    .execute(pool)
    .await
    .unwrap();
}

/// Moves a conversation's last activity `hours` into the past.
async fn idle_conversation(pool: &Db, conversation: Uuid, hours: f64) {
    sqlx::query(
        "UPDATE conversations SET last_activity_at = now() - make_interval(secs => $2)
          WHERE id = $1",
    )
    .bind(conversation)
    .bind(hours * HOUR as f64)
    .execute(pool)
    .await
    .unwrap();
}

async fn ids(pool: &Db, sql: &'static str) -> BTreeSet<Uuid> {
    sqlx::query_scalar::<_, Uuid>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// One finished turn in each of `n` new conversations: (conversation, job) ids.
async fn finished_turns(app: &TestApp, n: usize) -> Vec<(Uuid, Uuid)> {
    let mut turns = Vec::new();
    for i in 0..n {
        let conversation = id_of(&app.create_conversation(json!({})).await);
        let job = app.turn(&conversation, &format!("turn {i}")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        turns.push((uuid_of(&conversation), uuid_of(job["id"].as_str().unwrap())));
    }
    turns
}

#[tokio::test]
async fn the_sweep_deletes_exactly_what_has_expired_while_traffic_runs() {
    let app = spawn_app_with(TestOptions {
        workers: 2,
        settings: Box::new(|settings| {
            settings.retention.finished_jobs_secs = Some(HOUR);
            settings.retention.dead_letters_secs = Some(2 * HOUR);
            settings.retention.idle_conversations_secs = Some(24 * HOUR);
            settings.retention.sweep_interval_secs = 1;
            // Small batches, so a sweep takes several.
            settings.retention.sweep_batch = 3;
        }),
        ..TestOptions::default()
    })
    .await;
    let pool = &app.pool;
    let turns = finished_turns(&app, 24).await;
    let (jobs_of, conversations_of): (Vec<Uuid>, Vec<Uuid>) =
        turns.iter().map(|(c, j)| (*j, *c)).unzip();

    // Jobs 0..8 finished two hours ago: expired. 8..10 half an hour ago: kept.
    for job in &jobs_of[0..8] {
        age_job(pool, *job, "succeeded", 2.0).await;
    }
    for job in &jobs_of[8..10] {
        age_job(pool, *job, "cancelled", 0.5).await;
    }
    // Dead letters: 10..13 failed three hours ago (expired), 13..15 ninety minutes ago (kept).
    for job in &jobs_of[10..13] {
        age_job(pool, *job, "failed", 3.0).await;
    }
    for job in &jobs_of[13..15] {
        age_job(pool, *job, "failed", 1.5).await;
    }
    // A job still running, however old it looks, is never deleted, nor is its conversation.
    age_job(pool, jobs_of[15], "running", 48.0).await;
    sqlx::query("UPDATE jobs SET lease_expires_at = now() + interval '1 day' WHERE id = $1")
        .bind(jobs_of[15])
        .execute(pool)
        .await
        .unwrap();
    idle_conversation(pool, conversations_of[15], 48.0).await;
    // Conversations 16..20 idle for two days: deleted with their messages and jobs.
    // 20..24 idle for twelve hours: kept.
    for conversation in &conversations_of[16..20] {
        idle_conversation(pool, *conversation, 48.0).await;
    }
    for conversation in &conversations_of[20..24] {
        idle_conversation(pool, *conversation, 12.0).await;
    }

    // Traffic meanwhile: new conversations, turn after turn, all kept.
    let traffic = async {
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.extend(finished_turns(&app, 4).await);
        }
        sent
    };
    let expired_gone = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let expired: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM jobs WHERE id = ANY($1))
                      + (SELECT count(*) FROM conversations WHERE id = ANY($2))",
            )
            .bind(
                jobs_of[0..8]
                    .iter()
                    .chain(&jobs_of[10..13])
                    .chain(&jobs_of[16..20])
                    .copied()
                    .collect::<Vec<_>>(),
            )
            .bind(&conversations_of[16..20])
            .fetch_one(pool)
            .await
            .unwrap();
            if expired == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{expired} expired rows still there after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (sent, ()) = tokio::join!(traffic, expired_gone);
    // Another sweep after the expired rows went: it must find nothing more to delete.
    let sweeps =
        chatq_workers::retention::Sweeper::new(pool.clone(), app.settings.retention.clone());
    assert_eq!(
        sweeps.sweep().await.unwrap(),
        chatq_workers::retention::SweepReport::default(),
        "a sweep after the expired rows were gone still deleted something"
    );

    let kept_jobs: BTreeSet<Uuid> = jobs_of[8..10]
        .iter()
        .chain(&jobs_of[13..16])
        .chain(&jobs_of[20..24])
        .chain(sent.iter().map(|(_, job)| job))
        .copied()
        .collect();
    let kept_conversations: BTreeSet<Uuid> = conversations_of[0..16]
        .iter()
        .chain(&conversations_of[20..24])
        .chain(sent.iter().map(|(conversation, _)| conversation))
        .copied()
        .collect();
    assert_eq!(ids(pool, "SELECT id FROM jobs").await, kept_jobs);
    assert_eq!(
        ids(pool, "SELECT id FROM conversations").await,
        kept_conversations
    );
    // A deleted job's messages stay with their conversation; a deleted conversation's go with it.
    let messages_left: BTreeSet<Uuid> =
        ids(pool, "SELECT DISTINCT conversation_id FROM messages").await;
    assert_eq!(messages_left, kept_conversations);
    let history: Vec<Value> = app
        .history(&format!("conv_{}", conversations_of[0].simple()))
        .await;
    assert_eq!(
        history.len(),
        2,
        "the turn of a deleted job stays in history"
    );
    app.stop().await;
}

/// Moves a batch's end (`completed_at`) `hours` into the past.
async fn age_batch(pool: &Db, batch: Uuid, hours: f64) {
    sqlx::query(
        "UPDATE batches SET completed_at = now() - make_interval(secs => $2) WHERE id = $1",
    )
    .bind(batch)
    .bind(hours * HOUR as f64)
    .execute(pool)
    .await
    .unwrap();
}

/// A completed batch of `lines` lines: its id, output file id and error file id.
async fn completed_batch(app: &TestApp, name: &str, lines: usize) -> (Uuid, String, String) {
    use crate::batches::{create_batch, ended, jsonl, request_line, upload, wait_for_batch};
    let lines: Vec<Value> = (0..lines)
        .map(|i| request_line(&format!("{name}-{i}")))
        .collect();
    let file = upload(app, &jsonl(&lines)).await;
    let batch = create_batch(app, &file, "24h").await;
    let batch = wait_for_batch(app, batch["id"].as_str().unwrap(), ended).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    (
        uuid_of(batch["id"].as_str().unwrap()),
        batch["output_file_id"].as_str().unwrap().to_owned(),
        batch["error_file_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn ended_batches_go_with_their_lines_and_files_and_expired_files_at_once() {
    let app = spawn_app_with(TestOptions {
        settings: Box::new(|settings| {
            settings.retention.batches_secs = Some(24 * HOUR);
            settings.retention.uploads_secs = Some(48 * HOUR);
            settings.retention.sweep_interval_secs = 1;
            settings.retention.sweep_batch = 3;
        }),
        ..TestOptions::default()
    })
    .await;
    let pool = &app.pool;
    // Old: ended two days ago. Recent: an hour ago. Both ran 5 lines.
    let (old, old_output, old_errors) = completed_batch(&app, "old", 5).await;
    let (recent, recent_output, _) = completed_batch(&app, "recent", 5).await;
    age_batch(pool, old, 48.0).await;
    age_batch(pool, recent, 1.0).await;
    // A batch still running, however old, keeps its lines.
    let (running, _, _) = completed_batch(&app, "running", 2).await;
    sqlx::query(
        "UPDATE batches SET status = 'in_progress', completed_at = NULL,
                created_at = now() - interval '10 days' WHERE id = $1",
    )
    .bind(running)
    .execute(pool)
    .await
    .unwrap();
    // The recent batch's output file expires now (its `output_expires_after`): gone at once.
    sqlx::query("UPDATE files SET expires_at = now() WHERE id = $1")
        .bind(uuid_of(&recent_output))
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        app.get(&format!("/v1/files/{recent_output}"))
            .await
            .status(),
        reqwest::StatusCode::NOT_FOUND
    );
    // Uploads: the three input files; one made three days old.
    let uploads: Vec<Uuid> = ids(pool, "SELECT id FROM files WHERE contents = 'upload'")
        .await
        .into_iter()
        .collect();
    assert_eq!(uploads.len(), 3);
    sqlx::query("UPDATE files SET created_at = now() - interval '3 days' WHERE id = $1")
        .bind(uploads[0])
        .execute(pool)
        .await
        .unwrap();

    // Traffic meanwhile.
    let traffic = finished_turns(&app, 6);
    let swept = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM jobs WHERE batch_id = $1)
                      + (SELECT count(*) FROM batches WHERE id = $1)
                      + (SELECT count(*) FROM files WHERE id = ANY($2))",
            )
            .bind(old)
            .bind(vec![
                uuid_of(&old_output),
                uuid_of(&old_errors),
                uuid_of(&recent_output),
                uploads[0],
            ])
            .fetch_one(pool)
            .await
            .unwrap();
            if left == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{left} expired rows still there after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let (sent, ()) = tokio::join!(traffic, swept);
    let sweeps =
        chatq_workers::retention::Sweeper::new(pool.clone(), app.settings.retention.clone());
    assert_eq!(
        sweeps.sweep().await.unwrap(),
        chatq_workers::retention::SweepReport::default(),
        "a sweep after the expired rows were gone still deleted something"
    );
    assert_eq!(
        ids(pool, "SELECT id FROM batches").await,
        BTreeSet::from([recent, running])
    );
    let lines_left: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT batch_id, count(*) FROM jobs WHERE batch_id IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut expected = vec![(recent, 5), (running, 2)];
    expected.sort();
    assert_eq!(lines_left, expected);
    assert_eq!(
        ids(pool, "SELECT id FROM files WHERE contents = 'upload'").await,
        uploads[1..].iter().copied().collect()
    );
    let turn_jobs: BTreeSet<Uuid> = sent.iter().map(|(_, job)| *job).collect();
    assert_eq!(
        ids(pool, "SELECT id FROM jobs WHERE batch_id IS NULL").await,
        turn_jobs
    );
    app.stop().await;
}
