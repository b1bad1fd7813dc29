//! Interleaved measurement: ours, baseline, ours, baseline ..., then medians and spread.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::environment::CpuSample;

/// One scenario's figures, as written to `report.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ScenarioResult {
    pub(crate) name: String,
    pub(crate) n: u64,
    pub(crate) ns_per_task: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_ns_per_task: f64,
    /// Baseline cost divided by ours: 1.0 is as fast as the raw baseline.
    pub(crate) ratio: f64,
    pub(crate) reps: usize,
    /// The fastest and slowest of our repetitions, per task.
    pub(crate) min: f64,
    pub(crate) max: f64,
    /// The share (0 to 1) of the machine's CPU time that went to other processes (or, on a
    /// virtual machine, to other machines) while the repetitions ran; `None` where it could not
    /// be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) busy_elsewhere: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) extra: Option<serde_json::Value>,
}

fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Runs `ours` and `baseline` alternately, `reps` times each after one warm-up of each, and
/// reports per-task costs (`n` tasks per run).
pub(crate) fn compare(
    name: &str,
    n: u64,
    reps: usize,
    baseline_name: &str,
    mut ours: impl FnMut() -> Duration,
    mut baseline: impl FnMut() -> Duration,
    progress: &mut crate::Progress,
) -> ScenarioResult {
    progress.start(name, reps);
    ours();
    baseline();
    let per_task = |d: Duration| d.as_nanos() as f64 / n as f64;
    let (mut a, mut b) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    // Read between repetitions, never inside a timed one.
    let before = CpuSample::now();
    for rep in 0..reps {
        progress.rep(rep + 1);
        a.push(per_task(ours()));
        b.push(per_task(baseline()));
    }
    let busy_elsewhere = before
        .zip(CpuSample::now())
        .and_then(|(before, after)| before.elsewhere_until(&after));
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (ours_median, base_median) = (median(&a), median(&b));
    let result = ScenarioResult {
        name: name.to_owned(),
        n,
        ns_per_task: ours_median,
        baseline: baseline_name.to_owned(),
        baseline_ns_per_task: base_median,
        ratio: base_median / ours_median,
        reps,
        min: a[0],
        max: a[a.len() - 1],
        busy_elsewhere,
        extra: None,
    };
    progress.done(&summary(&result));
    result
}

/// The one-line summary of a result, for the progress display.
pub(crate) fn summary(result: &ScenarioResult) -> String {
    format!(
        "{:.0} ns/task vs {:.0} ns/task, ratio {:.2}",
        result.ns_per_task, result.baseline_ns_per_task, result.ratio
    )
}

/// The `p`-th percentile (0..=100) of `values`, sorted in place.
pub(crate) fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    if values.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank.min(values.len() - 1)]
}
