//! `bench-report`: every scenario beside its raw baseline, interleaved, in one process; writes
//! `report.json`, `report.md` and `report.svg`. Run it through `cargo xtask bench`.
//!
//! The binary is also its own process-strategy worker, and the raw echo child of the process
//! baseline.

mod instructions;
mod measure;
mod memory;
mod nats;
mod report;
mod scenarios;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

/// Set in the environment of the process baseline's echo child.
const RAW_ECHO_ENV: &str = "BENCH_REPORT_RAW_ECHO";

/// A one-line progress display on stderr.
pub(crate) struct Progress {
    step: usize,
    total: usize,
    name: String,
    reps: usize,
    started: Instant,
    live: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            step: 0,
            total,
            name: String::new(),
            reps: 0,
            started: Instant::now(),
            // Redrawn lines only make sense on a terminal; logs get one line per scenario.
            live: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn start(&mut self, name: &str, reps: usize) {
        self.step += 1;
        self.name = name.to_owned();
        self.reps = reps;
        self.rep(0);
    }

    pub(crate) fn rep(&mut self, rep: usize) {
        if !self.live {
            return;
        }
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[2K[{}/{} {:>5.1}s] {}: repetition {}/{}",
            self.step,
            self.total,
            self.started.elapsed().as_secs_f64(),
            self.name,
            rep,
            self.reps
        );
        let _ = err.flush();
    }

    pub(crate) fn done(&mut self, summary: &str) {
        let clear = if self.live { "\r\x1b[2K" } else { "" };
        eprintln!(
            "{clear}[{}/{}] {}: {summary}",
            self.step, self.total, self.name
        );
    }
}

fn main() {
    if std::env::var_os(RAW_ECHO_ENV).is_some() {
        benches::raw_echo_child();
    }
    coordinator::run_worker_if_requested(&benches::registry());

    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, jobs] = args.as_slice()
        && flag == memory::CHILD_FLAG
    {
        let jobs = jobs.parse().expect("a job count");
        println!(
            "{}",
            serde_json::to_string(&memory::retained(jobs)).expect("serializable")
        );
        return;
    }
    if let [flag, scenario, n, rounds] = args.as_slice()
        && flag == instructions::CHILD_FLAG
    {
        instructions::child(
            scenario,
            n.parse().expect("a task count"),
            rounds.parse().expect("a round count"),
        );
        return;
    }
    if let [flag, stream, prefix] = args.as_slice()
        && flag == nats::WORKER_FLAG
    {
        nats::worker_main(stream, prefix);
    }
    if let [flag, checkpoint, total] = args.as_slice()
        && flag == memory::BOUNDED_FLAG
    {
        let (checkpoint, total) = (
            checkpoint.parse().expect("a task count"),
            total.parse().expect("a task count"),
        );
        println!("{}", memory::bounded(checkpoint, total));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map_or_else(|| PathBuf::from("target/bench-report"), PathBuf::from);

    let rt = benches::runtime();
    let (sizes, reps, round_trips, pipelined, messages, jobs): (&[u64], usize, u64, u64, u64, u64) =
        if quick {
            (&[10_000, 100_000], 3, 300, 10_000, 10_000, 200_000)
        } else {
            (
                &[10_000, 100_000, 1_000_000],
                5,
                2_000,
                50_000,
                50_000,
                1_000_000,
            )
        };
    // Steps: async at each size, threaded, 2 process, 3 publisher, 1 distributed, 2 counted.
    let mut progress = Progress::new(sizes.len() + 9);
    let mut results = scenarios::local_strategies(&rt, sizes, reps, &mut progress);
    results.extend(scenarios::process(
        &rt,
        round_trips,
        pipelined,
        reps,
        &mut progress,
    ));
    results.extend(scenarios::publisher(&rt, messages, reps, &mut progress));
    results.extend(nats::throughput(
        &rt,
        if quick { 2_000 } else { 20_000 },
        reps,
        &mut progress,
    ));
    let instructions = instructions::measure(if quick { 5_000 } else { 20_000 }, &mut progress);
    eprintln!("publisher latency ...");
    let publisher_latency = scenarios::publisher_latency(&rt, if quick { 1_000 } else { 5_000 });
    eprintln!("memory: {jobs} retained closed jobs ...");
    let mut memory = memory::retained_in_child(jobs);
    let (checkpoint, total) = if quick {
        (200_000, 2_000_000)
    } else {
        (1_000_000, 10_000_000)
    };
    eprintln!(
        "memory: bounded retention (last {}) across {total} tasks ...",
        memory::KEEP_LAST
    );
    memory.bounded_retention = memory::bounded_in_child(checkpoint, total);

    let report = report::Report {
        quick,
        machine: format!(
            "{} logical CPUs, {}",
            std::thread::available_parallelism().map_or(0, usize::from),
            std::env::consts::ARCH
        ),
        scenarios: results,
        instructions,
        publisher_latency,
        memory,
    };
    if let Err(e) = report::write(&report, &out) {
        eprintln!("could not write the report to {}: {e}", out.display());
        std::process::exit(1);
    }
    println!("{}", report::markdown(&report));
    eprintln!("report written to {}", out.display());
}
