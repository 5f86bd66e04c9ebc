//! Every NATS name and setting chatq uses, in one place.
//!
//! All names start with the namespace (`CHATQ_NAMESPACE`, default `chatq`), so several
//! deployments or test runs share one NATS server without seeing each other. With the default
//! namespace:
//!
//! | what | name | kind |
//! |---|---|---|
//! | job queue | stream `CHATQ_JOBS`, subjects `chatq.jobs.interactive`, `chatq.jobs.overflow`, `chatq.jobs.batch` | work-queue, file, `discard: new` per subject |
//! | lane consumers | `chatq_interactive`, `chatq_overflow` (interactive jobs of tenants over their fair share), `chatq_batch` on `CHATQ_JOBS` | durable pull, explicit ack |
//! | dead letters | stream `CHATQ_DEAD`, subjects `chatq.dead.<lane>` | limits, file, kept 30 days |
//! | job events | stream `CHATQ_EVENTS`, subjects `chatq.events.<job id>` | limits, file, kept `events_retention_secs` |
//! | cancel requests | subjects `chatq.control.cancel.<job id>` | core NATS, every worker listens |
//! | worker heartbeats | KV bucket `chatq_workers` | memory, keys expire after 3 heartbeats |
//! | cached replies | KV bucket `chatq_cache` | file, keys expire after `cache_ttl_secs` |
//! | calls under way | KV bucket `chatq_cache_flights` | memory, keys expire 15 s after their last refresh |
//! | cache evictions | subject `chatq.control.cache.evict` | core NATS, every worker listens |
//!
//! [`Topology::ensure`] creates or updates all of it and is safe to run from every process at
//! start-up, concurrently. `nats/README.md` documents each value and why it was chosen.

use std::time::Duration;

mod buckets;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::ids::JobId;
use crate::job::Lane;
use crate::settings::{Namespace, NatsSettings};

/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished duplicate. The design asks
/// for at least two minutes: longer than a publish retry or a reconciler pass can take.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long dead letters are kept for inspection.
pub const DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Largest job envelope; envelopes hold ids only, so this is generous.
pub const MAX_ENVELOPE_BYTES: i32 = 4096;

/// Names and configurations derived from the namespace and the settings.
#[derive(Debug, Clone)]
pub struct Topology {
    namespace: String,
    queue_max_jobs: i64,
    ack_wait: Duration,
    max_deliver: i64,
    max_ack_pending: i64,
    replicas: usize,
    events_max_age: Duration,
    events_max_bytes: i64,
    heartbeat: Duration,
}

