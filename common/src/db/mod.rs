//! Postgres access: the pool, migrations, and one module of queries per table.
//!
//! Static SQL uses `sqlx::query!`/`query_as!`, checked at compile time against the schema in
//! `migrations/` (the offline data lives in `.sqlx/`; `scripts/sqlx-prepare` refreshes it).
//! Functions here do no HTTP and no NATS: they take a pool or a connection, run SQL, and return
//! typed rows or outcomes the caller decides on.

pub mod batches;
pub mod conversations;
pub mod feedback;
pub mod files;
pub mod jobs;
pub mod keys;
pub mod messages;
pub mod operators;
mod pool;
pub mod quotas;
pub mod responses;
pub mod retention;
pub mod webhooks;

pub use self::pool::Db;

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::Postgres;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::settings::{DatabasePooler, DatabaseSettings};

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

/// Connects to the database, creating it first if it does not exist (directly connected only:
/// through a transaction pooler it must exist already).
///
/// # Errors
/// The URL is invalid, the server is unreachable, or the database cannot be created.
pub async fn connect(settings: &DatabaseSettings) -> Result<Db, DbError> {
    let url = settings.url.expose_secret();
    let shown = settings.url_for_logs();
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::InvalidUrl)?
        .application_name("chatq");
    let pool_options = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10));
    let connected = match settings.pooler {
        DatabasePooler::None => {
            create_if_missing(url, &shown).await?;
            pool_options
                .min_connections(1)
                .connect_with(options)
                .await
                .map(Db::direct)
        }
        DatabasePooler::Transaction => pool_options
            .connect_with(pool::through_pooler_options(options))
            .await
            .map(Db::through_pooler),
    };
    connected.map_err(|source| DbError::Connect { url: shown, source })
}

async fn create_if_missing(url: &str, shown: &str) -> Result<(), DbError> {
    let exists = Postgres::database_exists(url)
        .await
        .map_err(|source| DbError::Connect {
            url: shown.to_owned(),
            source,
        })?;
    if !exists {
        tracing::info!(database = %shown, "creating the database");
        if let Err(source) = Postgres::create_database(url).await {
            // Another replica may have created it in the meantime.
            let created_elsewhere = Postgres::database_exists(url).await.unwrap_or(false);
            if !created_elsewhere {
                return Err(DbError::Create {
                    url: shown.to_owned(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Applies pending migrations. Several replicas may call this at once, directly or through a
/// pooler in transaction mode (PgBouncer): everything happens in one transaction that first takes
/// a transaction-scoped advisory lock on this database, so the others wait, then find the work
/// done. (sqlx's own lock is session-scoped: through a transaction pooler its unlock can land on
/// another server connection than its lock, and the lock would stay held.) Postgres DDL is
/// transactional, so a failed migration leaves nothing half-applied.
///
/// # Errors
/// A migration fails, or an applied migration was edited after it was released.
pub async fn migrate(pool: &Db) -> Result<(), DbError> {
    let mut migrator = Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.set_locking(false);
    let mut tx = pool
        .begin()
        .await
        .map_err(|err| DbError::Migrate(err.into()))?;
    sqlx::query!(
        r#"SELECT true AS "locked!" FROM pg_advisory_xact_lock($1, hashtext(current_database()))"#,
        MIGRATION_LOCK_CLASS
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(|err| DbError::Migrate(err.into()))?;
    migrator
        .run_direct(None, &mut *tx, false)
        .await
        .map_err(DbError::Migrate)?;
    tx.commit()
        .await
        .map_err(|err| DbError::Migrate(err.into()))
}

/// The first key of the advisory lock `migrate` takes (the second is the database's name, hashed):
/// "cqmg" in ASCII, so it is recognisable in `pg_locks`.
const MIGRATION_LOCK_CLASS: i32 = 0x6371_6d67;

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
