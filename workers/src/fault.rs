//! Fault injection, for the fault tests only: hooks that end the process at a chosen point, as a
//! crash would there.

use std::sync::atomic::{AtomicU64, Ordering};

use chatq_common::Settings;
use chatq_common::ids::JobId;

/// Results committed by this process, counted by [`exit_after_commit`].
static COMMITTED: AtomicU64 = AtomicU64::new(0);

/// `CHATQ_FAULT_EXIT_AFTER_COMMIT`: ends the process right after a job's result is committed and
/// before its message is acknowledged. The redelivery must then find the job finished. Does
/// nothing when the setting is 0.
pub fn exit_after_commit(settings: &Settings, job_id: JobId) {
    let after = settings.fault_exit_after_commit;
    if after == 0 || COMMITTED.fetch_add(1, Ordering::SeqCst) + 1 < after {
        return;
    }
    tracing::error!(%job_id, "CHATQ_FAULT_EXIT_AFTER_COMMIT: exiting before acknowledging this job");
    std::process::exit(chatq_common::queue::FAULT_EXIT_CODE);
}
