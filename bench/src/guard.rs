//! The regression guard's figures and verdict: each figure is a chatq rate divided by a ceiling
//! measured in the same run (`enqueue ÷ HTTP`, …), so a slow or busy machine lowers both and the
//! ratio stays; a change that makes chatq dearer lowers the ratio. A figure more than
//! [`TOLERANCE`] below the baseline committed in the repository fails, and so does a figure the
//! baseline names that was not measured. Running the benchmark is [`super::guard_run`]'s.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// How far a figure may fall below its baseline before the guard fails: well above the
/// run-to-run noise of the guarded figures on a busy 2-core machine (BENCHMARKS.md, "The
/// regression guard"), well below what a real regression of the hot path costs.
pub const TOLERANCE: f64 = 0.30;

/// Figures by name: a chatq rate as a fraction of a same-run ceiling.
pub type Figures = BTreeMap<String, f64>;

/// The baseline file (`bench/baseline.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Baseline {
    /// How the file was made and how to make it again, for whoever opens it.
    pub about: String,
    /// When, where and with which build the figures were measured.
    pub measured: String,
    /// `debug` or `release`: ratios of one build do not compare with the other's.
    pub build: String,
    pub figures: Figures,
}

impl Baseline {
    /// Reads a baseline file.
    ///
    /// # Errors
    /// The file cannot be read or is not a baseline.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the baseline {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a guard baseline", path.display()))
    }

    /// Writes it, pretty-printed, ending with a newline.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The build this executable is: the baseline must have been measured with the same kind.
pub fn this_build() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// One reason the guard fails.
#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The figure fell by more than the tolerance.
    Fell {
        name: String,
        baseline: f64,
        now: f64,
    },
    /// The baseline names a figure this run did not measure.
    Missing { name: String },
}

impl Finding {
    /// How far the figure fell, as a fraction of its baseline.
    fn drop(baseline: f64, now: f64) -> f64 {
        if baseline > 0.0 {
            (baseline - now) / baseline
        } else {
            0.0
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fell {
                name,
                baseline,
                now,
            } => write!(
                f,
                "{name} fell by {:.0} %: {now:.4} against {baseline:.4} in the baseline (more than {:.0} % fails)",
                Self::drop(*baseline, *now) * 100.0,
                TOLERANCE * 100.0
            ),
            Self::Missing { name } => write!(
                f,
                "{name} is in the baseline but was not measured (renamed or removed? refresh the baseline)"
            ),
        }
    }
}

/// What is wrong with `now` against `baseline`: every baseline figure must be measured and no
/// more than [`TOLERANCE`] below its baseline value. Figures the baseline does not name are not
/// judged. A rise is never a finding.
pub fn compare(baseline: &Figures, now: &Figures) -> Vec<Finding> {
    baseline
        .iter()
        .filter_map(|(name, &base)| match now.get(name) {
            None => Some(Finding::Missing { name: name.clone() }),
            Some(&value) if Finding::drop(base, value) > TOLERANCE => Some(Finding::Fell {
                name: name.clone(),
                baseline: base,
                now: value,
            }),
            Some(_) => None,
        })
        .collect()
}

/// Each figure at the better of two attempts: a regression lowers both, a noisy moment one.
pub fn best_of(first: &Figures, second: &Figures) -> Figures {
    let mut best = first.clone();
    for (name, &value) in second {
        best.entry(name.clone())
            .and_modify(|kept| *kept = kept.max(value))
            .or_insert(value);
    }
    best
}

/// Each figure at its median over several attempts (figures some attempt lacks are left out):
/// what a baseline is made of, so that one lucky or unlucky attempt does not set it.
pub fn median_of(attempts: &[Figures]) -> Figures {
    let Some(first) = attempts.first() else {
        return Figures::new();
    };
    first
        .keys()
        .filter_map(|name| {
            let mut values: Vec<f64> = attempts
                .iter()
                .map(|attempt| attempt.get(name).copied())
                .collect::<Option<_>>()?;
            values.sort_by(f64::total_cmp);
            let middle = values.len() / 2;
            let median = if values.len() % 2 == 1 {
                values[middle]
            } else {
                f64::midpoint(values[middle - 1], values[middle])
            };
            Some((name.clone(), median))
        })
        .collect()
}

