//! Creating a response: one chat completion job on the interactive lane, recorded and queued by
//! the same steps as every job (`crate::submit`), with the response recorded beside it before it
//! is queued. Then the answer: the response at once (`background`), the response once its job
//! ended (the one place waits go through, `crate::waiting`), or its events (`stream`).

use std::time::Duration;

use chatq_common::db::jobs::{self, NewJob, Recorded};
use chatq_common::db::responses::{self, NewResponse, ResponseRow};
use chatq_common::events::JobView;
use chatq_common::ids::{JobId, ResponseId};
use chatq_common::job::{JobRequest, Lane};
use chatq_common::trace::TraceContext;

use super::events::Translator;
use super::object::response_json;
use super::request::CreateResponse;
use super::stream::ResponseStream;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::submit::abandoned::AbandonGuard;
use crate::waiting::JobWait;

/// How a create is answered.
pub enum Created {
    /// The Response object (queued for `background`, finished otherwise).
    Object(serde_json::Value),
    /// `stream: true`: its events from the first.
    Stream(Box<ResponseStream>),
}

/// Records and queues a response, then answers as the request asks.
///
/// # Errors
/// Invalid input (400), an unknown model or earlier response (404), a full queue or no message
/// bus for a stream (503).
#[tracing::instrument(level = "debug", skip_all, fields(job_id))]
pub async fn create_response(
    state: &AppState,
    caller: &Caller,
    body: CreateResponse,
    trace: TraceContext,
) -> ApiResult<Created> {
    let id = ResponseId::new();
    let continued = match body.previous()? {
        Some(previous) => Some(
            responses::continued(&state.pool, caller.tenant, previous)
                .await?
                .ok_or_else(|| ApiError::not_found("response", previous))?,
        ),
        None => None,
    };
    let prepared = body.prepare(id, continued, &state.limits)?;
    let model = prepared.params.model.clone();
    crate::routes::models::ensure_offered(state, &model)?;
    crate::submit::shed_if_full(state, false)?;
    // A stream's slot is taken before anything is written, so a refused stream leaves nothing.
    let slot = if prepared.stream {
        Some(state.event_streams.open(caller.tenant).await?)
    } else {
        None
    };
    let job_id = responses::job_of(id);
    let job = NewJob {
        id: job_id,
        tenant: caller.tenant,
        lane: Lane::Interactive,
        model: Some(model.clone()),
        request: JobRequest::ChatCompletion {
            params: prepared.params,
            body: Some(prepared.body),
            messages: Vec::new(),
        },
        default_model: None,
        idempotency: None,
        deadline_secs: state.limits.job_deadline_secs as f64,
        max_queued: state.limits.tenant_max_queued_jobs,
        turn: None,
        trace: Some(trace),
    };
    let recorded = match crate::submit::record(state, job).await? {
        Recorded::Enqueued(recorded) => recorded,
        refused => return Err(crate::submit::refused(&refused, state, job_id)),
    };
    tracing::Span::current().record("job_id", tracing::field::display(job_id));
    let placement = crate::submit::placement(state, &recorded);
    let row = ResponseRow {
        id,
        previous: prepared.previous,
        instructions: prepared.instructions,
        input: serde_json::Value::Array(prepared.items),
        metadata: prepared.metadata,
        store: prepared.store,
        background: prepared.background,
        temperature: prepared.temperature,
        top_p: prepared.top_p,
        max_output_tokens: prepared.max_output_tokens,
        created_at: recorded.created_at,
    };
    if row.store {
        let new = NewResponse {
            id,
            tenant: caller.tenant,
            previous: row.previous,
            instructions: row.instructions.clone(),
            input: row.input.clone(),
            metadata: row.metadata.clone(),
            store: row.store,
            background: row.background,
            temperature: row.temperature,
            top_p: row.top_p,
            max_output_tokens: row.max_output_tokens,
        };
        if let Err(err) = responses::insert(&state.pool, &new).await {
            // Take the job back: the client gets an error, so nothing may run for it.
            jobs::withdraw(&state.pool, job_id).await?;
            return Err(err.into());
        }
    }
    let queued = JobView::queued(
        job_id,
        Lane::Interactive,
        model.clone(),
        None,
        recorded.created_at.unix_timestamp(),
    );
    let mut abandon = AbandonGuard::new(state, caller.tenant, job_id, row.background);
    if let Some(slot) = slot {
        // Follow before publishing, so not even the first event can be missed.
        let followed = state.hubs.follow_recorded(queued.clone()).await;
        let cursor = unless_unavailable(job_id, followed)?;
        crate::submit::queue(state, job_id, None, placement, &trace).await?;
        return Ok(Created::Stream(Box::new(ResponseStream {
            cursor,
            translator: Translator::new(row, queued),
            starting_after: None,
            slot,
            abandon,
        })));
    }
    if row.background {
        crate::submit::queue(state, job_id, None, placement, &trace).await?;
        return Ok(Created::Object(response_json(&row, &queued, "queued")));
    }
    let waiting = JobWait::begin_recorded(state, queued.clone()).await;
    crate::submit::queue(state, job_id, None, placement, &trace).await?;
    let ended = waiting
        .until_end(Duration::from_secs(state.limits.job_deadline_secs))
        .await;
    abandon.disarm();
    let job = match ended {
        Some(job) => job,
        None => jobs::get(&state.pool, caller.tenant, job_id)
            .await?
            .map(JobView::from)
            .unwrap_or(queued),
    };
    let status = super::object::status_of(&job);
    Ok(Created::Object(response_json(&row, &job, status)))
}

/// Follows a job's events, or answers 503 when the message bus cannot be reached.
pub(super) async fn follow(state: &AppState, job: JobId) -> ApiResult<crate::hub::ResumingCursor> {
    unless_unavailable(job, state.hubs.follow(job).await)
}

/// The cursor of a followed job, or 503 when the message bus cannot be reached.
fn unless_unavailable(
    job: JobId,
    followed: Result<crate::hub::HubCursor, crate::hub::HubError>,
) -> ApiResult<crate::hub::ResumingCursor> {
    match followed {
        Ok(cursor) => Ok(cursor.resume(None)),
        Err(err) => {
            tracing::warn!(%job, error = %err, "cannot follow a job's events");
            Err(ApiError::Overloaded {
                message: "Streaming is unavailable right now (the message bus cannot be reached). Poll GET /v1/responses/{id} meanwhile.".into(),
                retry_after: Duration::from_secs(2),
            })
        }
    }
}
