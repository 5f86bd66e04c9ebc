//! [`Db`], the pool every query of chatq goes through: straight to Postgres, or through a pooler
//! in transaction mode (PgBouncer's `pool_mode = transaction`).
//!
//! Such a pooler lends a Postgres session to a client for one transaction only: outside a
//! transaction, each exchange may reach another session. sqlx is not built for that. It prepares
//! a statement (Parse, Describe, Sync) and then runs it (Bind, Execute, Sync), and between the
//! two syncs the pooler may switch sessions; and its statement cache names statements that exist
//! only in the session that prepared them. So, through such a pooler:
//!
//! - a statement run on its own is run in a transaction of its own, committed before its result
//!   is handed back: the pooler keeps one session for the whole of it, and what the statement
//!   wrote is visible to whatever the caller does next, as it would be straight to Postgres;
//! - every transaction starts by dropping the prepared statements its session holds
//!   (`BEGIN; DEALLOCATE ALL`, one exchange), and the statement cache is off: a statement is
//!   prepared in the transaction that runs it, under a name (`sqlx_s_N`, counted per chatq
//!   connection) that nothing else in the session can hold by then;
//! - nothing is session-scoped: advisory locks are transaction-scoped (`pg_advisory_xact_lock`),
//!   and no setting is changed for a session.
//!
//! Straight to Postgres, [`Db`] is the pool itself: every call is passed on unchanged.

use std::fmt;

use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use sqlx::postgres::{PgConnectOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Either, Execute, Executor, PgPool, Postgres, Transaction};

/// How a transaction starts through a transaction pooler: in the session lent for it, cleared of
/// prepared statements left by whoever had the session before.
const BEGIN_THROUGH_POOLER: &str = "BEGIN; DEALLOCATE ALL";

/// The connection pool, and whether it reaches Postgres through a transaction pooler.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    through_pooler: bool,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("through_pooler", &self.through_pooler)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// A pool connected straight to Postgres (or through a pooler in session mode).
    pub fn direct(pool: PgPool) -> Self {
        Self {
            pool,
            through_pooler: false,
        }
    }

    /// A pool connected through a pooler in transaction mode, made with
    /// [`through_pooler_options`].
    pub(super) fn through_pooler(pool: PgPool) -> Self {
        Self {
            pool,
            through_pooler: true,
        }
    }

    /// Starts a transaction.
    ///
    /// # Errors
    /// No connection could be had, or `BEGIN` failed.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        if self.through_pooler {
            self.pool.begin_with(BEGIN_THROUGH_POOLER).await
        } else {
            self.pool.begin().await
        }
    }

    /// Closes every connection, waiting for those in use to come back.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How connections through a transaction pooler are made: without the statement cache, so every
/// statement is prepared in the transaction that runs it.
pub(super) fn through_pooler_options(options: PgConnectOptions) -> PgConnectOptions {
    options.statement_cache_capacity(0)
}

type Item = Result<Either<PgQueryResult, PgRow>, sqlx::Error>;

impl<'c> Executor<'c> for &'c Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Item>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.through_pooler {
            return (&self.pool).fetch_many(query);
        }
        let db = self.clone();
        stream::once(async move {
            let mut tx = db.begin().await?;
            let items: Vec<Item> = (&mut *tx).fetch_many(query).collect().await;
            // A failed statement has ended the transaction: dropping it rolls back.
            if items.iter().all(Result::is_ok) {
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(stream::iter(items))
        })
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        if !self.through_pooler {
            return (&self.pool).fetch_optional(query);
        }
        let db = self.clone();
        Box::pin(async move {
            let mut tx = db.begin().await?;
            let row = (&mut *tx).fetch_optional(query).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    #[doc(hidden)]
    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).describe(sql)
    }
}
