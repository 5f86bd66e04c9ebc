//! The metrics a worker records stay within a bound in memory when nothing scrapes `/metrics`:
//! a histogram keeps each sample until the recorder's upkeep folds it into its buckets, so
//! without an upkeep of its own a worker nobody scrapes grew by every job's samples for ever.

use chatq_common::metrics::{self as names, UPKEEP_EVERY};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// The heap held now.
fn held() -> usize {
    let stats = dhat::HeapStats::get();
    stats.curr_bytes
}

/// Samples recorded between two upkeeps, and how many times.
const SAMPLES: u32 = 100_000;
const ROUNDS: u32 = 20;

// The runtime's clock is paused, so each wait for an upkeep passes at once, in order.
#[tokio::test(start_paused = true)]
async fn histogram_samples_are_folded_in_without_a_scrape() {
    let _profiler = dhat::Profiler::builder().testing().build();
    names::install().expect("the recorder installs");
    let before = held();
    for _ in 0..ROUNDS {
        for n in 0..SAMPLES {
            metrics::histogram!(names::PROVIDER_DURATION).record(f64::from(n % 1_000) / 1_000.0);
        }
        tokio::time::sleep(UPKEEP_EVERY).await;
    }
    let grown = held().saturating_sub(before);
    // The samples' values alone, 8 bytes each: 16 MB here (kept, they take twice that).
    let kept = 8 * SAMPLES as usize * ROUNDS as usize;
    eprintln!(
        "{} samples recorded: the heap grew {} KiB (the samples themselves: {} KiB)",
        SAMPLES * ROUNDS,
        grown / 1024,
        kept / 1024
    );
    assert!(
        grown < kept / 4,
        "the heap grew {grown} bytes for {} samples: they are kept, not folded in",
        SAMPLES * ROUNDS
    );
}
