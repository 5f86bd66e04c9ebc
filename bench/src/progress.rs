//! Progress on standard error while a phase runs, so standard output carries only the report.
//! indicatif hides the bars by itself when standard error is not a terminal.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar for one phase: counted (so many requests) or timed (so many seconds).
pub struct Progress {
    bar: ProgressBar,
    timed: bool,
}

/// A bar that counts towards `total` operations.
pub fn counted(label: &str, total: u64) -> Progress {
    let style = ProgressStyle::with_template(
        "{prefix:>28} [{bar:30}] {pos:>7}/{len:7} {per_sec:>12} {elapsed:>4}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    Progress {
        bar: new_bar(label, total, style),
        timed: false,
    }
}

/// A bar that fills as `duration` passes; the message counts the operations done.
pub fn timed(label: &str, duration: Duration) -> Progress {
    let style = ProgressStyle::with_template("{prefix:>28} [{bar:30}] {elapsed:>4} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    Progress {
        bar: new_bar(label, millis, style),
        timed: true,
    }
}

/// A spinner for a step without a count (starting a process, waiting for jobs to finish).
pub fn step(label: &str) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:>28} {spinner} {msg} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(style);
    bar.set_prefix(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn new_bar(label: &str, length: u64, style: ProgressStyle) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(length), ProgressDrawTarget::stderr()).with_style(style);
    bar.set_prefix(label.to_owned());
    bar
}

impl Progress {
    pub fn update(&self, done: u64, elapsed: Duration) {
        if self.timed {
            self.bar
                .set_position(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
            self.bar.set_message(format!("{done} done, {rate:.0}/s"));
        } else {
            self.bar.set_position(done);
        }
    }

    /// One more operation done (counted bars).
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// Leaves the final state on screen.
    pub fn finish(&self, done: u64) {
        if self.timed {
            let elapsed = self.bar.elapsed();
            self.update(done, elapsed);
            self.bar.set_position(self.bar.length().unwrap_or(0));
        } else {
            self.bar.set_position(done);
        }
        self.bar.finish();
    }
}
