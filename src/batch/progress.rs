//! Progress on standard error: the upload in bytes, then the batch's lines done (answered or
//! failed) of its total, with rate and ETA. indicatif hides the bars by itself when standard error
//! is not a terminal; `--no-progress` hides them always.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

fn bar(total: u64, template: &str, hidden: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if hidden {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

/// The upload's bar, in bytes.
pub fn upload(bytes: u64, hidden: bool) -> ProgressBar {
    bar(
        bytes,
        "upload [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        hidden,
    )
}

/// The lines' bar.
pub struct Lines {
    bar: ProgressBar,
}

pub fn lines(total: u64, hidden: bool) -> Lines {
    Lines {
        bar: bar(
            total,
            "{msg:>12} [{bar:30}] {pos}/{len} lines {per_sec} ETA {eta}",
            hidden,
        ),
    }
}

impl Lines {
    /// Shows the batch as it stands: done lines, with the failed ones counted in the message.
    pub fn show(&self, batch: &Value) {
        let counts = &batch["request_counts"];
        let completed = counts["completed"].as_u64().unwrap_or(0);
        let failed = counts["failed"].as_u64().unwrap_or(0);
        self.bar.set_length(counts["total"].as_u64().unwrap_or(0));
        self.bar.set_position(completed + failed);
        self.bar.set_message(format!(
            "{} {failed} failed",
            batch["status"].as_str().unwrap_or("")
        ));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
