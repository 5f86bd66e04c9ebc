//! The rows a batch records, as arrays, and the one statement that writes them.

use std::collections::HashMap;

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{Conversation, NewJob};
use crate::trace::TraceContext;

/// The columns of the jobs (and turn messages) a batch records, as arrays for `unnest`.
#[derive(Default)]
pub(super) struct Rows {
    // Jobs.
    ids: Vec<Uuid>,
    tenants: Vec<Uuid>,
    conversations: Vec<Option<Uuid>>,
    lanes: Vec<String>,
    requests: Vec<Value>,
    models: Vec<String>,
    message_ids: Vec<Option<Uuid>>,
    idempotency_keys: Vec<Option<String>>,
    request_hashes: Vec<Option<Vec<u8>>>,
    deadlines: Vec<f64>,
    traceparents: Vec<Option<String>>,
    // The user messages of turns.
    turn_message_ids: Vec<Uuid>,
    turn_conversations: Vec<Uuid>,
    turn_tenants: Vec<Uuid>,
    turn_seqs: Vec<i64>,
    turn_contents: Vec<String>,
    turn_job_ids: Vec<Uuid>,
}

impl Rows {
    /// Whether nothing is to be written.
    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(super) fn push(
        &mut self,
        job: &NewJob,
        seq: Option<i64>,
        model: &str,
    ) -> Result<(), sqlx::Error> {
        let request =
            serde_json::to_value(&job.request).map_err(|err| sqlx::Error::Encode(err.into()))?;
        self.ids.push(job.id.as_uuid());
        self.tenants.push(job.tenant.as_uuid());
        self.conversations
            .push(job.turn.as_ref().map(|t| t.conversation.as_uuid()));
        self.lanes.push(job.lane.as_str().to_owned());
        self.requests.push(request);
        self.models.push(model.to_owned());
        self.message_ids
            .push(job.turn.as_ref().map(|t| t.message_id.as_uuid()));
        self.idempotency_keys
            .push(job.idempotency.as_ref().map(|i| i.key.clone()));
        self.request_hashes
            .push(job.idempotency.as_ref().map(|i| i.request_hash.clone()));
        self.deadlines.push(job.deadline_secs);
        self.traceparents
            .push(job.trace.as_ref().map(TraceContext::to_string));
        if let (Some(turn), Some(seq)) = (&job.turn, seq) {
            self.turn_message_ids.push(turn.message_id.as_uuid());
            self.turn_conversations.push(turn.conversation.as_uuid());
            self.turn_tenants.push(job.tenant.as_uuid());
            self.turn_seqs.push(seq);
            self.turn_contents.push(turn.content.clone());
            self.turn_job_ids.push(job.id.as_uuid());
        }
        Ok(())
    }

    /// Writes the rows: the conversations' new counters, the turns' messages and the jobs, in
    /// one statement. Returns the time they were recorded at.
    pub(super) async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        conversations: &HashMap<Uuid, Conversation>,
    ) -> Result<OffsetDateTime, sqlx::Error> {
        let (conversation_ids, next_seqs, counts): (Vec<Uuid>, Vec<i64>, Vec<i32>) = conversations
            .iter()
            .filter(|(_, c)| c.touched)
            .map(|(id, c)| (*id, c.next_seq, c.message_count))
            .collect();
        sqlx::query_scalar!(
            r#"WITH conv AS (
                   UPDATE conversations c
                      SET next_seq = t.next_seq, message_count = t.message_count, last_activity_at = now()
                     FROM unnest($1::uuid[], $2::bigint[], $3::integer[]) AS t(id, next_seq, message_count)
                    WHERE c.id = t.id
               ), msg AS (
                   INSERT INTO messages (id, conversation_id, tenant_id, seq, role, content, job_id)
                   SELECT t.id, t.conversation_id, t.tenant_id, t.seq, 'user', t.content, t.job_id
                     FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::bigint[], $8::text[], $9::uuid[])
                          AS t(id, conversation_id, tenant_id, seq, content, job_id)
               ), job AS (
                   INSERT INTO jobs (id, tenant_id, conversation_id, lane, status, request, model,
                                     user_message_id, idempotency_key, request_hash, deadline_at,
                                     traceparent)
                   SELECT t.id, t.tenant_id, t.conversation_id, t.lane, 'queued', t.request, t.model,
                          t.message_id, t.idempotency_key, t.request_hash,
                          now() + make_interval(secs => t.deadline), t.traceparent
                     FROM unnest($10::uuid[], $11::uuid[], $12::uuid[], $13::text[], $14::jsonb[],
                                 $15::text[], $16::uuid[], $17::text[], $18::bytea[], $19::float8[],
                                 $20::text[])
                          AS t(id, tenant_id, conversation_id, lane, request, model, message_id,
                               idempotency_key, request_hash, deadline, traceparent)
               )
               SELECT now() AS "now!""#,
            &conversation_ids,
            &next_seqs,
            &counts,
            &self.turn_message_ids,
            &self.turn_conversations,
            &self.turn_tenants,
            &self.turn_seqs,
            &self.turn_contents[..],
            &self.turn_job_ids,
            &self.ids,
            &self.tenants,
            &self.conversations[..] as _,
            &self.lanes[..],
            &self.requests,
            &self.models[..],
            &self.message_ids[..] as _,
            &self.idempotency_keys[..] as _,
            &self.request_hashes[..] as _,
            &self.deadlines,
            &self.traceparents[..] as _,
        )
        .fetch_one(&mut *tx)
        .await
    }
}
