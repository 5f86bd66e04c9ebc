//! The scratch resources of one system under test: a Postgres database (`chatq_bench_<random>`)
//! and a NATS namespace (`cqbench<random>`) of its own, created at the start and removed at the
//! end, so a run neither sees nor leaves anything on the shared servers.
//!
//! A run that is killed outright leaves them behind; they are easy to spot by their prefix
//! (`DROP DATABASE chatq_bench_…`, `nats stream rm CQBENCH…_JOBS`).

use anyhow::Context as _;
use async_nats::jetstream;
use chatq_common::db::Db;
use chatq_common::settings::{DatabasePooler, DatabaseSettings};
use chatq_common::settings::{Namespace, SettingValue as _};
use chatq_common::topology::Topology;
use futures::TryStreamExt as _;
use secrecy::SecretString;
use sqlx::migrate::MigrateDatabase as _;

use super::services::Services;

/// Connections the bench itself keeps to the scratch database (fixtures, backlogs of jobs queued
/// without HTTP, polling). Idle ones cost nothing, and CPU is counted per backend only when busy.
const BENCH_POOL_SIZE: u32 = 16;

pub struct Scratch {
    pub database: String,
    /// The scratch database's URL, for the chatq processes.
    pub database_url: String,
    /// The bench's own connections to it.
    pub pool: Db,
    pub namespace: Namespace,
    pub topology: Topology,
    pub nats: async_nats::Client,
    pub jetstream: jetstream::Context,
}

impl Scratch {
    /// Creates and migrates a fresh database and picks a fresh namespace.
    ///
    /// # Errors
    /// Postgres or NATS cannot be reached, or the database cannot be created.
    pub async fn create(services: &Services) -> anyhow::Result<Self> {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let database = format!("chatq_bench_{suffix}");
        let database_url = with_database(&services.postgres_url, &database)?;
        let settings = DatabaseSettings {
            url: SecretString::from(database_url.clone()),
            max_connections: BENCH_POOL_SIZE,
            pooler: DatabasePooler::None,
        };
        let pool = chatq_common::db::connect(&settings).await?;
        chatq_common::db::migrate(&pool).await?;
        let namespace = Namespace::parse_setting(&format!("cqbench{suffix}"))
            .map_err(|reason| anyhow::anyhow!("bad scratch namespace: {reason}"))?;
        let topology = Topology::for_namespace(&namespace);
        let nats = chatq_common::nats::connect(&services.nats_servers()?, "bench").await?;
        let jetstream = jetstream::new(nats.clone());
        Ok(Self {
            database,
            database_url,
            pool,
            namespace,
            topology,
            nats,
            jetstream,
        })
    }

    /// The prefix of every stream name in this namespace (`CQBENCH…_`).
    pub fn stream_prefix(&self) -> String {
        format!("{}_", self.namespace.as_str().to_ascii_uppercase())
    }

    /// Messages in the namespace's job stream: every job published and not yet acknowledged.
    ///
    /// # Errors
    /// The stream cannot be found or read.
    pub async fn jobs_in_stream(&self) -> anyhow::Result<u64> {
        let mut stream = self
            .jetstream
            .get_stream(self.topology.jobs_stream())
            .await
            .context("cannot find the job stream")?;
        let info = stream
            .info()
            .await
            .context("cannot read the job stream's state")?;
        Ok(info.state.messages)
    }

    /// Deletes every stream of the namespace (its job, dead-letter and event streams, and the
    /// stream behind its workers bucket) and drops the database (disconnecting whoever is still
    /// connected to it).
    ///
    /// # Errors
    /// NATS or Postgres refused; the error names what was left behind.
    pub async fn remove(self) -> anyhow::Result<()> {
        let prefix = self.stream_prefix();
        let workers_bucket = format!("KV_{}_workers", self.namespace.as_str());
        let streams: Vec<String> = self
            .jetstream
            .stream_names()
            .try_collect()
            .await
            .context("cannot list JetStream streams")?;
        let mut leftover = Vec::new();
        for name in streams
            .into_iter()
            .filter(|name| name.starts_with(&prefix) || *name == workers_bucket)
        {
            if self.jetstream.delete_stream(&name).await.is_err() {
                leftover.push(name);
            }
        }
        self.pool.close().await;
        let dropped = sqlx::Postgres::force_drop_database(&self.database_url).await;
        self.nats.flush().await.ok();
        anyhow::ensure!(
            leftover.is_empty(),
            "could not delete the streams {leftover:?}"
        );
        dropped.with_context(|| format!("could not drop the database {}", self.database))
    }
}

/// The same server URL with another database name (the path), keeping any query string.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|at| at + 3)
        .with_context(|| "the Postgres URL must look like postgres://user@host:port/database")?;
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |at| authority_start + at);
    let query = query.map(|query| format!("?{query}")).unwrap_or_default();
    Ok(format!("{}/{database}{query}", &base[..path_start]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_swapped_and_the_rest_is_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@db/app?sslmode=disable", "x").unwrap(),
            "postgres://u:p@db/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://db:5432", "x").unwrap(),
            "postgres://db:5432/x"
        );
        assert!(with_database("db:5432", "x").is_err());
    }
}
