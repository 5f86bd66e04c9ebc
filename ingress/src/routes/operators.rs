//! Operator endpoints (operator keys only): the queue per lane and the live workers of the fleet.

use axum::Json;
use axum::extract::State;
use chatq_common::db::operators;
use chatq_common::job::Lane;
use serde_json::{Value, json};

use crate::auth::Operator;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// `GET /v1/admin/queue`: per lane, jobs waiting (consumer lag), in flight, redelivered, and the
/// age of the oldest waiting job; plus the queue's size, its limit and the drain rate.
#[utoipa::path(get, path = "/v1/admin/queue", tag = "admin",
    responses((status = 200, description = "Per lane: waiting, in flight, redelivered, oldest age; the queue's size, limit and drain rate (operator keys).", body = Object), crate::openapi::ApiErrors))]
pub async fn queue(State(state): State<AppState>, _operator: Operator) -> ApiResult<Json<Value>> {
    state
        .queue
        .sample_once(&state.jetstream, &state.topology)
        .await
        .map_err(|err| ApiError::internal(anyhow::anyhow!("cannot read the job queue: {err}")))?;
    let queued = operators::queued_by_lane(&state.pool).await?;
    let mut lanes = serde_json::Map::new();
    for lane in Lane::ALL {
        let depth = state.queue.lane(lane);
        let recorded = queued.iter().find(|q| q.lane == lane.as_str());
        lanes.insert(
            lane.as_str().to_owned(),
            json!({
                "pending": depth.pending,
                "in_flight": depth.in_flight,
                "redelivered": depth.redelivered,
                "waiting_pulls": depth.waiting_pulls,
                "consumer_lag": depth.pending,
                "queued_in_postgres": recorded.map_or(0, |q| q.queued),
                "oldest_age_secs": recorded.map(|q| q.oldest_age_secs),
            }),
        );
    }
    Ok(Json(json!({
        "object": "queue",
        "lanes": lanes,
        "max_jobs": state.queue.max_jobs(),
        "drain_per_sec": state.queue.drain_per_sec(),
    })))
}

/// `GET /v1/admin/workers`: every live worker's last heartbeat.
#[utoipa::path(get, path = "/v1/admin/workers", tag = "admin",
    responses((status = 200, description = "Every live worker's last heartbeat (operator keys).", body = Object), crate::openapi::ApiErrors))]
pub async fn workers(State(state): State<AppState>, _operator: Operator) -> ApiResult<Json<Value>> {
    let store = state
        .jetstream
        .get_key_value(state.topology.workers_bucket())
        .await
        .map_err(|err| {
            ApiError::internal(anyhow::anyhow!("cannot open the workers bucket: {err}"))
        })?;
    let statuses = chatq_common::heartbeat::read_statuses(&store)
        .await
        .map_err(|err| {
            ApiError::internal(anyhow::anyhow!("cannot read worker heartbeats: {err}"))
        })?;
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let data: Vec<Value> = statuses
        .into_iter()
        .map(|s| {
            json!({
                "object": "worker",
                "id": s.id,
                "host": s.host,
                "pid": s.pid,
                "concurrency": s.concurrency,
                "configured_concurrency": s.configured_concurrency,
                "in_flight": s.in_flight,
                "processed": s.processed,
                "fleet_size": s.fleet_size,
                "started_at": s.started_at,
                "last_heartbeat": s.last_heartbeat_ms / 1000,
                "last_heartbeat_age_secs": (now_ms - s.last_heartbeat_ms).max(0) as f64 / 1000.0,
            })
        })
        .collect();
    Ok(Json(
        json!({ "object": "list", "data": data, "has_more": false }),
    ))
}
