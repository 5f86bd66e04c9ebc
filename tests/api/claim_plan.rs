//! The claim reads the jobs it claims, not the queue: with thousands of jobs queued and the
//! table's statistics out of date (a flood, before Postgres analysed it), a claim still looks
//! each job up by its key. Counted in the rows Postgres reports reading, not in time.

use chatq_common::chat::GenerationParams;
use chatq_common::db::Db;
use chatq_common::db::jobs::{ClaimRequest, claim};
use chatq_common::ids::JobId;
use chatq_common::job::JobRequest;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::helpers::{TestOptions, database_url, spawn_app_with};

const QUEUED: i64 = 3_000;

/// Rows of `jobs` this connection's statements have read so far (its pending statistics flushed
/// first, so the count is its own and current).
async fn jobs_rows_read(connection: &sqlx::PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(connection)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
           FROM pg_stat_user_tables WHERE relname = 'jobs'",
    )
    .fetch_one(connection)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_claim_reads_its_jobs_not_the_whole_queue_when_statistics_are_stale() {
    let app = spawn_app_with(TestOptions {
        workers: 0,
        ..TestOptions::default()
    })
    .await;
    let tenant = app.tenant("flood").await;
    // Never analysed: the statistics say the table is as it was when it was created.
    sqlx::query("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        .execute(&app.pool)
        .await
        .unwrap();
    let queued: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobs (id, tenant_id, lane, status, request, model, deadline_at)
         SELECT gen_random_uuid(), $1, 'interactive', 'queued', $3, 'mock-model',
                now() + interval '1 hour'
           FROM generate_series(1, $2)
         RETURNING id",
    )
    .bind(tenant.as_uuid())
    .bind(QUEUED)
    .bind(
        serde_json::to_value(JobRequest::ConversationTurn {
            params: GenerationParams::default(),
        })
        .unwrap(),
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();

    // One connection, so the statistics read are those of the claim's statements.
    let connection = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url(&app.database))
        .await
        .unwrap();
    // A worker's connection runs the claim over and over, so Postgres soon plans it once for
    // any jobs (a generic plan, after five): claims past the sixth are the ones that count.
    for (nth, pair) in queued.chunks(2).take(10).enumerate() {
        let before = jobs_rows_read(&connection).await;
        let asked: Vec<ClaimRequest> = pair
            .iter()
            .map(|id| ClaimRequest {
                id: JobId::from_uuid(*id),
                token: Uuid::new_v4(),
                known_seq: 0,
            })
            .collect();
        let claimed = claim(
            &Db::direct(connection.clone()),
            &asked,
            "w1",
            30.0,
            10,
            None,
        )
        .await
        .unwrap();
        assert!(claimed.iter().all(Result::is_ok), "{claimed:?}");
        let read = jobs_rows_read(&connection).await - before;
        assert!(
            read < 20,
            "claim {nth} of 2 jobs read {read} rows of jobs, with {QUEUED} queued"
        );
    }
    connection.close().await;
    app.stop().await;
}
