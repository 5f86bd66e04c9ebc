//! `GET /v1/jobs/{id}/events`: a job's events as server-sent events.
//!
//! Every event has an `id`; `Last-Event-ID` (the header browsers send when they reconnect, or the
//! `last_event_id` query parameter) resumes right after it, with no gap and no repeat. A client
//! that arrives late first gets everything it missed; a finished job answers with its whole
//! history (or, past the replay window, its reply and terminal event) at once. The stream ends
//! after the terminal event. A `job.started` event with a higher `attempt` than the last one means
//! the reply restarted: text shown so far should be discarded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::stream_slots::StreamSlot;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chatq_common::db::jobs;
use chatq_common::ids::JobId;
use futures::Stream;
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{IdPath, QueryParams};
use crate::hub::{HubEvent, ResumingCursor};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    last_event_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = JobId, Path, description = "The job's id."), EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event.")),
    responses((status = 200, description = "Server-sent events: `job.queued`, `job.started`, `message.delta`, …, and a terminal event carrying the job.",
        content_type = "text/event-stream", body = crate::openapi::ServerSentEvent), crate::openapi::ApiErrors))]
pub async fn stream(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(job): IdPath<JobId>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> ApiResult<Response> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .or(query.last_event_id)
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| {
                ApiError::invalid_with_code(
                    format!(
                        "Invalid 'Last-Event-ID': {text:?} is not an event id from this stream."
                    ),
                    "last_event_id",
                    "invalid_value",
                )
            })
        })
        .transpose()?;
    let slot = state.event_streams.open(caller.tenant).await?;
    if jobs::get(&state.pool, caller.tenant, job).await?.is_none() {
        return Err(ApiError::not_found("job", job));
    }
    let cursor = state.hubs.follow(job).await.map_err(|err| {
        tracing::warn!(%job, error = %err, "cannot follow a job's events");
        ApiError::Overloaded {
            message: "Job events are unavailable right now (the message bus cannot be reached). Poll GET /v1/jobs/{id} meanwhile.".into(),
            retry_after: Duration::from_secs(2),
        }
    })?;
    let cursor = cursor.resume(last_event_id);
    let events = sse_events(cursor, slot, state.streams_stop.clone());
    Ok(sse_response(events, &state))
}

fn sse_events(
    cursor: ResumingCursor,
    slot: StreamSlot,
    stop: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(
        (cursor, slot, stop),
        |(mut cursor, slot, stop)| async move {
            let event = tokio::select! {
                event = cursor.next() => event?,
                // The server is shutting down: end the stream cleanly; the client reconnects with
                // Last-Event-ID to another replica.
                () = stop.cancelled() => return None,
            };
            Some((Ok(to_sse(&event)), (cursor, slot, stop)))
        },
    )
}

fn to_sse(event: &Arc<HubEvent>) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(event.body.name())
        .data(event.data.as_str())
}

/// An SSE response with keep-alives and the headers that stop proxies from buffering it.
pub fn sse_response<S>(events: S, state: &AppState) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let keep_alive = KeepAlive::new().interval(state.sse_keepalive);
    let mut response = Sse::new(events).keep_alive(keep_alive).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
