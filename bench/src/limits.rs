//! The machine's ceilings, measured in the same run as chatq's figures so that each figure can be
//! read as a fraction of what the machine allows at that moment:
//!
//! - HTTP: the same load generator against `GET /healthz` of the chatq ingress under test (the
//!   same process, router and middleware as the API, with a handler that does nothing);
//! - JetStream: publishing chatq's own job envelope, with `Nats-Msg-Id`, to a file-backed scratch
//!   stream in the run's namespace; once with each acknowledgement awaited before the next
//!   publish, once with 256 acknowledgements in flight;
//! - Postgres: single-row INSERT transactions of a 1 KB row into a scratch table of the scratch
//!   database, from 16 and from 64 connections.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::stream::{self, StorageType};
use bytes::Bytes;
use chatq_common::ids::JobId;
use chatq_common::job::{JobEnvelope, Lane};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use hyper::Method;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection};
use std::future::IntoFuture as _;
use tokio::task::JoinSet;

use super::args::GeneralArgs;
use super::cpu::{CpuUsage, CpuWatch};
use super::figures::{cpu_line, thousands};
use super::load::{Load, Requests};
use super::load_summary::LoadSummary;
use super::machine::LoadAverage;
use super::progress;
use super::stack::Stack;

/// Acknowledgements in flight in the pipelined JetStream probe.
pub const JETSTREAM_IN_FLIGHT: usize = 256;
/// Client counts of the Postgres probe.
pub const POSTGRES_CLIENTS: [usize; 2] = [16, 64];
/// Size of the Postgres probe's rows.
const ROW_BYTES: usize = 1024;

/// Every ceiling, measured once per run.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub http: LoadSummary,
    pub jetstream_sequential: RateProbe,
    pub jetstream_pipelined: RateProbe,
    pub postgres: Vec<RateProbe>,
}

/// Operations per second of one probe.
#[derive(Debug, Clone, Serialize)]
pub struct RateProbe {
    pub name: String,
    pub operations: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub errors: u64,
    pub load_average: LoadAverage,
    pub cpu: CpuUsage,
}

/// Measures every ceiling against a stack whose ingress is running.
///
/// # Errors
/// A probe cannot set up its scratch stream or table.
pub async fn measure(args: &GeneralArgs, stack: &Stack) -> anyhow::Result<Limits> {
    let duration = args.duration();
    let watch = CpuWatch::new(stack.processes(), &stack.scratch.database);
    let http = http_ceiling(args, stack, &watch).await?;
    let jetstream_sequential = jetstream(stack, &watch, duration, 1).await?;
    let jetstream_pipelined = jetstream(stack, &watch, duration, JETSTREAM_IN_FLIGHT).await?;
    let mut postgres = Vec::new();
    create_probe_table(stack).await?;
    for clients in POSTGRES_CLIENTS {
        postgres.push(postgres_inserts(stack, &watch, duration, clients).await?);
    }
    Ok(Limits {
        http,
        jetstream_sequential,
        jetstream_pipelined,
        postgres,
    })
}

async fn http_ceiling(
    args: &GeneralArgs,
    stack: &Stack,
    watch: &CpuWatch,
) -> anyhow::Result<LoadSummary> {
    let load = Load {
        label: "GET /healthz".into(),
        target: stack.ingress,
        method: Method::GET,
        requests: Requests::Repeat {
            path: hyper::Uri::from_static("/healthz"),
            duration: args.duration(),
        },
        body: Bytes::new(),
        api_key: None,
        connections: args.concurrency,
    };
    LoadSummary::measure(load, watch, 200).await
}

