//! Watches the job queue: its depth per lane (for `/metrics` and `GET /v1/admin/queue`) and how
//! fast the workers drain it, which is what `Retry-After` on a 503 "queue full" is estimated from.
//!
//! Every [`SAMPLE_EVERY`] it reads the jobs stream and both lane consumers. The drain rate is the
//! number of jobs that left the stream (acknowledged) per second, smoothed; a full queue's
//! `Retry-After` is the time the workers take to free 5 % of it at that rate, between 1 and 60 s.
//!
//! It also remembers that the queue was found full: until a publish succeeds again, new jobs are
//! refused at once instead of being recorded, published, refused by the stream and taken back,
//! but for one request per drain interval, which tries. Under a spike that is most requests, and
//! shedding them costs next to nothing, while jobs are still accepted as fast as they drain.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chatq_common::job::Lane;
use chatq_common::metrics as names;
use chatq_common::topology::Topology;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Weight of the newest sample in the smoothed drain rate.
const SMOOTHING: f64 = 0.3;
/// Bounds on how long a full queue is taken to stay full without asking the stream again.
const FULL_HOLD_MIN: Duration = Duration::from_millis(5);
const FULL_HOLD_MAX: Duration = Duration::from_secs(1);

/// One lane's consumer, as last sampled.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LaneDepth {
    pub pending: u64,
    pub in_flight: u64,
    pub redelivered: u64,
    pub waiting_pulls: u64,
}

#[derive(Debug, Default)]
struct Sample {
    at: Option<Instant>,
    last_sequence: u64,
    messages: u64,
    drain_per_sec: f64,
    lanes: [LaneDepth; 2],
}

/// Shared view of the queue.
#[derive(Clone, Default)]
pub struct QueueMonitor {
    /// `queue_max_jobs`: what a full queue holds.
    max_jobs: i64,
    sample: Arc<Mutex<Sample>>,
    /// Until when new jobs are refused without trying (the stream said full just before).
    full_until: Arc<Mutex<Option<Instant>>>,
}

impl QueueMonitor {
    /// A monitor of a queue that holds at most `max_jobs`.
    pub fn new(max_jobs: i64) -> Self {
        Self {
            max_jobs,
            ..Self::default()
        }
    }

    /// `queue_max_jobs`: what a full queue holds.
    pub fn max_jobs(&self) -> i64 {
        self.max_jobs
    }

    /// Jobs per second the workers take out of the queue, smoothed.
    pub fn drain_per_sec(&self) -> f64 {
        self.sample
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain_per_sec
    }

    pub fn lane(&self, lane: Lane) -> LaneDepth {
        let sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        sample.lanes[lane_index(lane)]
    }

    /// How long a client refused with "queue full" should wait.
    pub fn retry_after(&self) -> Duration {
        let drain = self.drain_per_sec();
        if drain <= 0.01 {
            return Duration::from_secs(60);
        }
        let secs = (self.max_jobs.max(1) as f64 * 0.05) / drain;
        Duration::from_secs_f64(secs.clamp(1.0, 60.0))
    }

