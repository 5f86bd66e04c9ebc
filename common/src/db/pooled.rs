//! Connections through a pooler in transaction mode (PgBouncer `pool_mode = transaction`).
//!
//! Such a pooler lends a Postgres session to a client for one transaction only; outside a
//! transaction, each statement may run in another session. sqlx is not built for that: it
//! prepares a statement (Parse, then Sync) before it runs it (Bind, Execute, Sync), and between
//! the two syncs the pooler may switch sessions; its statement cache would name statements that
//! exist in another session; and the names it gives statements it does not cache collide with
//! those another client left in the same session. So, through such a pooler:
//!
//! - every time a connection is lent out of the pool, it starts a transaction, in a session it
//!   first clears of prepared statements (`DEALLOCATE ALL; BEGIN`), and when the connection comes
//!   back it commits (an error earlier in it has already rolled it back). Whatever the code does
//!   with one connection thus runs in one session: a `pool.begin()` transaction is that same
//!   transaction (its `BEGIN` only warns, and Postgres warnings are not reported on these
//!   connections);
//! - the statement cache is off, so every statement is prepared in the transaction that runs it;
//! - the pool keeps no idle connection open for nothing (an idle one holds no transaction, but a
//!   new one is handed out in a transaction at once).
//!
//! This is right only for code that does its work in explicit transactions, whose commit the
//! caller awaits: [`super::migrate`] (one transaction, under a transaction-scoped lock) and
//! creating keys. A lone statement would be committed only when its connection goes back to the
//! pool, after the caller has moved on (sqlx runs that hook in the background), so a read that
//! follows may not see it yet: the ingress and workers, which run lone statements everywhere,
//! refuse this mode (`src/roles.rs`).

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor as _, PgConnection};

/// What a connection lent out runs first: a clean session, in a transaction.
const LEND: &str = "DEALLOCATE ALL; SET client_min_messages = error; BEGIN";

pub(super) fn connect_options(options: PgConnectOptions) -> PgConnectOptions {
    options.statement_cache_capacity(0)
}

pub(super) fn options(pool: PgPoolOptions) -> PgPoolOptions {
    pool.min_connections(0)
        .after_connect(|conn, _| Box::pin(async move { lend(conn).await }))
        .before_acquire(|conn, _| Box::pin(async move { lend(conn).await.map(|()| true) }))
        .after_release(|conn, _| {
            Box::pin(async move {
                // A connection that cannot commit is closed rather than lent again.
                Ok(conn.execute("COMMIT").await.is_ok())
            })
        })
}

async fn lend(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    conn.execute(LEND).await.map(drop)
}