async fn jetstream(
    stack: &Stack,
    watch: &CpuWatch,
    duration: Duration,
    in_flight: usize,
) -> anyhow::Result<RateProbe> {
    let scratch = &stack.scratch;
    let name = format!("{}PROBE", scratch.stream_prefix());
    let subject = format!("{}.probe", scratch.namespace);
    let jetstream = &scratch.jetstream;
    // Configured like the job stream where it matters for the cost of a publish: file storage,
    // one replica, deduplication by message id over the same window.
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: StorageType::File,
        duplicate_window: chatq_common::topology::DUPLICATE_WINDOW,
        num_replicas: 1,
        ..Default::default()
    };
    jetstream.delete_stream(&name).await.ok();
    jetstream
        .create_stream(config)
        .await
        .context("cannot create the JetStream probe stream")?;
    let label = if in_flight == 1 {
        "JetStream publish, each ack awaited in turn".to_owned()
    } else {
        format!("JetStream publish, {in_flight} acks in flight")
    };
    let bar = progress::timed(&label, duration);
    let load_average = LoadAverage::now();
    let cpu_start = watch.sample();
    let started = Instant::now();
    let mut acks = FuturesUnordered::new();
    let (mut acked, mut errors) = (0u64, 0u64);
    let mut published = 0u64;
    loop {
        let open = started.elapsed() < duration;
        while open && acks.len() < in_flight {
            let job_id = JobId::new();
            let envelope = JobEnvelope {
                job_id,
                lane: Lane::Interactive,
                conversation_id: None,
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", job_id.to_string().as_str());
            let payload = serde_json::to_vec(&envelope)?;
            let publish = jetstream
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .context("cannot publish to the probe stream")?;
            acks.push(publish.into_future());
            published += 1;
            if published.is_multiple_of(1024) {
                bar.update(acked, started.elapsed());
            }
        }
        let Some(result) = acks.next().await else {
            break;
        };
        match result {
            Ok(_) => acked += 1,
            Err(_) => errors += 1,
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = watch.usage_since(&cpu_start);
    bar.finish(acked);
    jetstream.delete_stream(&name).await.ok();
    Ok(RateProbe {
        name: label,
        operations: acked,
        seconds,
        per_second: acked as f64 / seconds,
        errors,
        load_average,
        cpu,
    })
}

async fn create_probe_table(stack: &Stack) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE bench_insert_probe (
             id         uuid PRIMARY KEY,
             payload    text NOT NULL,
             created_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .execute(&stack.scratch.pool)
    .await
    .context("cannot create the Postgres probe table")?;
    Ok(())
}

async fn postgres_inserts(
    stack: &Stack,
    watch: &CpuWatch,
    duration: Duration,
    clients: usize,
) -> anyhow::Result<RateProbe> {
    // One connection per client, as pgbench does: no pool in between, so the figure is the
    // server's (over the same connection settings chatq uses, TLS included if the server offers
    // it), not the pool's.
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let connection = PgConnection::connect(&stack.scratch.database_url)
            .await
            .context("cannot connect the Postgres probe's clients")?;
        connections.push(connection);
    }
    let payload: Arc<str> = "x".repeat(ROW_BYTES).into();
    let label = format!("Postgres 1 KB INSERT, {clients} clients");
    let bar = progress::timed(&label, duration);
    let load_average = LoadAverage::now();
    let cpu_start = watch.sample();
    let started = Instant::now();
    let inserted = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for mut connection in connections {
        let payload = payload.clone();
        let (inserted, errors) = (inserted.clone(), errors.clone());
        tasks.spawn(async move {
            while started.elapsed() < duration {
                let result =
                    sqlx::query("INSERT INTO bench_insert_probe (id, payload) VALUES ($1, $2)")
                        .bind(uuid::Uuid::now_v7())
                        .bind(&*payload)
                        .execute(&mut connection)
                        .await;
                let counter = if result.is_ok() { &inserted } else { &errors };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // Kept open until the CPU is sampled: a backend that has exited is not counted.
            connection
        });
    }
    let mut finished = Vec::with_capacity(clients);
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                finished.push(joined.context("a Postgres probe client failed")?);
            }
            _ = ticks.tick() => bar.update(inserted.load(Ordering::Relaxed), started.elapsed()),
        }
    }
    let (inserted, errors) = (
        inserted.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    let seconds = started.elapsed().as_secs_f64();
    let cpu = watch.usage_since(&cpu_start);
    bar.finish(inserted);
    for connection in finished {
        connection.close().await.ok();
    }
    Ok(RateProbe {
        name: label,
        operations: inserted,
        seconds,
        per_second: inserted as f64 / seconds,
        errors,
        load_average,
        cpu,
    })
}

impl Limits {
    /// `rate` as a fraction of each ceiling: `0.13 × HTTP GET /healthz, ...`.
    pub fn ratios(&self, rate: f64) -> Vec<(String, f64)> {
        let ratio = |limit: f64| if limit > 0.0 { rate / limit } else { 0.0 };
        let http = format!("HTTP {} of the ingress", self.http.label);
        let mut all = vec![(http, ratio(self.http.per_second))];
        all.extend(
            self.probes()
                .map(|probe| (probe.name.clone(), ratio(probe.per_second))),
        );
        all
    }

    /// Every probe but the HTTP one, in the order they are reported.
    fn probes(&self) -> impl Iterator<Item = &RateProbe> {
        [&self.jetstream_sequential, &self.jetstream_pipelined]
            .into_iter()
            .chain(self.postgres.iter())
    }

    /// The limits' lines of the report.
    pub fn render(&self, out: &mut String) {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "\nLIMITS of this machine, measured in this run");
        let http = &self.http;
        let _ = writeln!(
            out,
            "  {:<52} {:>9}/s",
            format!(
                "HTTP: {} of the ingress, {} connections",
                http.label, http.connections
            ),
            thousands(http.per_second),
        );
        let _ = writeln!(
            out,
            "      latency ms: {}; answers: {}",
            http.latency_ms,
            http.answers()
        );
        let _ = writeln!(
            out,
            "      load {}; CPU {}",
            http.load_average,
            cpu_line(&http.cpu)
        );
        for probe in self.probes() {
            let errors = if probe.errors > 0 {
                format!(" ({} errors)", thousands(probe.errors as f64))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {:<52} {:>9}/s{errors}",
                probe.name,
                thousands(probe.per_second)
            );
            let _ = writeln!(
                out,
                "      load {}; CPU {}",
                probe.load_average,
                cpu_line(&probe.cpu)
            );
        }
    }
}

/// The lines every scenario prints under its rate: the ratios to the limits.
pub fn render_ratios(out: &mut String, rate: f64, limits: Option<&Limits>) {
    let Some(limits) = limits else {
        let _ = writeln!(out, "  ratio to limits: not measured (--no-limits)");
        return;
    };
    let _ = writeln!(out, "  as a fraction of the limits measured in this run:");
    for (name, ratio) in limits.ratios(rate) {
        let _ = writeln!(out, "    {ratio:>6.3} of {name}");
    }
}
