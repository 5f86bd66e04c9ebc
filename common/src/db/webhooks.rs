//! Webhook endpoints (`webhook_endpoints`) and the outbox of deliveries owed to them
//! (`webhook_outbox`).
//!
//! Outbox rows are written by the `webhook_enqueue` trigger, in the transaction that ends a job,
//! a response or a batch (see the `webhooks` migration), never from here. Workers then share the
//! rows due: [`claim_due`] leases a few to one worker (`FOR UPDATE SKIP LOCKED`, so workers never
//! wait on each other), and [`settle`] records how the attempt went. A deliverer that dies holding
//! a lease leaves its rows to be claimed again once the lease runs out: at least once.

use crate::db::Db;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{EventId, TenantId, WebhookId};
use crate::webhooks::signing::WebhookSecret;

/// An endpoint to record.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub id: WebhookId,
    pub tenant: TenantId,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub secret: WebhookSecret,
}

/// A stored endpoint, without its secret.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    pub id: WebhookId,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: OffsetDateTime,
}

/// Records an endpoint, unless its tenant already has `max_per_tenant` (then `None`).
///
/// # Errors
/// Database errors.
pub async fn create(
    pool: &Db,
    new: &NewEndpoint,
    max_per_tenant: i64,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Endpoints of one tenant are created one at a time, so two at once cannot pass the count.
    sqlx::query!(
        "SELECT id FROM tenants WHERE id = $1 FOR UPDATE",
        new.tenant.as_uuid()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let row = sqlx::query!(
        r#"INSERT INTO webhook_endpoints (id, tenant_id, url, events, description, secret)
           SELECT $1, $2, $3, $4, $5, $6
            WHERE (SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $2) < $7
           RETURNING created_at"#,
        new.id.as_uuid(),
        new.tenant.as_uuid(),
        new.url,
        &new.events[..],
        new.description.as_deref(),
        new.secret.key(),
        max_per_tenant,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|row| EndpointRow {
        id: new.id,
        url: new.url.clone(),
        events: new.events.clone(),
        description: new.description.clone(),
        created_at: row.created_at,
    }))
}

/// The tenant's endpoints, newest first, after `after`; up to `limit + 1` rows, so the caller
/// can tell whether there are more.
///
/// # Errors
/// Database errors.
pub async fn list(
    pool: &Db,
    tenant: TenantId,
    after: Option<WebhookId>,
    limit: i64,
) -> Result<Vec<EndpointRow>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRow,
        r#"SELECT id AS "id: WebhookId", url, events, description, created_at
             FROM webhook_endpoints
            WHERE tenant_id = $1 AND ($2::uuid IS NULL OR id < $2)
            ORDER BY id DESC LIMIT $3"#,
        tenant.as_uuid(),
        after.map(|id| id.as_uuid()),
        limit + 1,
    )
    .fetch_all(pool)
    .await
}

/// An endpoint, if it is the tenant's.
///
/// # Errors
/// Database errors.
pub async fn get(
    pool: &Db,
    tenant: TenantId,
    id: WebhookId,
) -> Result<Option<EndpointRow>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRow,
        r#"SELECT id AS "id: WebhookId", url, events, description, created_at
             FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2"#,
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .fetch_optional(pool)
    .await
}

/// Deletes an endpoint with the deliveries still owed to it. Returns false when the tenant has
/// no such endpoint.
///
/// # Errors
/// Database errors.
pub async fn delete(pool: &Db, tenant: TenantId, id: WebhookId) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query!(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND tenant_id = $2",
        id.as_uuid(),
        tenant.as_uuid(),
    )
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected() == 1)
}

/// A delivery leased to this worker.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub id: EventId,
    pub event: String,
    pub object_id: Uuid,
    /// When the result was committed.
    pub created_at: OffsetDateTime,
    /// This attempt's number, from 1: it fences [`settle`], so a worker whose lease ran out
    /// cannot overwrite what a later attempt recorded.
    pub attempt: i32,
    pub url: String,
    pub secret: WebhookSecret,
}

/// Leases up to `limit` due deliveries to the caller for `lease_secs` (longer than one attempt
/// can take), oldest due first, skipping rows another worker holds.
///
/// # Errors
/// Database errors.
pub async fn claim_due(
    pool: &Db,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<DueDelivery>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH due AS (
               SELECT id FROM webhook_outbox
                WHERE status = 'pending' AND next_attempt_at <= now()
                ORDER BY next_attempt_at
                LIMIT $1
                  FOR UPDATE SKIP LOCKED
           )
           UPDATE webhook_outbox o
              SET attempts = o.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
             FROM due, webhook_endpoints e
            WHERE o.id = due.id AND e.id = o.endpoint_id
        RETURNING o.id, o.type, o.object_id, o.created_at, o.attempts, e.url, e.secret"#,
        limit,
        lease_secs,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| DueDelivery {
            id: EventId::from_uuid(row.id),
            event: row.r#type,
            object_id: row.object_id,
            created_at: row.created_at,
            attempt: row.attempts,
            url: row.url,
            secret: WebhookSecret::from_key(row.secret),
        })
        .collect())
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Attempted {
    /// The receiver answered 2xx.
    Delivered,
    /// Anything else: try again after `retry_in_secs`, unless that is past the retry window
    /// (`retry_for_secs` after the event), in which case the delivery ends `failed`.
    Failed {
        error: String,
        retry_in_secs: f64,
        retry_for_secs: f64,
    },
}

/// What [`settle`] recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Delivered,
    /// Due again later.
    Retrying,
    /// Given up for good.
    Failed,
    /// The lease had run out and another attempt has the row: nothing recorded.
    Superseded,
}

/// Records an attempt's outcome, if the row is still this attempt's.
///
/// # Errors
/// Database errors.
pub async fn settle(
    pool: &Db,
    id: EventId,
    attempt: i32,
    outcome: &Attempted,
) -> Result<Settled, sqlx::Error> {
    let (delivered, error, retry_in, retry_for) = match outcome {
        Attempted::Delivered => (true, None, 0.0, 0.0),
        Attempted::Failed {
            error,
            retry_in_secs,
            retry_for_secs,
        } => (false, Some(error.as_str()), *retry_in_secs, *retry_for_secs),
    };
    let status = sqlx::query_scalar!(
        r#"UPDATE webhook_outbox
              SET status = CASE WHEN $3 THEN 'delivered'
                                WHEN created_at + make_interval(secs => $6) < now() + make_interval(secs => $5)
                                    THEN 'failed'
                                ELSE 'pending' END,
                  finished_at = CASE WHEN $3 OR created_at + make_interval(secs => $6)
                                                  < now() + make_interval(secs => $5)
                                     THEN now() END,
                  next_attempt_at = now() + make_interval(secs => $5),
                  last_error = $4
            WHERE id = $1 AND attempts = $2 AND status = 'pending'
        RETURNING status"#,
        id.as_uuid(),
        attempt,
        delivered,
        error,
        retry_in,
        retry_for,
    )
    .fetch_optional(pool)
    .await?;
    Ok(match status.as_deref() {
        Some("delivered") => Settled::Delivered,
        Some("failed") => Settled::Failed,
        Some(_) => Settled::Retrying,
        None => Settled::Superseded,
    })
}

/// Deliveries not yet delivered nor given up, for the `pending` gauge.
///
/// # Errors
/// Database errors.
pub async fn pending(pool: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM webhook_outbox WHERE status = 'pending'"#
    )
    .fetch_one(pool)
    .await
}
