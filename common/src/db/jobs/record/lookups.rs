//! What recording a batch reads first, in its transaction: jobs already recorded (after a lost
//! acknowledgement), the conversations its turns name (locked), the idempotency keys used.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::{Conversation, NewJob, RecordedJob};

/// Jobs of this batch that are recorded already (an earlier attempt at the batch committed, but
/// its acknowledgement was lost).
pub(super) async fn already_recorded(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<HashMap<Uuid, RecordedJob>, sqlx::Error> {
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.id.as_uuid()).collect();
    let rows = sqlx::query!(
        r#"SELECT j.id AS "id!", j.created_at AS "created_at!", j.deadline_at AS "deadline_at!",
                  j.model AS "model!", m.seq AS "seq?"
             FROM jobs j LEFT JOIN messages m ON m.id = j.user_message_id
            WHERE j.id = ANY($1)"#,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let job = RecordedJob {
                seq: row.seq,
                created_at: row.created_at,
                deadline_at: row.deadline_at,
                model: row.model,
                queued_ahead: 0,
            };
            (row.id, job)
        })
        .collect())
}

/// Locks the conversations the batch's turns name, in id order (so concurrent batches cannot
/// deadlock), and reads what deciding needs: owner, model, size, next sequence number and
/// whether a reply is pending.
pub(super) async fn lock_conversations(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<HashMap<Uuid, Conversation>, sqlx::Error> {
    let mut ids: Vec<Uuid> = jobs
        .iter()
        .filter_map(|j| j.turn.as_ref().map(|t| t.conversation.as_uuid()))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    ids.sort_unstable();
    ids.dedup();
    // Each conversation, and its pending job, is looked up by its key, one at a time, and
    // locked in the order of `ids`. Written as `c.id = ANY($1)` and a plain `EXISTS`, the plan
    // depends on the tables' statistics: when they are stale (a table that grew since it was
    // last analysed), the planner read every conversation, and every queued job to hash them
    // for the `EXISTS`, for each batch (seen: 5 ms a batch, most of a recording's time, with
    // 20,000 jobs queued). `OFFSET 0` keeps the `EXISTS` a lookup per conversation.
    let rows = sqlx::query!(
        r#"SELECT c.id AS "id!", c.tenant_id AS "tenant_id!", c.model AS "model?",
                  c.message_count AS "message_count!", c.next_seq AS "next_seq!",
                  EXISTS (SELECT 1 FROM jobs j
                           WHERE j.conversation_id = c.id AND j.status IN ('queued', 'running')
                          OFFSET 0) AS "busy!"
             FROM unnest($1::uuid[]) AS wanted(id)
            CROSS JOIN LATERAL (
                  SELECT id, tenant_id, model, message_count, next_seq FROM conversations
                   WHERE conversations.id = wanted.id
                     FOR UPDATE) c"#,
        &ids,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let conversation = Conversation {
                tenant: row.tenant_id,
                model: row.model,
                message_count: row.message_count,
                next_seq: row.next_seq,
                busy: row.busy,
                touched: false,
            };
            (row.id, conversation)
        })
        .collect())
}

/// The (tenant, idempotency key) pairs of the batch that earlier jobs used already.
pub(super) async fn used_keys(
    tx: &mut sqlx::PgConnection,
    jobs: &[NewJob],
) -> Result<HashSet<(Uuid, String)>, sqlx::Error> {
    let (tenants, keys): (Vec<Uuid>, Vec<String>) = jobs
        .iter()
        .filter_map(|j| {
            j.idempotency
                .as_ref()
                .map(|i| (j.tenant.as_uuid(), i.key.clone()))
        })
        .unzip();
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = sqlx::query!(
        r#"SELECT tenant_id, idempotency_key AS "key!" FROM jobs
            WHERE (tenant_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"#,
        &tenants,
        &keys,
    )
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.tenant_id, row.key))
        .collect())
}
