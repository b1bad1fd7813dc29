//! Interleaved measurement: ours, baseline, ours, baseline ..., then medians and spread.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One scenario's figures at one N, as written to `report.json`: costs per task (or per
/// message, or instructions per task), medians of the repetitions.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) n: u64,
    pub(crate) ns_per_task: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_ns_per_task: f64,
    /// Baseline cost divided by ours: 1.0 is as fast as the raw baseline.
    pub(crate) ratio: f64,
    pub(crate) reps: usize,
    /// The lowest and highest of our repetitions.
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Row {
    /// The row of scenario `pair.0` beside baseline `pair.1`, from our costs and the baseline's,
    /// one of each per repetition; its summary goes to stderr, as progress.
    pub(crate) fn new(pair: (&str, &str), n: u64, mut ours: Vec<f64>, mut base: Vec<f64>) -> Self {
        ours.sort_by(f64::total_cmp);
        base.sort_by(f64::total_cmp);
        let median = |v: &[f64]| (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0;
        let row = Self {
            name: pair.0.to_owned(),
            n,
            ns_per_task: median(&ours),
            baseline: pair.1.to_owned(),
            baseline_ns_per_task: median(&base),
            ratio: median(&base) / median(&ours),
            reps: ours.len(),
            min: ours[0],
            max: ours[ours.len() - 1],
        };
        eprintln!("{}", row.summary());
        row
    }

    /// The one-line summary, for the progress on stderr.
    pub(crate) fn summary(&self) -> String {
        let (name, n, ratio) = (&self.name, self.n, self.ratio);
        let (ours, base) = (self.ns_per_task, self.baseline_ns_per_task);
        format!("{name}, N = {n}: {ours:.0} vs {base:.0} for the baseline, ratio {ratio:.2}")
    }
}

/// Runs `ours` and `baseline` alternately, `reps` times each after one warm-up of each, and
/// reports per-task costs (`n` tasks per run) as the row of scenario `pair.0` beside baseline
/// `pair.1`.
pub(crate) fn compare(
    pair: (&str, &str),
    n: u64,
    reps: usize,
    mut ours: impl FnMut() -> Duration,
    mut baseline: impl FnMut() -> Duration,
) -> Row {
    compare_series(pair, &[n], reps, |_| ours(), |_| baseline()).remove(0)
}

/// As [`compare`], for one scenario at several sizes measured in the same rounds: each
/// repetition runs every size in turn (ours, then the baseline, at each N), so a drift of the
/// machine's speed during the run moves every size alike, and the growth of the cost per task
/// with N is read between figures taken side by side. `ours(i)` and `baseline(i)` run the
/// `i`-th size. One row per size, in order.
pub(crate) fn compare_series(
    pair: (&str, &str),
    sizes: &[u64],
    reps: usize,
    mut ours: impl FnMut(usize) -> Duration,
    mut baseline: impl FnMut(usize) -> Duration,
) -> Vec<Row> {
    eprintln!("{}: {reps} repetitions ...", pair.0);
    for i in 0..sizes.len() {
        ours(i);
        baseline(i);
    }
    let mut costs = vec![(Vec::new(), Vec::new()); sizes.len()];
    for _ in 0..reps {
        for (i, (a, b)) in costs.iter_mut().enumerate() {
            a.push(ours(i).as_nanos() as f64 / sizes[i] as f64);
            b.push(baseline(i).as_nanos() as f64 / sizes[i] as f64);
        }
    }
    let row = |((a, b), &n)| Row::new(pair, n, a, b);
    costs.into_iter().zip(sizes).map(row).collect()
}
