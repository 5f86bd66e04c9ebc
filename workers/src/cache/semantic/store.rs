//! The semantic tier's table, `semantic_replies`: one row per stored reply, with its
//! neighbourhood, the exact key it is cached under, the embedding of its last user message
//! (a pgvector `vector`) and the reply itself.
//!
//! # Why the workers create it, not a migration
//!
//! The table needs the pgvector extension, and whether a server has pgvector is a property of
//! the server that changes over time, while a migration runs once per database. A migration
//! would either fail on every server without pgvector (most deployments, which leave the
//! semantic cache off) or, guarded by `pg_available_extensions`, skip the table for good on a
//! database migrated before pgvector was installed. So the table belongs to the setting: a
//! worker started with `cache_semantic` on creates the extension and the table if they are
//! missing (idempotently, one worker at a time under an advisory lock), and says plainly what to
//! install when the extension cannot be created. Nothing else in chatq reads the table.
//!
//! The queries are built at run time (`sqlx::query`), since the offline query data is prepared
//! against the migrations alone, which do not have this table.
//!
//! The nearest neighbour is looked up within one neighbourhood (an equality on an indexed
//! column), by exact cosine distance: a neighbourhood holds the few phrasings of one question
//! that were asked within the TTL, so there is no need for an approximate index, and the vectors
//! need no fixed dimension (every row of a neighbourhood comes from the same embedding model).

use std::time::Duration;

use anyhow::Context as _;
use sqlx::Row as _;

use chatq_common::db::Db;

use super::super::entry::CachedReply;
use super::super::key::CacheKey;

/// Taken by the worker that creates the extension and table, so workers starting together do
/// not race on `CREATE EXTENSION` ("chatqsem" in ASCII).
const CREATE_LOCK: i64 = 0x6368_6174_7173_656d;

/// Most expired rows one store deletes, so the table stays bounded by the TTL without a sweep
/// of its own and without a long delete in a job's path.
const PURGE_BATCH: i64 = 100;

/// The table, in the database of `pool`.
#[derive(Debug, Clone)]
pub struct SemanticStore {
    pool: Db,
    ttl: Duration,
}

/// The nearest stored reply of a neighbourhood.
#[derive(Debug)]
pub struct Nearest {
    /// The exact key the reply is cached under.
    pub key: CacheKey,
    pub reply: CachedReply,
    /// Cosine similarity of the two embeddings, from -1 to 1.
    pub similarity: f64,
}

impl SemanticStore {
    /// Creates the pgvector extension and the table if they are missing.
    ///
    /// # Errors
    /// The extension cannot be created (pgvector is not installed on the server, or the role may
    /// not create it), or the table cannot.
    pub async fn open(pool: Db, ttl: Duration) -> anyhow::Result<Self> {
        let mut tx = pool
            .begin()
            .await
            .context("cannot prepare the semantic cache's table")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CREATE_LOCK)
            .execute(&mut *tx)
            .await
            .context("cannot prepare the semantic cache's table")?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
            .execute(&mut *tx)
            .await
            .context(
                "cannot create the pgvector extension, which the semantic reply cache \
                 (CHATQ_CACHE_SEMANTIC=true) needs: install pgvector on the Postgres server (on \
                 Debian or Ubuntu the package postgresql-<major>-pgvector, such as \
                 postgresql-15-pgvector for Postgres 15), or have a superuser run CREATE EXTENSION vector in chatq's database; or turn the \
                 semantic cache off",
            )?;
        for statement in [
            "CREATE TABLE IF NOT EXISTS semantic_replies (
                 id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 neighbourhood bytea NOT NULL,
                 reply_key     bytea NOT NULL,
                 embedding     vector NOT NULL,
                 reply         jsonb NOT NULL,
                 created_at    timestamptz NOT NULL DEFAULT now()
             )",
            "CREATE INDEX IF NOT EXISTS semantic_replies_neighbourhood
                 ON semantic_replies (neighbourhood, created_at)",
            "CREATE INDEX IF NOT EXISTS semantic_replies_reply_key ON semantic_replies (reply_key)",
            "CREATE INDEX IF NOT EXISTS semantic_replies_created_at ON semantic_replies (created_at)",
        ] {
            sqlx::query(statement)
                .execute(&mut *tx)
                .await
                .context("cannot create the semantic cache's table")?;
        }
        tx.commit()
            .await
            .context("cannot create the semantic cache's table")?;
        Ok(Self { pool, ttl })
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// The reply of `neighbourhood` stored within the TTL whose embedding is nearest `embedding`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn nearest(
        &self,
        neighbourhood: CacheKey,
        embedding: &[f32],
    ) -> Result<Option<Nearest>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT reply_key, reply, 1 - (embedding <=> $2::text::vector) AS similarity
               FROM semantic_replies
              WHERE neighbourhood = $1 AND created_at > now() - make_interval(secs => $3)
              ORDER BY embedding <=> $2::text::vector
              LIMIT 1",
        )
        .bind(neighbourhood.bytes().as_slice())
        .bind(vector_text(embedding))
        .bind(self.ttl_secs())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let key: Vec<u8> = row.try_get("reply_key")?;
        let reply: serde_json::Value = row.try_get("reply")?;
        let similarity: f64 = row.try_get("similarity")?;
        let (Some(key), Ok(reply)) = (CacheKey::from_slice(&key), serde_json::from_value(reply))
        else {
            tracing::warn!("a semantic cache row cannot be read; ignoring it");
            return Ok(None);
        };
        Ok(Some(Nearest {
            key,
            reply,
            similarity,
        }))
    }

    /// Stores `reply`, cached under `key`, in `neighbourhood` with `embedding`; and deletes a few
    /// rows that outlived the TTL.
    ///
    /// # Errors
    /// Database errors.
    pub async fn insert(
        &self,
        neighbourhood: CacheKey,
        embedding: &[f32],
        key: CacheKey,
        reply: &CachedReply,
    ) -> Result<(), sqlx::Error> {
        let reply = serde_json::to_value(reply).unwrap_or(serde_json::Value::Null);
        sqlx::query(
            "INSERT INTO semantic_replies (neighbourhood, reply_key, embedding, reply)
             VALUES ($1, $2, $3::text::vector, $4)",
        )
        .bind(neighbourhood.bytes().as_slice())
        .bind(key.bytes().as_slice())
        .bind(vector_text(embedding))
        .bind(reply)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM semantic_replies
              WHERE id IN (SELECT id FROM semantic_replies
                            WHERE created_at <= now() - make_interval(secs => $1)
                            LIMIT $2)",
        )
        .bind(self.ttl_secs())
        .bind(PURGE_BATCH)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes every row of the reply cached under `key` (negative feedback on it).
    ///
    /// # Errors
    /// Database errors.
    pub async fn delete(&self, key: CacheKey) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM semantic_replies WHERE reply_key = $1")
            .bind(key.bytes().as_slice())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// A vector in pgvector's text form, `[0.1,0.2,…]` (bound as text and cast, so no client-side
/// type is needed).
fn vector_text(embedding: &[f32]) -> String {
    let numbers: Vec<String> = embedding.iter().map(f32::to_string).collect();
    format!("[{}]", numbers.join(","))
}
