//! Running a delivered job, and telling JetStream what became of its message: acknowledged once
//! its result is committed, handed back to run again later, or terminated; a copy JetStream would
//! not deliver again is replaced through Postgres rather than left in the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use chatq_common::db::jobs::reconcile;
use chatq_common::job::JobEnvelope;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::process::{JobContext, Outcome, job_span, process_one};
use crate::slots::Slot;

/// Runs one delivered job and settles its message.
pub(super) async fn run_job(
    ctx: Arc<JobContext>,
    message: async_nats::jetstream::Message,
    slot: Slot,
    hand_back: CancellationToken,
    processed: Arc<AtomicU64>,
) {
    let delivered = message.info().map_or(1, |info| info.delivered);
    let (message, delivery) = message.split();
    let (outcome, span) = match serde_json::from_slice::<JobEnvelope>(&message.payload) {
        Ok(envelope) => {
            let span = job_span(&envelope, message.headers.as_ref());
            let outcome = async {
                let outcome = process_one(&ctx, &envelope, &delivery, delivered, &hand_back).await;
                unless_used_up(&ctx, &envelope, delivered, outcome).await
            }
            .instrument(span.clone())
            .await;
            (outcome, span)
        }
        Err(err) => {
            tracing::error!(subject = %message.subject, error = %err, "discarding a message that is not a job envelope");
            (Outcome::Term, tracing::Span::none())
        }
    };
    settle(&delivery, outcome).instrument(span).await;
    processed.fetch_add(1, Ordering::Relaxed);
    drop(slot);
}

/// Hands back a message delivered with no slot free for it, to be offered again `not_before`.
pub(super) async fn hand_back_surplus(
    ctx: &JobContext,
    message: async_nats::jetstream::Message,
    not_before: Duration,
) {
    let delivered = message.info().map_or(1, |info| info.delivered);
    let (message, delivery) = message.split();
    let outcome = match serde_json::from_slice::<JobEnvelope>(&message.payload) {
        Ok(envelope) => {
            let span = job_span(&envelope, message.headers.as_ref());
            unless_used_up(ctx, &envelope, delivered, Outcome::Nak(not_before))
                .instrument(span)
                .await
        }
        // Not a job: `run_job` discards it, saying so, once a slot takes it.
        Err(_) => Outcome::Nak(not_before),
    };
    settle(&delivery, outcome).await;
}

/// Tells JetStream what became of a delivery.
async fn settle(delivery: &Acker, outcome: Outcome) {
    let settled = match outcome {
        // The ack is confirmed by the server, so a lost ack is noticed here and not mistaken
        // for success; the redelivery then finds the job finished.
        Outcome::Ack => delivery.double_ack().await,
        Outcome::Nak(delay) => delivery.ack_with(AckKind::Nak(Some(delay))).await,
        Outcome::Term => delivery.ack_with(AckKind::Term).await,
        Outcome::Abandon => Ok(()),
    };
    if let Err(err) = settled {
        tracing::warn!(?outcome, error = %err, "could not settle a job message; JetStream will redeliver it");
    }
}

/// `outcome`, unless it leaves the message in the stream (handed back, or abandoned to the
/// worker that took the job over) and JetStream would not deliver it again: then see
/// [`last_delivery`]. A message left there undeliverable would stay in the work queue for good,
/// taking a place in it.
async fn unless_used_up(
    ctx: &JobContext,
    envelope: &JobEnvelope,
    delivered: i64,
    outcome: Outcome,
) -> Outcome {
    let stays = matches!(outcome, Outcome::Nak(_) | Outcome::Abandon);
    if stays && delivered >= ctx.topology.max_deliver() {
        last_delivery(ctx, envelope, outcome).await
    } else {
        outcome
    }
}

/// JetStream will not deliver this message again (`max_deliver`), yet the job still needs it.
/// Notes in Postgres that the job has no deliverable copy, so the reconciler publishes a new one
/// once the job is queued (now, or when the worker holding it hands it back), and removes this
/// copy. If Postgres cannot be told, the copy stays (and `outcome` stands).
async fn last_delivery(ctx: &JobContext, envelope: &JobEnvelope, outcome: Outcome) -> Outcome {
    let job_id = envelope.job_id;
    match reconcile::requeue_undeliverable(&ctx.pool, job_id).await {
        Ok(requeued) => {
            if requeued {
                tracing::warn!(%job_id, "job message delivered too often; the reconciler will publish a new copy");
            }
            Outcome::Term
        }
        Err(err) => {
            chatq_common::telemetry::log_error_chain(
                "cannot ask for a new copy of a job whose message is used up",
                &err,
            );
            outcome
        }
    }
}
