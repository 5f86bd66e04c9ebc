//! The note an ingress writes once JetStream holds a job (`jobs::mark_published`), beside the
//! claims and commits of workers, which lock the same rows at the same moments: a fast job (a
//! reply-cache hit) is often claimed, or even finished, before its note is written.

use chatq_common::db::jobs::{self, Recorded};
use uuid::Uuid;

use crate::helpers::{TestOptions, completion_job, spawn_app_with};

/// A claim locks its jobs in id order; the note used to lock its jobs in whatever order its plan
/// read them, and to wait for each. A note holding the second job of a claim while waiting for
/// its first was a deadlock, which Postgres broke only after `deadlock_timeout` (one second):
/// the claimed jobs started a second late, and their clients (cache hits most visibly, which are
/// otherwise answered in tens of milliseconds) waited that second too.
#[tokio::test]
async fn the_publish_note_never_waits_for_a_job_a_worker_holds_locked() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let tenant = app.tenant("notes").await;
    let mut ids = Vec::new();
    for prompt in ["first", "second"] {
        let job = completion_job(tenant, prompt);
        ids.push(job.id.as_uuid());
        let recorded = jobs::record(&app.pool, &[job]).await.unwrap();
        assert!(matches!(recorded.as_slice(), [Recorded::Enqueued(_)]));
    }
    ids.sort_unstable();
    let (first, second) = (ids[0], ids[1]);

    // A claim under way: it holds the first job and goes on to the second.
    let mut claim = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(first)
        .execute(&mut *claim)
        .await
        .unwrap();

    // The note, in a transaction that turns any wait for a lock into an error (the claim holds
    // its lock until the test lets go, so a note that waits cannot pass).
    let mut note = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *note)
        .await
        .unwrap();
    jobs::mark_published(&mut *note, &[first, second])
        .await
        .expect("the note waited for the claim's lock");
    note.commit().await.unwrap();

    // The claim goes on to the second job, which the note no longer holds.
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(second)
        .execute(&mut *claim)
        .await
        .unwrap();
    claim.commit().await.unwrap();

    // The free job was noted; the held one was skipped (the reconciler covers it).
    let noted = |id: Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT published_at IS NOT NULL FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!((noted(first).await, noted(second).await), (false, true));
    app.stop().await;
}
