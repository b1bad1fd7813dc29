//! Instructions per task, counted by valgrind (a ratio of counts holds where timed ratios drift
//! on a shared machine), and the runs a profiler watches. Each count runs `bench-report --run
//! SCENARIO N ROUNDS` under cachegrind, 1 and then 3 rounds over the same ids; the difference,
//! over the 2 x N tasks between them, is the cost of a task in a coordinator that has run before,
//! without the process's start, the runtime's and the ids' making.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use crate::measure::Row;
use crate::scenarios::names;

/// The flag that runs one scenario in a loop: `--run SCENARIO N ROUNDS`.
pub(crate) const RUN_FLAG: &str = "--run";

/// Runs `scenario` of [`benches::Fixture::run`] `rounds` times over `n` tasks (or messages) and
/// says how long a task took.
pub(crate) fn run(scenario: &str, n: u64, rounds: u64) {
    if n == 0 || rounds == 0 {
        eprintln!("--run SCENARIO N ROUNDS: N and ROUNDS must be at least 1");
        std::process::exit(2);
    }
    let (fixture, ids) = (benches::Fixture::default(), benches::request_ids(n));
    let total: Option<Duration> = (0..rounds).map(|_| fixture.run(scenario, &ids)).sum();
    let Some(total) = total else {
        eprintln!("no scenario `{scenario}`; docs/benchmarks.md lists them");
        std::process::exit(2);
    };
    eprintln!(
        "{scenario}: {} ns per task over {rounds} rounds of {n}",
        total.as_nanos() / u128::from(n * rounds)
    );
    fixture.shutdown();
}

/// Instructions per task of `scenario` at `n`, all threads together: 3 rounds less 1 round, over
/// 2 x `n` tasks. `None`, saying why on stderr, when valgrind gave no count.
fn per_task(scenario: &str, n: u64) -> Option<f64> {
    let count = |rounds: u32| {
        let mut valgrind = Command::new("valgrind");
        let tool = "--tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null";
        valgrind
            .args(tool.split(' '))
            .arg(std::env::current_exe().ok()?);
        valgrind.args([RUN_FLAG, scenario, &n.to_string(), &rounds.to_string()]);
        let out = valgrind.output().ok()?;
        let log = String::from_utf8_lossy(&out.stderr);
        // `==pid== I   refs:      1,234,567`
        let refs = log.lines().find_map(|line| line.split_once("I   refs:"));
        let refs = refs.and_then(|(_, refs)| refs.trim().replace(',', "").parse::<u64>().ok());
        let refs = refs.filter(|_| out.status.success());
        refs.or_else(|| {
            eprintln!("instruction counts: {scenario}: no count from valgrind: {log}");
            None
        })
    };
    let (one, three) = (count(1)?, count(3)?);
    Some(three.saturating_sub(one) as f64 / (2 * n) as f64)
}

/// Counts async and threaded and their design floors beside their baselines, and async with its
/// metrics recorded beside async, at `n`, per task; `None` (and a line on stderr) when valgrind
/// is not installed or a count failed.
pub(crate) fn measure(n: u64) -> Option<Vec<Row>> {
    let valgrind = Command::new("valgrind").arg("--version").output();
    if !valgrind.is_ok_and(|out| out.status.success()) {
        eprintln!("instruction counts: valgrind not found; skipped");
        return None;
    }
    let counted = [
        (names::ASYNC, "async", "raw-async"),
        (names::THREADED, "threaded", "raw-threaded"),
        (names::FLOOR, "floor-async", "raw-async"),
        (names::FLOOR_THREADED, "floor-threaded", "raw-threaded"),
        (names::METRICS, "async-metrics", "async"),
    ];
    // Each scenario counted once, however many rows it is in.
    let (mut counts, mut rows) = (HashMap::new(), Vec::new());
    for (pair, ours, raw) in counted {
        eprintln!("{}: counting instructions under valgrind ...", pair.0);
        for scenario in [ours, raw] {
            if !counts.contains_key(scenario) {
                counts.insert(scenario, per_task(scenario, n)?);
            }
        }
        rows.push(Row::new(pair, n, vec![counts[ours]], vec![counts[raw]]));
    }
    Some(rows)
}
