//! Validating a batch in the background: its input file read a chunk at a time, every line
//! checked and recorded, in one transaction that holds the batch's row and ends it `in_progress`
//! or `failed`; then its lines published (see [`super::publish`]).
//!
//! Memory stays bounded by the page, not the file: chunks are read one at a time, lines are
//! gathered a thousand at a time and written with one statement each. Only the custom ids seen so
//! far are kept whole (to refuse a repeated one), and `max_file_lines` bounds them.
//!
//! A file with a line that is not a batch request (not JSON, no custom id, a repeated one, the
//! wrong method or URL, no body) fails validation as a whole, as OpenAI's does: the batch ends
//! `failed` with every such line in `errors`, and none of its lines is run.
//!
//! A validation cut short (the ingress stopped, Postgres went away) leaves the batch `validating`
//! and its row free: [`run_until_stopped`], in every ingress, takes such batches up again.

use std::collections::HashSet;
use std::time::Duration;

use chatq_common::db::batches::lines::LineRows;
use chatq_common::db::batches::{self, Validating};
use chatq_common::db::files;
use chatq_common::ids::{BatchId, FileId, JobId};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use super::line::{self, CheckedLine, LineError};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Lines written per statement.
const PAGE_LINES: usize = 1000;

/// Most line errors a failed batch reports (the first ones).
const MAX_REPORTED_ERRORS: usize = 1000;

/// How often an ingress looks for validations cut short.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// How long after its creation a batch still `validating`, and held by no one, counts as cut
/// short. Its own ingress takes it up at once; this only spares a look at a batch just created.
const STALE_AFTER_SECS: f64 = 5.0;

/// Takes up validations cut short, until `shutdown`.
pub async fn run_until_stopped(state: AppState, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(LOOK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let stale = match batches::stale_validating(&state.pool, STALE_AFTER_SECS, 10).await {
            Ok(stale) => stale,
            Err(err) => {
                tracing::debug!(error = %err, "cannot look for batches left validating");
                continue;
            }
        };
        for batch in stale {
            tracing::info!(%batch, "validating a batch whose validation was cut short");
            let validated = tokio::select! {
                () = shutdown.cancelled() => return,
                validated = validate(&state, batch) => validated,
            };
            if let Err(err) = validated {
                tracing::warn!(%batch, error = %err, "could not validate a batch; another try follows");
            }
        }
    }
}

/// Validates a `validating` batch in the background; shutdown waits for it.
pub fn spawn(state: &AppState, batch: BatchId) {
    let task_state = state.clone();
    state.tasks.spawn(async move {
        if let Err(err) = validate(&task_state, batch).await {
            tracing::warn!(%batch, error = %err, "could not validate a batch; another try follows");
        }
    });
}

/// Reads the batch's input file and records its lines, holding the batch's row: the batch ends
/// `in_progress` with every line queued, or `failed` with the lines that are not requests and
/// nothing else kept. Does nothing when the batch is no longer `validating` or is being
/// validated elsewhere.
///
/// # Errors
/// Database errors; the batch stays `validating`, for another try.
#[tracing::instrument(level = "debug", skip_all, fields(%batch))]
pub async fn validate(state: &AppState, batch: BatchId) -> ApiResult<()> {
    let mut tx = state.pool.begin().await?;
    let Some(validating) = batches::lock_validating(&mut tx, batch).await? else {
        return Ok(());
    };
    let read = record_lines(state, &mut tx, &validating).await?;
    if !read.errors.is_empty() || read.total == 0 {
        // None of the lines is kept: the transaction that wrote them goes, and the failure is
        // recorded in another, by whoever holds the batch then. (Not a savepoint: each line's
        // foreign-key check from inside one would share the batch row's lock with the outer
        // transaction, a new multixact per line, and validation would take ten times as long.)
        tx.rollback().await?;
        let mut errors = read.errors;
        if read.total == 0 {
            errors.push(json!({
                "code": "empty_file", "message": "The input file holds no requests.",
                "param": "input_file_id", "line": null,
            }));
        }
        let errors = json!({ "object": "list", "data": errors });
        let mut tx = state.pool.begin().await?;
        if batches::lock_validating(&mut tx, batch).await?.is_some() {
            batches::fail_validation(&mut tx, batch, read.total, &errors).await?;
            tx.commit().await?;
        }
        return Ok(());
    }
    let output = FileId::new();
    let error_file = FileId::new();
    let expires = validating
        .output_expires_secs
        .map(|secs| validating.created_at + time::Duration::seconds(secs));
    files::create_batch_files(
        &mut tx,
        validating.tenant,
        batch,
        output,
        error_file,
        expires,
    )
    .await?;
    batches::start(
        &mut tx,
        batch,
        read.total,
        read.model.as_deref(),
        output,
        error_file,
    )
    .await?;
    tx.commit().await?;
    super::publish::spawn(state, batch);
    Ok(())
}

