//! `bench-report`: every scenario beside its raw baseline, interleaved, in one process; writes
//! `report.json`, `report.md` and `report.svg`. Run it through `cargo xtask bench`.
//!
//! The binary is also its own process worker, raw echo child and NATS worker, and the child that
//! measures in a fresh process (memory) or a pinned one (the round trip). `--run SCENARIO N
//! ROUNDS` runs one scenario in a loop, for valgrind's counts and for a profiler to watch
//! (docs/benchmarks.md, "Profiling one scenario").

mod claims;
mod instructions;
mod measure;
mod memory;
mod nats;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::de::DeserializeOwned;

/// Writes the report of every scenario beside its raw baseline (`--run SCENARIO N ROUNDS` runs
/// one scenario in a loop instead).
#[derive(Parser)]
struct Args {
    /// A smoke run: few repetitions, small N.
    #[arg(long)]
    quick: bool,
    /// Only these groups, comma-separated (`cargo xtask bench --help` lists them).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where the report goes: by default `bench-report` in `$CARGO_TARGET_DIR`, or in `target`
    /// in the workspace.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The workspace root, where the docs and `target/` are.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    root.map_or_else(|| ".".into(), Path::to_path_buf)
}

/// Runs this binary again with a child's `flag` and its `counts`, and reads what it prints as
/// JSON: the measurements that need a process of their own. `None` where that failed, once stderr
/// says that `what` was not measured, why, and what the child said there.
fn measure_in_child<T: DeserializeOwned>(what: &str, flag: &str, counts: &[u64]) -> Option<T> {
    let counts: Vec<String> = counts.iter().map(u64::to_string).collect();
    let mut child = benches::this_binary(&[flag]);
    let output = child.args(counts).output().expect("the child runs");
    let why = match serde_json::from_slice(&output.stdout) {
        _ if !output.status.success() => output.status.to_string(),
        Ok(measured) => return Some(measured),
        Err(e) => format!("unreadable result ({e})"),
    };
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    eprintln!("{what}: not measured ({why}); the child said: {said}");
    None
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).expect("serializable"));
}

fn main() {
    benches::serve_if_child();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let number = |arg: &str| arg.parse::<u64>().expect("a count");
    match args[..] {
        [memory::CHILD_FLAG, keep_last, checkpoint, tasks] => {
            let keep_last = number(keep_last) as usize;
            return print_json(&memory::child(keep_last, number(checkpoint), number(tasks)));
        }
        [instructions::RUN_FLAG, scenario, n, rounds] => {
            return instructions::run(scenario, number(n), number(rounds));
        }
        [scenarios::PINNED_FLAG, round_trips, reps] => {
            let (round_trips, reps) = (number(round_trips), number(reps));
            return print_json(&scenarios::pinned_round_trip_child(round_trips, reps));
        }
        [nats::WORKER_FLAG, stream, prefix] => nats::worker_main(stream, prefix),
        _ => {}
    }
    let Args { quick, only, out } = Args::parse();
    let run = |group| only.is_empty() || only.iter().any(|g| g == group);
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from);
    let target = target.unwrap_or_else(|| workspace_root().join("target"));
    let out = out.unwrap_or_else(|| target.join("bench-report"));
    // Read before anything runs: the load average says what the machine was doing before.
    let load_before = report::load_average();
    let pick = |quick_size: u64, full_size: u64| if quick { quick_size } else { full_size };
    let reps = pick(3, 5) as usize;
    let series = &[10_000, 100_000, 1_000_000][..pick(2, 3) as usize];
    let fixture = benches::Fixture::default();
    let rt = &fixture.rt;
    let mut rows = scenarios::local(&fixture, series, reps, [run("async"), run("threaded")]);
    if run("process") {
        let (round_trips, pipelined) = (pick(300, 2_000), pick(10_000, 50_000));
        rows.extend(scenarios::process(&fixture, round_trips, pipelined, reps));
    }
    if run("publisher") {
        let (messages, one_by_one) = (pick(10_000, 50_000), pick(1_000, 5_000) as usize);
        rows.extend(scenarios::publisher(rt, messages, one_by_one, reps));
    }
    if run("nats") {
        rows.extend(nats::throughput(rt, pick(2_000, 20_000), reps));
    }
    let instructions = run("instructions").then(|| instructions::measure(pick(5_000, 20_000)));
    let (jobs, total) = (pick(200_000, 1_000_000), pick(2_000_000, 10_000_000));
    let memory = run("memory").then(|| memory::measure(jobs, jobs, total));
    fixture.shutdown();
    let (claims, claims_unread) = match claims::check(&workspace_root(), &rows) {
        Ok(claims) => (claims, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let report = report::Report {
        quick,
        environment: report::environment(&load_before),
        claims,
        claims_unread,
        only: (!only.is_empty()).then_some(only),
        scenarios: rows,
        instructions,
        memory: memory.flatten(),
    };
    if let Err(e) = report::write(&report, &out) {
        eprintln!("could not write the report to {}: {e}", out.display());
        std::process::exit(1);
    }
    println!("{}", report::markdown(&report));
    eprintln!("report written to {}", out.display());
}
