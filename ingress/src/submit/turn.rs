//! Recording and queueing a conversation turn: the user message and the job that answers it.

use std::time::Duration;

use chatq_common::db::jobs::{NewJob, NewTurnMessage, Recorded};
use chatq_common::db::messages;
use chatq_common::events::JobView;
use chatq_common::ids::{ConversationId, JobId, MessageId};
use chatq_common::job::{JobRequest, Lane};
use chatq_common::trace::TraceContext;

use super::idempotency::{self, IdempotencyKey};
use crate::auth::Caller;
use crate::error::ApiResult;
use crate::state::AppState;
use crate::validate::{SendMessage, check_content};
use crate::views::MessageView;
use crate::waiting::JobWait;

/// A turn as the handler read it.
#[derive(Debug)]
pub struct TurnRequest {
    pub conversation: ConversationId,
    pub body: SendMessage,
    pub key: Option<IdempotencyKey>,
    /// Seconds the client is willing to wait for the reply (`Prefer: wait=N`), already capped.
    pub wait: Option<u64>,
    /// The request's trace, which the job joins.
    pub trace: TraceContext,
}

/// What a send is answered with.
#[derive(Debug)]
pub struct TurnAnswer {
    pub job: JobView,
    /// The user message; `None` when a replayed request's message was cleared from the history
    /// since (the job is still there to poll).
    pub message: Option<MessageView>,
    /// The wait the client asked for, when the job finished within it.
    pub waited: Option<u64>,
    /// A retry answered with the job its `Idempotency-Key` first created.
    pub replayed: bool,
}

/// Records the turn's message and job, queues the job, and (given a wait) waits for it to end.
///
/// # Errors
/// Invalid input (400), no such conversation (404), a busy or full conversation or a reused
/// idempotency key (409), a full queue (503), database errors.
#[tracing::instrument(level = "debug", skip_all, fields(job_id))]
pub async fn send_turn(
    state: &AppState,
    caller: &Caller,
    turn: TurnRequest,
) -> ApiResult<TurnAnswer> {
    let limits = &state.limits;
    let TurnRequest {
        conversation,
        body,
        key,
        wait,
        trace,
    } = turn;
    check_content("content", &body.content, limits)?;
    let mut params = body.sampling().into_params(limits)?;
    params.no_cache = body.cache == Some(false);
    if !params.model.is_empty() {
        crate::routes::models::ensure_offered(state, &params.model)?;
    }
    let idempotency = key.map(|key| key.bind(&conversation.to_string(), &body));
    super::shed_if_full(state, idempotency.is_some())?;

    let job_id = JobId::new();
    let message_id = MessageId::new();
    let job = NewJob {
        id: job_id,
        tenant: caller.tenant,
        lane: Lane::Interactive,
        model: (!params.model.is_empty()).then(|| params.model.clone()),
        request: JobRequest::ConversationTurn { params },
        default_model: state.default_model.clone(),
        idempotency: idempotency.clone(),
        deadline_secs: limits.job_deadline_secs as f64,
        max_queued: limits.tenant_max_queued_jobs,
        turn: Some(NewTurnMessage {
            conversation,
            message_id,
            content: body.content.clone(),
            max_messages: i32::try_from(limits.max_messages_per_conversation).unwrap_or(i32::MAX),
        }),
        trace: Some(trace),
    };
    let recorded = match super::record(state, job).await? {
        Recorded::Enqueued(recorded) => {
            tracing::Span::current().record("job_id", tracing::field::display(job_id));
            recorded
        }
        Recorded::DuplicateKey => {
            let Some(idempotency) = idempotency else {
                return Err(super::refused(&Recorded::DuplicateKey, state, conversation));
            };
            let first = idempotency::first_job(state, caller.tenant, &idempotency).await?;
            tracing::Span::current().record("job_id", tracing::field::display(first.id));
            let message_id = first.user_message_id;
            return answer_existing(state, caller, JobView::from(first), message_id, wait, true)
                .await;
        }
        refused => return Err(super::refused(&refused, state, conversation)),
    };

    let job = JobView::queued(
        job_id,
        Lane::Interactive,
        recorded.model.clone(),
        Some(conversation),
        recorded.created_at.unix_timestamp(),
    );
    // Follow the job before publishing it, so a job that finishes at once is not missed.
    let waiting = match wait {
        Some(secs) if secs > 0 => Some((JobWait::begin_recorded(state, job.clone()).await, secs)),
        _ => None,
    };
    #[cfg(feature = "fault-injection")]
    chatq_common::fault::reached(chatq_common::fault::FaultPoint::BeforePublish, job_id);
    let placement = super::placement(state, &recorded);
    super::queue(state, job_id, Some(conversation), placement, &trace).await?;

    if let Some((waiting, secs)) = waiting
        && let Some(job) = waiting.until_end(Duration::from_secs(secs)).await
    {
        return answer_existing(state, caller, job, Some(message_id), wait, false).await;
    }
    let message = MessageView {
        id: message_id,
        object: "message",
        conversation_id: conversation,
        seq: recorded.seq.unwrap_or_default(),
        role: "user".into(),
        content: body.content,
        job_id: Some(job_id),
        created_at: recorded.created_at.unix_timestamp(),
    };
    Ok(TurnAnswer {
        job,
        message: Some(message),
        waited: None,
        replayed: false,
    })
}

/// Answers with a job that exists already: one that finished while the client waited, or the
/// first job of a replayed request (waited for too, if the client asked to wait).
async fn answer_existing(
    state: &AppState,
    caller: &Caller,
    mut job: JobView,
    message_id: Option<MessageId>,
    wait: Option<u64>,
    replayed: bool,
) -> ApiResult<TurnAnswer> {
    if replayed
        && let Some(secs) = wait.filter(|secs| *secs > 0)
        && !job.status.is_terminal()
        && let Some(ended) = JobWait::begin(state, job.id)
            .await
            .until_end(Duration::from_secs(secs))
            .await
    {
        job = ended;
    }
    let message = match message_id {
        Some(id) => messages::get(&state.pool, caller.tenant, id)
            .await?
            .map(MessageView::from),
        None => None,
    };
    let waited = wait.filter(|_| job.status.is_terminal());
    Ok(TurnAnswer {
        job,
        message,
        waited,
        replayed,
    })
}
