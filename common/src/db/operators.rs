//! What operators see about the queue from Postgres: how old the oldest waiting job is per lane.

use crate::db::Db;

/// One lane's queued jobs, as Postgres has them.
#[derive(Debug, Clone)]
pub struct QueuedLane {
    pub lane: String,
    pub queued: i64,
    /// Seconds since the oldest queued job was created.
    pub oldest_age_secs: f64,
}

/// Queued jobs per lane (lanes with none are absent).
///
/// # Errors
/// Database errors.
pub async fn queued_by_lane(pool: &Db) -> Result<Vec<QueuedLane>, sqlx::Error> {
    sqlx::query_as!(
        QueuedLane,
        r#"SELECT lane, count(*) AS "queued!",
                  extract(epoch FROM now() - min(created_at))::float8 AS "oldest_age_secs!"
             FROM jobs WHERE status = 'queued'
            GROUP BY lane"#
    )
    .fetch_all(pool)
    .await
}