/// What reading the input file found.
struct ReadLines {
    /// Requests in the file (blank lines are not requests).
    total: i32,
    /// The model every request to run asks for; `None` when they ask for several.
    model: Option<String>,
    /// Whether the requests ask for more than one model.
    models_differ: bool,
    /// Lines that are not batch requests, as `errors.data` reports them.
    errors: Vec<Value>,
}

/// Reads the input file a chunk at a time and records its lines in `tx`.
async fn record_lines(
    state: &AppState,
    tx: &mut PgConnection,
    batch: &Validating,
) -> ApiResult<ReadLines> {
    let deadline = batch.expires_at;
    let mut read = ReadLines {
        total: 0,
        model: None,
        models_differ: false,
        errors: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut rows = LineRows::default();
    let mut partial: Vec<u8> = Vec::new();
    let mut number: i32 = 0;
    let mut seq = 0;
    #[cfg(feature = "fault-injection")]
    let mut first_page = true;
    loop {
        let chunk = files::chunk(&mut *tx, batch.input_file_id, seq).await?;
        let last = chunk.is_none();
        let mut data = chunk.unwrap_or_default();
        seq += 1;
        if last {
            // The last line may lack its newline.
            data.push(b'\n');
        }
        let mut start = 0;
        for end in memchr_newlines(&data) {
            number += 1;
            let text: &[u8] = if partial.is_empty() {
                &data[start..end]
            } else {
                partial.extend_from_slice(&data[start..end]);
                &partial
            };
            if !text.iter().all(u8::is_ascii_whitespace) {
                read.total += 1;
                match line::check(text, &mut seen, state) {
                    Ok(checked) if read.errors.is_empty() => {
                        read.note_model(&checked);
                        push(&mut rows, number, checked)?;
                    }
                    Ok(_) => {}
                    Err(error) => note(&mut read.errors, number, error),
                }
            }
            partial.clear();
            start = end + 1;
        }
        if last {
            break;
        }
        partial.extend_from_slice(&data[start..]);
        if rows.len() >= PAGE_LINES {
            rows.insert(tx, batch.tenant, batch.id, deadline).await?;
            #[cfg(feature = "fault-injection")]
            {
                if first_page {
                    chatq_common::fault::reached(
                        chatq_common::fault::FaultPoint::MidValidation,
                        batch.id,
                    );
                }
                first_page = false;
            }
        }
    }
    if read.errors.is_empty() && !rows.is_empty() {
        rows.insert(tx, batch.tenant, batch.id, deadline).await?;
    }
    if read.models_differ {
        read.model = None;
    }
    Ok(read)
}

impl ReadLines {
    fn note_model(&mut self, checked: &CheckedLine) {
        if let CheckedLine::Run { model, .. } = checked {
            match &self.model {
                None if !self.models_differ => self.model = Some(model.clone()),
                Some(first) if first != model => self.models_differ = true,
                _ => {}
            }
        }
    }
}

fn memchr_newlines(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    data.iter()
        .enumerate()
        .filter(|(_, byte)| **byte == b'\n')
        .map(|(at, _)| at)
}

fn push(rows: &mut LineRows, number: i32, checked: CheckedLine) -> ApiResult<()> {
    match checked {
        CheckedLine::Run {
            custom_id,
            model,
            request,
        } => rows
            .push_job(JobId::new(), custom_id, model, &request)
            .map_err(ApiError::internal),
        CheckedLine::Refused { custom_id, error } => {
            let (status, body) = error.status_and_body();
            rows.push_refusal(number, custom_id, status.as_u16(), body.to_value());
            Ok(())
        }
    }
}

fn note(errors: &mut Vec<Value>, number: i32, error: LineError) {
    if errors.len() < MAX_REPORTED_ERRORS {
        errors.push(json!({
            "code": error.code, "message": error.message, "param": error.param, "line": number,
        }));
    }
}
