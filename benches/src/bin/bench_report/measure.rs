//! Interleaved measurement: ours, baseline, ours, baseline ..., then medians and spread.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::environment::CpuSample;
use crate::scenarios::names;

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
    /// How busy the machine was during the sets of repetitions measured again and set aside
    /// (see [`compare`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) busy_elsewhere_set_aside: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) extra: Option<serde_json::Value>,
}

#[cfg(test)]
impl ScenarioResult {
    /// A row for tests: `reps` 3, no spread, nothing read of the machine.
    pub(crate) fn example(name: &str, n: u64, ns_per_task: f64, baseline_ns_per_task: f64) -> Self {
        Self {
            name: name.to_owned(),
            n,
            ns_per_task,
            baseline: "raw".to_owned(),
            baseline_ns_per_task,
            ratio: baseline_ns_per_task / ns_per_task,
            reps: 3,
            min: ns_per_task,
            max: ns_per_task,
            busy_elsewhere: None,
            busy_elsewhere_set_aside: Vec::new(),
            extra: None,
        }
    }
}

/// The row of scenario `name` measured at `n`, or without `n` the one at the largest N measured.
pub(crate) fn row<'a>(
    rows: &'a [ScenarioResult],
    name: &str,
    n: Option<u64>,
) -> Option<&'a ScenarioResult> {
    rows.iter()
        .filter(|row| row.name == name && n.is_none_or(|n| row.n == n))
        .max_by_key(|row| row.n)
}

fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The share of the machine busy elsewhere above which a row is measured again: on 2 cores, a
/// quarter is half a core taken from the scenario while it ran.
pub(crate) const DISTURBED: f64 = 0.25;

/// How many more times, at most, a disturbed row is measured.
const MEASURE_AGAIN: usize = 2;

/// Runs `ours` and `baseline` alternately, `reps` times each after one warm-up of each, and
/// reports per-task costs (`n` tasks per run).
///
/// When other processes took more than [`DISTURBED`] of the machine while the repetitions ran,
/// they are run again (up to [`MEASURE_AGAIN`] more times) and the least disturbed set is kept;
/// the result lists how busy the machine was during the sets it set aside. The distributed
/// scenario is never measured again for this: the NATS server it drives is always busy.
pub(crate) fn compare(
    name: &str,
    n: u64,
    reps: usize,
    baseline_name: &str,
    mut ours: impl FnMut() -> Duration,
    mut baseline: impl FnMut() -> Duration,
    progress: &mut crate::Progress,
) -> ScenarioResult {
    let mut rows = compare_series(
        name,
        &[n],
        reps,
        baseline_name,
        |_| ours(),
        |_| baseline(),
        progress,
    );
    rows.remove(0)
}

/// As [`compare`], for one scenario at several sizes measured in the same rounds: each
/// repetition runs every size in turn (ours, then the baseline, at each N), so a drift of the
/// machine's speed during the run moves every size alike instead of whichever was measured then,
/// and the growth of the cost per task with N is read between figures taken side by side.
/// `ours(i)` and `baseline(i)` run the `i`-th size. One row per size, in order.
pub(crate) fn compare_series(
    name: &str,
    sizes: &[u64],
    reps: usize,
    baseline_name: &str,
    mut ours: impl FnMut(usize) -> Duration,
    mut baseline: impl FnMut(usize) -> Duration,
    progress: &mut crate::Progress,
) -> Vec<ScenarioResult> {
    progress.start(name, reps);
    for i in 0..sizes.len() {
        ours(i);
        baseline(i);
    }
    let per_task = |d: Duration, n: u64| d.as_nanos() as f64 / n as f64;
    let measure = |progress: &mut crate::Progress| {
        let mut costs = vec![(Vec::with_capacity(reps), Vec::with_capacity(reps)); sizes.len()];
        // Read between repetitions, never inside a timed one.
        let before = CpuSample::now();
        for rep in 0..reps {
            progress.rep(rep + 1);
            for (i, (a, b)) in costs.iter_mut().enumerate() {
                a.push(per_task(ours(i), sizes[i]));
                b.push(per_task(baseline(i), sizes[i]));
            }
        }
        let busy = before
            .zip(CpuSample::now())
            .and_then(|(before, after)| before.elsewhere_until(&after));
        (costs, busy)
    };
    let ((costs, busy_elsewhere), set_aside) = least_disturbed(
        progress,
        measure,
        name != names::DISTRIBUTED,
        |progress, busy| {
            progress.note(&format!(
                "{:.0}% of the machine was busy elsewhere: measuring again",
                busy * 100.0
            ));
        },
    );
    let rows: Vec<ScenarioResult> = costs
        .into_iter()
        .zip(sizes)
        .map(|((mut a, mut b), &n)| {
            a.sort_by(f64::total_cmp);
            b.sort_by(f64::total_cmp);
            let (ours_median, base_median) = (median(&a), median(&b));
            ScenarioResult {
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
                busy_elsewhere_set_aside: set_aside.clone(),
                extra: None,
            }
        })
        .collect();
    let summaries: Vec<String> = rows
        .iter()
        .map(|row| {
            if rows.len() > 1 {
                format!("N = {}: {}", row.n, summary(row))
            } else {
                summary(row)
            }
        })
        .collect();
    progress.done(&summaries.join("; "));
    rows
}