    /// The stream refused a job: the queue is full. New jobs are refused without trying until
    /// one has likely drained (one interval at the drain rate, within [`FULL_HOLD_MIN`] and
    /// [`FULL_HOLD_MAX`]); then one request at a time tries again, one per interval, until a
    /// publish succeeds ([`Self::note_room`]).
    pub fn note_full(&self) {
        *self
            .full_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + self.full_hold());
    }

    /// A publish succeeded: the queue has room.
    pub fn note_room(&self) {
        let mut full = self
            .full_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if full.is_some() {
            *full = None;
        }
    }

    /// Whether a new job should be refused without trying, because the queue was found full
    /// and no job has likely drained since. When the hold is over, the caller that finds it so
    /// is let through to try, and the others are held for another interval meanwhile.
    pub fn known_full(&self) -> bool {
        let mut full = self
            .full_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *full {
            None => false,
            Some(until) if now < until => true,
            Some(_) => {
                *full = Some(now + self.full_hold());
                false
            }
        }
    }

    fn full_hold(&self) -> Duration {
        let drain = self.drain_per_sec();
        if drain > 0.01 {
            Duration::from_secs_f64(1.0 / drain).clamp(FULL_HOLD_MIN, FULL_HOLD_MAX)
        } else {
            FULL_HOLD_MAX
        }
    }

    /// The answer to a job the full queue cannot take: 503 with `Retry-After`.
    pub fn refusal(&self) -> ApiError {
        metrics::counter!(names::JOBS_REJECTED, "reason" => "queue_full").increment(1);
        ApiError::Overloaded {
            message: "The job queue is full. Try again shortly.".into(),
            retry_after: self.retry_after(),
        }
    }

    /// Samples until `shutdown`.
    pub async fn run_until_stopped(
        self,
        jetstream: async_nats::jetstream::Context,
        topology: Topology,
        shutdown: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(err) = self.sample_once(&jetstream, &topology).await {
                tracing::debug!(error = %err, "cannot sample the job queue");
            }
        }
    }

    /// Reads the queue now.
    ///
    /// # Errors
    /// NATS is unreachable or the stream is missing.
    pub async fn sample_once(
        &self,
        jetstream: &async_nats::jetstream::Context,
        topology: &Topology,
    ) -> Result<(), async_nats::Error> {
        let mut stream = jetstream.get_stream(topology.jobs_stream()).await?;
        let state = stream.info().await?.state.clone();
        let mut lanes = [LaneDepth::default(); 2];
        for lane in Lane::ALL {
            // The interactive lane is its front and its overflow together.
            let mut depth = LaneDepth::default();
            for name in topology.lane_consumer_names(lane) {
                let mut consumer = stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await?;
                let info = consumer.info().await?;
                depth.pending += info.num_pending;
                depth.in_flight += info.num_ack_pending as u64;
                depth.redelivered += info.num_redelivered as u64;
                depth.waiting_pulls = depth.waiting_pulls.max(info.num_waiting as u64);
            }
            metrics::gauge!(names::QUEUE_PENDING, "lane" => lane.as_str())
                .set(depth.pending as f64);
            metrics::gauge!(names::QUEUE_IN_FLIGHT, "lane" => lane.as_str())
                .set(depth.in_flight as f64);
            metrics::gauge!(names::QUEUE_REDELIVERED, "lane" => lane.as_str())
                .set(depth.redelivered as f64);
            lanes[lane_index(lane)] = depth;
        }
        let now = Instant::now();
        let mut sample = self.sample.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = sample.at {
            let elapsed = now.duration_since(at).as_secs_f64().max(1e-3);
            let published = state.last_sequence.saturating_sub(sample.last_sequence) as f64;
            let grown = state.messages as f64 - sample.messages as f64;
            let drained = (published - grown).max(0.0) / elapsed;
            sample.drain_per_sec = SMOOTHING * drained + (1.0 - SMOOTHING) * sample.drain_per_sec;
        }
        sample.at = Some(now);
        sample.last_sequence = state.last_sequence;
        sample.messages = state.messages;
        sample.lanes = lanes;
        Ok(())
    }
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::Interactive => 0,
        Lane::Batch => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_until_it_has_room_letting_one_request_try_per_interval() {
        let monitor = QueueMonitor::new(1000);
        assert!(!monitor.known_full());
        monitor.note_full();
        assert!(monitor.known_full());
        assert!(monitor.known_full());
        // The hold is over: the first caller tries, the next are held for another interval.
        *monitor
            .full_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now().checked_sub(FULL_HOLD_MIN);
        assert!(!monitor.known_full());
        assert!(monitor.known_full());
        // Its publish went through: everyone may try again.
        monitor.note_room();
        assert!(!monitor.known_full());
        assert!(!monitor.known_full());
    }
}
