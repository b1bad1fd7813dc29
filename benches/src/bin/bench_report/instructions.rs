//! Instructions per task, counted by valgrind: they move by a few percent between runs of the
//! same binary (idle runtime threads spin for as long as a run lasts), where times on a shared
//! machine move by tens of percent, so a ratio of counts holds where timed ratios drift.
//!
//! Each count runs a child of this binary under `valgrind --tool=cachegrind --cache-sim=no`.
//! The child runs the scenario 1 and then 3 rounds over the same ids; the difference, divided by
//! the 2 x N tasks between them, is the cost of a task in a coordinator that has run before,
//! without the process's start, the runtime's and the ids' making.

use std::process::Command;

use benches::{
    raw_rayon_spawn_crossbeam, raw_tokio_spawn_channel, request_ids, started_coordinator,
    submit_trivial,
};
use coordinator::ExecutionMode;
use serde::Serialize;

use crate::Progress;

/// The child's flag: `--count-child <scenario> <n> <rounds>`.
pub(crate) const CHILD_FLAG: &str = "--count-child";

/// The scenarios counted, each with its baseline, as the timed table names them.
const SCENARIOS: [(&str, &str, &str, &str); 2] = [
    (
        "async",
        "async",
        "raw-async",
        "tokio::spawn + mpsc + HashMap",
    ),
    (
        "threaded",
        "threaded",
        "raw-threaded",
        "rayon::spawn + crossbeam + HashMap",
    ),
];

/// One scenario's counts, as written to `report.json`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct InstructionCount {
    pub(crate) name: String,
    pub(crate) n: u64,
    pub(crate) instructions_per_task: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_instructions_per_task: f64,
    /// Baseline count divided by ours: 1.0 is as few instructions as the raw baseline.
    pub(crate) ratio: f64,
}

/// Runs `scenario` (`async`, `threaded`, `raw-async` or `raw-threaded`) `rounds` times over the
/// same `n` ids: the child's side.
pub(crate) fn child(scenario: &str, n: u64, rounds: u32) {
    let rt = benches::runtime();
    let pool = std::sync::Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool"),
    );
    let ids = request_ids(n);
    let (publisher, coordinator) = started_coordinator(&rt, Some(&pool));
    for _ in 0..rounds {
        match scenario {
            "async" => submit_trivial(&rt, &coordinator, &ids, &ExecutionMode::ASYNC),
            "threaded" => submit_trivial(&rt, &coordinator, &ids, &ExecutionMode::THREADED),
            "raw-async" => raw_tokio_spawn_channel(&rt, &ids),
            "raw-threaded" => raw_rayon_spawn_crossbeam(&pool, &ids),
            other => {
                eprintln!("unknown scenario {other}");
                std::process::exit(2);
            }
        };
    }
    rt.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

/// Whether valgrind can be run here.
fn valgrind_available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The instructions a child run of `scenario` executed, all threads together.
fn count(scenario: &str, n: u64, rounds: u32) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("valgrind")
        .args([
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
        ])
        .arg(exe)
        .args([CHILD_FLAG, scenario, &n.to_string(), &rounds.to_string()])
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("{scenario}: the counted run failed: {log}"));
    }
    // `==pid== I   refs:      1,234,567`
    log.lines()
        .find_map(|line| {
            let (_, refs) = line.split_once("I   refs:")?;
            refs.trim().replace(',', "").parse().ok()
        })
        .ok_or_else(|| format!("{scenario}: no instruction count in valgrind's output"))
}

/// Instructions per task of `scenario` at `n`: 3 rounds less 1 round, over 2 x `n` tasks.
fn per_task(scenario: &str, n: u64) -> Result<f64, String> {
    let one = count(scenario, n, 1)?;
    let three = count(scenario, n, 3)?;
    Ok(three.saturating_sub(one) as f64 / (2 * n) as f64)
}

/// Counts every scenario and its baseline at `n`; `None` (and a line on stderr) when valgrind is
/// not installed or a count failed.
pub(crate) fn measure(n: u64, progress: &mut Progress) -> Option<Vec<InstructionCount>> {
    if !valgrind_available() {
        eprintln!("instruction counts: valgrind not found; skipped");
        return None;
    }
    let mut counts = Vec::new();
    for (name, ours, raw, baseline) in SCENARIOS {
        progress.start(&format!("{name}, instructions"), 2);
        let counted = per_task(ours, n).and_then(|ours| {
            progress.rep(1);
            per_task(raw, n).map(|raw| (ours, raw))
        });
        let (ours, raw) = match counted {
            Ok(counted) => counted,
            Err(e) => {
                progress.done("failed");
                eprintln!("instruction counts: {e}");
                return None;
            }
        };
        let result = InstructionCount {
            name: name.to_owned(),
            n,
            instructions_per_task: ours,
            baseline: baseline.to_owned(),
            baseline_instructions_per_task: raw,
            ratio: raw / ours,
        };
        progress.done(&format!(
            "{ours:.0} vs {raw:.0} instructions per task, ratio {:.2}",
            result.ratio
        ));
        counts.push(result);
    }
    Some(counts)
}