/// The comparison as a table for people: figure, baseline, now, change.
pub fn table(baseline: &Figures, now: &Figures) -> String {
    let mut out = String::new();
    let width = now
        .keys()
        .chain(baseline.keys())
        .map(|name| name.chars().count())
        .max();
    let width = width.unwrap_or(0);
    let mut names: Vec<&String> = now.keys().chain(baseline.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let cell =
            |value: Option<&f64>| value.map_or_else(|| "—".to_owned(), |v| format!("{v:.4}"));
        let change = match (baseline.get(name), now.get(name)) {
            (Some(&base), Some(&value)) if base > 0.0 => {
                format!("{:+.0} %", (value - base) / base * 100.0)
            }
            (None, Some(_)) => "not guarded".to_owned(),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {name:<width$}  {:>8}  {:>8}  {change}\n",
            cell(baseline.get(name)),
            cell(now.get(name))
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(pairs: &[(&str, f64)]) -> Figures {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), *value))
            .collect()
    }

    #[test]
    fn a_figure_31_percent_down_fails_and_says_by_how_much() {
        let baseline = figures(&[("e2e ÷ HTTP", 0.100), ("enqueue ÷ HTTP", 0.200)]);
        let now = figures(&[("e2e ÷ HTTP", 0.069), ("enqueue ÷ HTTP", 0.200)]);
        let findings = compare(&baseline, &now);
        assert_eq!(
            findings,
            vec![Finding::Fell {
                name: "e2e ÷ HTTP".into(),
                baseline: 0.100,
                now: 0.069
            }]
        );
        let message = findings[0].to_string();
        assert!(message.starts_with("e2e ÷ HTTP fell by 31 %"), "{message}");
    }

    #[test]
    fn a_figure_29_percent_down_passes_and_a_rise_is_never_a_finding() {
        let baseline = figures(&[("e2e ÷ HTTP", 0.100), ("enqueue ÷ HTTP", 0.200)]);
        let now = figures(&[("e2e ÷ HTTP", 0.071), ("enqueue ÷ HTTP", 0.900)]);
        assert_eq!(compare(&baseline, &now), vec![]);
    }

    #[test]
    fn a_figure_the_baseline_names_but_the_run_lacks_is_named() {
        let baseline = figures(&[("e2e ÷ HTTP", 0.1), ("completions ÷ HTTP", 0.05)]);
        let now = figures(&[("e2e ÷ HTTP", 0.1), ("something new", 1.0)]);
        let findings = compare(&baseline, &now);
        assert_eq!(
            findings,
            vec![Finding::Missing {
                name: "completions ÷ HTTP".into()
            }]
        );
        assert!(
            findings[0]
                .to_string()
                .starts_with("completions ÷ HTTP is in the baseline")
        );
    }

    #[test]
    fn the_retry_keeps_each_figure_at_its_better_attempt() {
        let first = figures(&[("a", 0.5), ("b", 0.1)]);
        let second = figures(&[("a", 0.4), ("b", 0.3), ("c", 0.2)]);
        assert_eq!(
            best_of(&first, &second),
            figures(&[("a", 0.5), ("b", 0.3), ("c", 0.2)])
        );
    }

    #[test]
    fn a_baseline_is_each_figure_at_its_median() {
        let attempts = [
            figures(&[("a", 0.9), ("b", 0.2)]),
            figures(&[("a", 0.1), ("b", 0.4)]),
            figures(&[("a", 0.5)]),
        ];
        assert_eq!(median_of(&attempts), figures(&[("a", 0.5)]));
        assert_eq!(
            median_of(&attempts[..2]),
            figures(&[("a", 0.5), ("b", 0.30000000000000004)])
        );
    }

    #[test]
    fn the_committed_baseline_reads_and_guards_every_figure_it_names() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("baseline.json");
        let baseline = Baseline::read(&path).unwrap();
        assert_eq!(
            baseline.build, "debug",
            "scripts/test runs the guard on a debug build"
        );
        assert!(!baseline.figures.is_empty());
        for (name, value) in &baseline.figures {
            assert!(*value > 0.0 && value.is_finite(), "{name}: {value}");
        }
    }

    #[test]
    fn a_baseline_survives_the_round_trip_through_its_file() {
        let path = std::env::temp_dir().join(format!("guard-baseline-{}.json", std::process::id()));
        let written = Baseline {
            about: "test".into(),
            measured: "now".into(),
            build: this_build().into(),
            figures: figures(&[("e2e ÷ HTTP", 0.125)]),
        };
        written.write(&path).unwrap();
        let read = Baseline::read(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(read.figures, written.figures);
        assert_eq!(read.build, written.build);
    }
}