/// Measures a set with `measure` (given `context`), and again while the kept set was disturbed
/// (busy elsewhere above [`DISTURBED`]), up to [`MEASURE_AGAIN`] more times when
/// `may_measure_again`; keeps the least disturbed set. Returns it and how busy the machine was
/// during the sets set aside.
fn least_disturbed<C, S>(
    context: &mut C,
    mut measure: impl FnMut(&mut C) -> (S, Option<f64>),
    may_measure_again: bool,
    mut on_again: impl FnMut(&mut C, f64),
) -> ((S, Option<f64>), Vec<f64>) {
    let mut kept = measure(context);
    let mut set_aside = Vec::new();
    while may_measure_again && set_aside.len() < MEASURE_AGAIN {
        let Some(busy) = kept.1.filter(|&busy| busy > DISTURBED) else {
            break;
        };
        on_again(context, busy);
        let again = measure(context);
        if again.1.is_some_and(|quieter| quieter < busy) {
            kept = again;
            set_aside.push(busy);
        } else {
            set_aside.push(again.1.unwrap_or(busy));
        }
    }
    (kept, set_aside)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets whose only difference is how busy the machine was; each set's cost is its index.
    fn scripted(busy: &[Option<f64>], may_measure_again: bool) -> (f64, Vec<f64>, usize) {
        let mut next = 0;
        let mut again = 0;
        let (kept, set_aside) = least_disturbed(
            &mut next,
            |next| {
                let set = (*next as f64, busy[*next]);
                *next += 1;
                set
            },
            may_measure_again,
            |_, _| again += 1,
        );
        (kept.0, set_aside, again)
    }

    #[test]
    fn a_disturbed_set_is_measured_again_and_the_quietest_kept() {
        // Quiet at once: measured once.
        assert_eq!(scripted(&[Some(0.1)], true), (0.0, vec![], 0));
        assert_eq!(
            scripted(&[None], true),
            (0.0, vec![], 0),
            "no reading, no retry"
        );
        // Disturbed, then quiet: the second set is kept.
        assert_eq!(scripted(&[Some(0.5), Some(0.1)], true), (1.0, vec![0.5], 1));
        // Disturbed three times: two more sets at most, the least disturbed kept.
        assert_eq!(
            scripted(&[Some(0.5), Some(0.6), Some(0.3)], true),
            (2.0, vec![0.6, 0.5], 2)
        );
        assert_eq!(
            scripted(&[Some(0.5), Some(0.6), Some(0.7)], true),
            (0.0, vec![0.6, 0.7], 2)
        );
        // A scenario that may not be measured again keeps its one set.
        assert_eq!(scripted(&[Some(0.9)], false), (0.0, vec![], 0));
    }
}
