//! Postgres access: the pool, migrations, and one module of queries per table.
//!
//! Static SQL uses `sqlx::query!`/`query_as!`, checked at compile time against the schema in
//! `migrations/` (the offline data lives in `.sqlx/`; `scripts/sqlx-prepare` refreshes it).
//! Functions here do no HTTP and no NATS: they take a pool or a connection, run SQL, and return
//! typed rows or outcomes the caller decides on.

pub mod conversations;
pub mod feedback;
pub mod jobs;
pub mod keys;
pub mod messages;
pub mod operators;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::settings::DatabaseSettings;

/// Every migration in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("CHATQ_DATABASE_URL is not a valid Postgres URL")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot reach Postgres at {url} (is it running? `scripts/up` starts one)")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create the database at {url}")]
    Create {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot apply the database migrations")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

/// Connects to the database, creating it first if it does not exist.
///
/// # Errors
/// The URL is invalid, the server is unreachable, or the database cannot be created.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let url = settings.url.expose_secret();
    let shown = settings.url_for_logs();
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::InvalidUrl)?
        .application_name("chatq");
    let exists = Postgres::database_exists(url)
        .await
        .map_err(|source| DbError::Connect {
            url: shown.clone(),
            source,
        })?;
    if !exists {
        tracing::info!(database = %shown, "creating the database");
        if let Err(source) = Postgres::create_database(url).await {
            // Another replica may have created it in the meantime.
            let created_elsewhere = Postgres::database_exists(url).await.unwrap_or(false);
            if !created_elsewhere {
                return Err(DbError::Create { url: shown, source });
            }
        }
    }
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|source| DbError::Connect { url: shown, source })
}

/// Applies pending migrations. Several replicas may call this at once: the migrator holds a
/// Postgres advisory lock while it runs, so exactly one applies each migration.
///
/// # Errors
/// A migration fails, or an applied migration was edited after it was released.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await.map_err(DbError::Migrate)
}

/// Whether `err` is a unique violation of the named constraint or index.
pub fn is_unique_violation(err: &sqlx::Error, constraint: &str) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() && db.constraint() == Some(constraint)
        }
        _ => false,
    }
}

/// Milliseconds between two instants, clamped to what an `integer` column holds.
pub fn millis_between(from: time::OffsetDateTime, to: time::OffsetDateTime) -> i32 {
    let ms = (to - from).whole_milliseconds().max(0);
    i32::try_from(ms).unwrap_or(i32::MAX)
}
