//! Logging and tracing, set up once per process.
//!
//! Logs go to standard error, so standard output stays free for what a command prints on purpose
//! (`chatq keys create` prints the key alone there). `pretty` is for a person at a terminal,
//! `json` for a log pipeline.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::settings::LogFormat;

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
        LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    // An error only means a subscriber is already installed.
    drop(result);
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
