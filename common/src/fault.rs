//! Fault injection, in builds for the fault tests only (the `fault-injection` feature): points
//! in the code where a process ends on purpose, as a crash would there, once it has passed the
//! point a configured number of times (the `faults` settings). Nothing of this is compiled into
//! a release build.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::settings::FaultSettings;

/// The exit status of a process ended at a fault point.
pub const EXIT_CODE: i32 = 86;

/// Where a process can be made to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// In the ingress, between recording a job and publishing it (`CHATQ_FAULT_EXIT_BEFORE_PUBLISH`):
    /// the reconciler must then publish the recorded job.
    BeforePublish,
    /// In a worker, between committing a job's result and acknowledging its message
    /// (`CHATQ_FAULT_EXIT_AFTER_COMMIT`): the redelivery must find the job finished.
    AfterCommit,
    /// In the ingress, in the middle of validating a batch: its first page of lines recorded, not
    /// committed (`CHATQ_FAULT_EXIT_MID_VALIDATION`): another ingress must take the batch up.
    MidValidation,
}

static ARMED: OnceLock<FaultSettings> = OnceLock::new();
static BEFORE_PUBLISH: AtomicU64 = AtomicU64::new(0);
static AFTER_COMMIT: AtomicU64 = AtomicU64::new(0);
static MID_VALIDATION: AtomicU64 = AtomicU64::new(0);
static RECORD_ACKS: AtomicU64 = AtomicU64::new(0);

/// Sets this process's fault points from its settings (once; later calls change nothing).
pub fn arm(settings: &FaultSettings) {
    drop(ARMED.set(settings.clone()));
}

/// Whether the commit of a batch of recorded jobs should count as failed, as if its
/// acknowledgement were lost (`CHATQ_FAULT_LOSE_RECORD_ACK`: the first that many batches).
pub fn record_ack_lost() -> bool {
    let Some(settings) = ARMED.get() else {
        return false;
    };
    settings.lose_record_ack > 0
        && RECORD_ACKS.fetch_add(1, Ordering::SeqCst) < settings.lose_record_ack
}

/// Passes a fault point with this job (or batch); ends the process if this is the configured
/// pass.
pub fn reached(point: FaultPoint, job_id: impl std::fmt::Display) {
    let Some(settings) = ARMED.get() else { return };
    let (after, passes, name) = match point {
        FaultPoint::BeforePublish => (
            settings.exit_before_publish,
            &BEFORE_PUBLISH,
            "CHATQ_FAULT_EXIT_BEFORE_PUBLISH",
        ),
        FaultPoint::AfterCommit => (
            settings.exit_after_commit,
            &AFTER_COMMIT,
            "CHATQ_FAULT_EXIT_AFTER_COMMIT",
        ),
        FaultPoint::MidValidation => (
            settings.exit_mid_validation,
            &MID_VALIDATION,
            "CHATQ_FAULT_EXIT_MID_VALIDATION",
        ),
    };
    if after == 0 || passes.fetch_add(1, Ordering::SeqCst) + 1 < after {
        return;
    }
    tracing::error!(id = %job_id, "{name}: ending the process here, as a crash would");
    std::process::exit(EXIT_CODE);
}