impl Topology {
    pub fn new(settings: &NatsSettings) -> Self {
        Self {
            namespace: settings.namespace.as_str().to_owned(),
            queue_max_jobs: settings.queue_max_jobs,
            ack_wait: Duration::from_secs(settings.job_ack_wait_secs.max(1)),
            // chatq counts attempts in Postgres and gives up after `job_max_attempts`; this is the
            // server-side backstop, with room for deliveries that were handed back, not attempted.
            max_deliver: i64::from(settings.job_max_attempts) * 2 + 3,
            max_ack_pending: settings.queue_max_in_flight,
            replicas: settings.stream_replicas.max(1),
            events_max_age: Duration::from_secs(settings.events_retention_secs.max(1)),
            events_max_bytes: settings.events_max_bytes,
            heartbeat: Duration::from_secs(settings.worker_heartbeat_secs.max(1)),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Builds a topology for a namespace with default limits (tools and tests).
    pub fn for_namespace(namespace: &Namespace) -> Self {
        let settings = NatsSettings {
            namespace: namespace.clone(),
            ..crate::Settings::default().nats
        };
        Self::new(&settings)
    }

    pub fn jobs_stream(&self) -> String {
        format!("{}_JOBS", self.namespace.to_ascii_uppercase())
    }

    pub fn dead_letter_stream(&self) -> String {
        format!("{}_DEAD", self.namespace.to_ascii_uppercase())
    }

    pub fn events_stream(&self) -> String {
        format!("{}_EVENTS", self.namespace.to_ascii_uppercase())
    }

    /// `chatq.jobs.interactive`.
    pub fn job_subject(&self, lane: Lane) -> String {
        format!("{}.jobs.{}", self.namespace, lane.as_str())
    }

    /// `chatq.jobs.overflow`: interactive jobs of tenants that had their fair share queued
    /// already (see [`crate::queue::Placement`]).
    pub fn overflow_subject(&self) -> String {
        format!("{}.jobs.overflow", self.namespace)
    }

    /// `chatq.dead.interactive`.
    pub fn dead_letter_subject(&self, lane: Lane) -> String {
        format!("{}.dead.{}", self.namespace, lane.as_str())
    }

    /// `chatq_interactive`: the durable pull consumer of one lane.
    pub fn consumer_name(&self, lane: Lane) -> String {
        format!("{}_{}", self.namespace, lane.as_str())
    }

    /// The durable consumers of a lane, in the order workers take from them: the interactive
    /// lane's front, then its overflow; the batch lane's one.
    pub fn lane_consumer_names(&self, lane: Lane) -> Vec<String> {
        match lane {
            Lane::Interactive => vec![
                self.consumer_name(lane),
                format!("{}_overflow", self.namespace),
            ],
            Lane::Batch => vec![self.consumer_name(lane)],
        }
    }

    /// `chatq.events.job_…`: where a job's events are published.
    pub fn events_subject(&self, job: JobId) -> String {
        format!("{}.events.{job}", self.namespace)
    }

    /// `chatq.events.*`: every job's events, as one subscription of an ingress receives them.
    pub fn all_events_subject(&self) -> String {
        format!("{}.events.*", self.namespace)
    }

    /// The job whose events are published on `subject` (see [`Self::events_subject`]).
    pub fn job_of_events_subject(&self, subject: &str) -> Option<JobId> {
        subject
            .strip_prefix(self.namespace.as_str())?
            .strip_prefix(".events.")?
            .parse()
            .ok()
    }

    /// `chatq.control.cancel.job_…`: tells whichever worker runs the job to stop it.
    pub fn cancel_subject(&self, job: JobId) -> String {
        format!("{}.control.cancel.{job}", self.namespace)
    }

    /// `chatq.control.cancel.*`: every worker subscribes to all cancel requests.
    pub fn cancel_subjects(&self) -> String {
        format!("{}.control.cancel.*", self.namespace)
    }

    /// `chatq.control.keys.revoked`: `chatq keys revoke` tells every ingress to forget the keys
    /// it has cached, so a revoked key stops working at once rather than when its cache entry
    /// expires.
    pub fn key_revocations_subject(&self) -> String {
        format!("{}.control.keys.revoked", self.namespace)
    }

    /// Deliveries of one job message before JetStream stops delivering it.
    pub fn max_deliver(&self) -> i64 {
        self.max_deliver
    }

    pub fn ack_wait(&self) -> Duration {
        self.ack_wait
    }

    pub fn jobs_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.jobs_stream(),
            description: Some("chatq jobs waiting for a worker".into()),
            subjects: Lane::ALL
                .iter()
                .map(|lane| self.job_subject(*lane))
                .chain([self.overflow_subject()])
                .collect(),
            // Each job is delivered to one worker and removed once acknowledged.
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            // A full queue rejects new jobs instead of dropping old ones: back-pressure at the door.
            discard: DiscardPolicy::New,
            // Each lane (one subject each) holds up to `queue_max_jobs` of its own: a large batch
            // fills the batch lane and waits in Postgres for room there, and never takes the
            // places interactive jobs are admitted to. The interactive overflow has as many.
            max_messages_per_subject: self.queue_max_jobs,
            discard_new_per_subject: true,
            max_messages: self
                .queue_max_jobs
                .saturating_mul(Lane::ALL.len() as i64 + 1),
            max_message_size: MAX_ENVELOPE_BYTES,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    pub fn dead_letter_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.dead_letter_stream(),
            description: Some("chatq jobs that failed for good, kept for inspection".into()),
            subjects: vec![format!("{}.dead.>", self.namespace)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age: DEAD_LETTER_MAX_AGE,
            max_messages: 1_000_000,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// Job events are published with core NATS (a worker never waits on them) and captured by this
    /// stream, so a late or reconnecting subscriber can replay a job's events for a while; Postgres
    /// keeps the durable result.
    pub fn events_stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.events_stream(),
            description: Some("chatq job events, replayable for a while".into()),
            subjects: vec![format!("{}.events.>", self.namespace)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            max_age: self.events_max_age,
            max_bytes: self.events_max_bytes,
            // Events carry their own ids; there is nothing to deduplicate.
            duplicate_window: Duration::from_secs(1),
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The configurations of a lane's consumers, as [`Topology::lane_consumer_names`] names them.
    pub fn lane_consumer_configs(&self, lane: Lane) -> Vec<pull::Config> {
        let mut configs = vec![self.consumer_config(lane)];
        if lane == Lane::Interactive {
            configs.push(pull::Config {
                durable_name: self.lane_consumer_names(lane).pop(),
                description: Some(
                    "chatq workers pulling interactive jobs of tenants over their fair share"
                        .into(),
                ),
                filter_subject: self.overflow_subject(),
                ..self.consumer_config(lane)
            });
        }
        configs
    }

    pub fn consumer_config(&self, lane: Lane) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer_name(lane)),
            description: Some(format!("chatq workers pulling {lane} jobs")),
            filter_subject: self.job_subject(lane),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_deliver: self.max_deliver,
            max_ack_pending: self.max_ack_pending,
            // Pull requests of every worker in the fleet at once.
            max_waiting: 4096,
            ..Default::default()
        }
    }

    /// Creates or updates the streams and consumers. Idempotent and safe to race.
    ///
    /// # Errors
    /// NATS is unreachable, JetStream is disabled, or an existing stream has a configuration that
    /// cannot be changed in place (for example another retention policy).
    pub async fn ensure(&self, js: &Context) -> Result<(), TopologyError> {
        let jobs = ensure_stream(js, self.jobs_stream_config()).await?;
        ensure_stream(js, self.dead_letter_stream_config()).await?;
        ensure_stream(js, self.events_stream_config()).await?;
        ensure_stream(js, self.workers_bucket_stream_config()).await?;
        ensure_stream(js, self.leases_bucket_stream_config()).await?;
        for config in Lane::ALL
            .into_iter()
            .flat_map(|lane| self.lane_consumer_configs(lane))
        {
            let name = config.durable_name.clone().unwrap_or_default();
            jobs.create_consumer(config)
                .await
                .map_err(|source| TopologyError::Consumer { name, source })?;
        }
        Ok(())
    }

    /// The pull consumer of one lane.
    ///
    /// # Errors
    /// The stream or consumer does not exist (run [`Topology::ensure`] first) or NATS is down.
    pub async fn lane_consumer(
        &self,
        js: &Context,
        lane: Lane,
    ) -> Result<consumer::PullConsumer, async_nats::Error> {
        self.named_consumer(js, &self.consumer_name(lane)).await
    }

    /// A pull consumer of the jobs stream, by name ([`Topology::lane_consumer_names`]).
    ///
    /// # Errors
    /// As [`Topology::lane_consumer`].
    pub async fn named_consumer(
        &self,
        js: &Context,
        name: &str,
    ) -> Result<consumer::PullConsumer, async_nats::Error> {
        let stream = js.get_stream(self.jobs_stream()).await?;
        stream.get_consumer(name).await
    }
}

/// Creates a stream, or brings an existing one to `config`.
async fn ensure_stream(
    js: &Context,
    config: stream::Config,
) -> Result<stream::Stream, TopologyError> {
    let name = config.name.clone();
    let stream_error = |source: async_nats::Error| TopologyError::Stream {
        name: name.clone(),
        source,
    };
    match js.create_stream(config.clone()).await {
        Ok(stream) => Ok(stream),
        Err(err)
            if matches!(
                err.kind(),
                jetstream::context::CreateStreamErrorKind::JetStream(_)
            ) =>
        {
            // Exists with another configuration: update what can be updated in place.
            js.update_stream(config)
                .await
                .map_err(|err| stream_error(err.into()))?;
            js.get_stream(&name)
                .await
                .map_err(|err| stream_error(err.into()))
        }
        Err(err) => Err(stream_error(err.into())),
    }
}

/// Why the NATS topology could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "cannot create or update the JetStream stream {name} (is JetStream enabled on the server?)"
    )]
    Stream {
        name: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot create or update the JetStream consumer {name}")]
    Consumer {
        name: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SettingValue as _;

    #[test]
    fn a_job_is_read_back_from_its_events_subject_and_only_in_its_namespace() {
        let topology = Topology::for_namespace(&Namespace::parse_setting("chatq").unwrap());
        let other = Topology::for_namespace(&Namespace::parse_setting("chatqx").unwrap());
        let job = JobId::new();
        let subject = topology.events_subject(job);
        assert_eq!(topology.job_of_events_subject(&subject), Some(job));
        assert_eq!(other.job_of_events_subject(&subject), None);
        assert_eq!(
            topology.job_of_events_subject("chatq.events.nonsense"),
            None
        );
        assert_eq!(
            topology.job_of_events_subject(&other.events_subject(job)),
            None
        );
    }
}
