//! Logging and tracing, set up once per process.
//!
//! Logs go to standard error, so standard output stays free for what a command prints on purpose
//! (`chatq keys create` prints the key alone there). `pretty` is for a person at a terminal,
//! `json` for a log pipeline.
//!
//! Work done for a request or a job runs inside a span with a [`TRACE_ID`] field (the ingress's
//! `request` span, a worker's `job` span; see [`crate::trace`]). A JSON line logged inside one
//! carries that trace id as a top-level `trace_id`, beside the `span` and `spans` objects
//! (which carry `job_id` and the other span fields), so a log pipeline can gather a request's
//! lines from every process without knowing how spans nest.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::writer::{MakeWriter, MakeWriterExt};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::settings::LogFormat;

/// The span field that names the trace a request or a job belongs to (32 hex digits).
pub const TRACE_ID: &str = "trace_id";

/// Installs the global subscriber. Safe to call more than once (tests build several apps in one
/// process); only the first call has an effect.
pub fn init(format: LogFormat, filter: &str) {
    let mut directives = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Postgres notices such as "relation _sqlx_migrations already exists, skipping", logged at
    // every start, are not news; a filter that names sqlx still gets them.
    if !filter.contains("sqlx")
        && let Ok(quiet) = "sqlx::postgres::notice=warn".parse()
    {
        directives = directives.add_directive(quiet);
    }
    let filter = directives;
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let result = match format {
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .with_target(false)
            .compact()
            .try_init(),
        LogFormat::Json => json_subscriber(filter, writer)
            .try_init()
            .map_err(Into::into),
    };
    // An error only means a subscriber is already installed.
    drop(result);
}

/// JSON lines, one per event, with the event's fields at the top level, its span and the spans
/// it is in, and the [`TRACE_ID`] of the innermost span that has one.
fn json_subscriber<W>(filter: EnvFilter, writer: W) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::format()
        .json()
        .flatten_event(true)
        .with_current_span(true);
    tracing_subscriber::registry()
        .with(filter)
        .with(TraceIds)
        .with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(WithTraceId(lines))
                .with_writer(writer),
        )
}

/// Logs an error once, with its whole cause chain, at the place that decides not to propagate it.
pub fn log_error_chain(context: &str, err: &(dyn std::error::Error + 'static)) {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %chain, "{context}");
}

/// The JSON-encoded [`TRACE_ID`] of a span that has one, kept in the span's extensions.
struct SpanTraceId(String);

/// Notes the [`TRACE_ID`] of every span created or recorded with one.
struct TraceIds;

impl<S> Layer<S> for TraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field(TRACE_ID).is_none() {
            return;
        }
        let mut found = FindTraceId(None);
        attrs.record(&mut found);
        if let (Some(trace_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(trace_id);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut found = FindTraceId(None);
        values.record(&mut found);
        if let (Some(trace_id), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(trace_id);
        }
    }
}

struct FindTraceId(Option<SpanTraceId>);

impl Visit for FindTraceId {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACE_ID {
            self.0 = serde_json::to_string(value).ok().map(SpanTraceId);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == TRACE_ID {
            // A `%trace_id` (Display) field arrives here, and debug-formats as its display.
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// tracing-subscriber's JSON lines, with the [`TRACE_ID`] of the innermost span that has one
/// added as the line's first field.
struct WithTraceId(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceId
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let trace_id = ctx.event_scope().into_iter().flatten().find_map(|span| {
            let extensions = span.extensions();
            extensions.get::<SpanTraceId>().map(|id| id.0.clone())
        });
        let Some(trace_id) = trace_id else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(512);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let separator = if rest.starts_with('}') { "" } else { "," };
                write!(writer, "{{\"{TRACE_ID}\":{trace_id}{separator}{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex, PoisonError};

    use serde_json::Value;

    use super::*;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            held.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<Value> {
            let held = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&held)
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or(Value::Null))
                .collect()
        }
    }

    const REQUEST_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const JOB_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    #[test]
    fn json_lines_carry_the_trace_id_of_their_innermost_traced_span() {
        let captured = Captured::default();
        let writer = {
            let captured = captured.clone();
            move || captured.clone()
        };
        let subscriber = json_subscriber(EnvFilter::new("debug"), writer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any span");
            let request = tracing::info_span!("request", trace_id = %REQUEST_TRACE, path = "/v1");
            request.in_scope(|| {
                tracing::debug_span!("publish", job_id = "job_1")
                    .in_scope(|| tracing::debug!(lane = "interactive", "job queued"));
                let job = tracing::info_span!("job", trace_id = tracing::field::Empty);
                job.record("trace_id", JOB_TRACE);
                job.in_scope(|| tracing::warn!("in a trace of its own"));
            });
        });

        let lines = captured.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["message"], "outside any span");
        assert!(lines[0].get(TRACE_ID).is_none(), "{}", lines[0]);

        let queued = &lines[1];
        assert_eq!(queued[TRACE_ID], REQUEST_TRACE, "{queued}");
        assert_eq!(queued["message"], "job queued", "{queued}");
        assert_eq!(queued["lane"], "interactive", "{queued}");
        assert_eq!(queued["span"]["job_id"], "job_1", "{queued}");
        assert_eq!(queued["spans"][0][TRACE_ID], REQUEST_TRACE, "{queued}");

        assert_eq!(lines[2][TRACE_ID], JOB_TRACE, "{}", lines[2]);
    }
}
