//! `bench-report`: every scenario beside its raw baseline, interleaved, in one process; writes
//! `report.json`, `report.md` and `report.svg`. Run it through `cargo xtask bench`.
//!
//! The binary is also its own process-strategy worker, and the raw echo child of the process
//! baseline.

mod claims;
mod environment;
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

    /// A line about the step under way, between its repetitions.
    pub(crate) fn note(&mut self, note: &str) {
        let clear = if self.live { "\r\x1b[2K" } else { "" };
        eprintln!(
            "{clear}[{}/{}] {}: {note}",
            self.step, self.total, self.name
        );
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
    if let [flag, round_trips, reps] = args.as_slice()
        && flag == scenarios::PINNED_FLAG
    {
        scenarios::pinned_round_trip_child(
            round_trips.parse().expect("a round trip count"),
            reps.parse().expect("a repetition count"),
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
        println!(
            "{}",
            serde_json::to_string(&memory::bounded(checkpoint, total)).expect("serializable")
        );
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return;
    }
    let options = match Options::parse(&args) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("bench-report: {why}");
            std::process::exit(2);
        }
    };
    let quick = options.quick;
    let run = |group: &str| options.runs(group);

    // Read before anything runs: the load average says what the machine was doing before.
    let mut environment = environment::Environment::read();
    let run_started = environment::CpuSample::now();
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
    // Steps: the async series and spawned, threaded, 3 process, 3 publisher, 1 distributed,
    // 2 counted.
    let steps = [
        ("async", 2),
        ("threaded", 1),
        ("process", 3),
        ("publisher", 3),
        ("nats", 1),
        ("instructions", 2),
    ];
    let mut progress = Progress::new(
        steps
            .iter()
            .filter(|(group, _)| run(group))
            .map(|(_, steps)| steps)
            .sum(),
    );
    let mut results = scenarios::local_strategies(
        &rt,
        sizes,
        reps,
        (run("async"), run("threaded")),
        &mut progress,
    );
    if run("process") {
        results.extend(scenarios::process(
            &rt,
            round_trips,
            pipelined,
            reps,
            &mut progress,
        ));
        results.extend(scenarios::pinned_round_trip(
            round_trips,
            reps,
            &mut progress,
        ));
    }
    if run("publisher") {
        results.extend(scenarios::publisher(&rt, messages, reps, &mut progress));
    }
    if run("nats") {
        results.extend(nats::throughput(
            &rt,
            if quick { 2_000 } else { 20_000 },
            reps,
            &mut progress,
        ));
    }
    let instructions = run("instructions")
        .then(|| instructions::measure(if quick { 5_000 } else { 20_000 }, &mut progress))
        .flatten();
    let publisher_latency = run("publisher").then(|| {
        eprintln!("publisher latency ...");
        scenarios::publisher_latency(&rt, if quick { 1_000 } else { 5_000 })
    });
    let memory = run("memory").then(|| {
        eprintln!("memory: {jobs} retained closed jobs ...");
        let mut memory = memory::retained_in_child(jobs)?;
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
        Some(memory)
    });

    let memory = memory.flatten();
    environment.busy_elsewhere = run_started
        .zip(environment::CpuSample::now())
        .and_then(|(before, after)| before.elsewhere_until(&after));
    let (claims, claims_unread) = match claims::read(&claims::workspace_root()) {
        Ok(read) => (claims::check(&read, &results), None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let report = report::Report {
        quick,
        only: options.only.clone(),
        environment,
        scenarios: results,
        instructions,
        publisher_latency,
        memory,
        claims,
        claims_unread,
    };
    if let Err(e) = report::write(&report, &options.out) {
        eprintln!(
            "could not write the report to {}: {e}",
            options.out.display()
        );
        std::process::exit(1);
    }
    println!("{}", report::markdown(&report));
    eprintln!("report written to {}", options.out.display());
}

/// Runs this binary again with `args` (a child flag and its arguments) and reads what it prints
/// as JSON: the measurements that need a process of their own (fresh, or pinned). An error says
/// what failed and what the child said on stderr.
pub(crate) fn measure_in_child<T: serde::de::DeserializeOwned>(args: &[&str]) -> Result<T, String> {
    let output = std::env::current_exe()
        .and_then(|exe| std::process::Command::new(exe).args(args).output())
        .map_err(|e| format!("could not run the child: {e}"))?;
    let said = || String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        return Err(format!("{}: {}", output.status, said()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("unreadable result ({e}); the child said: {}", said()))
}

/// Whether `group` runs when `--only` picked `only` (every group runs without it).
pub(crate) fn runs(only: Option<&[String]>, group: &str) -> bool {
    only.is_none_or(|only| only.iter().any(|g| g == group))
}

/// `bench-report --help` (usually run as `cargo xtask bench`, which passes these on).
const USAGE: &str = "usage: bench-report [--quick] [--out DIR] [--only GROUP[,GROUP...]]

Every scenario beside its raw baseline, interleaved, in this one process; writes report.md,
report.json and report.svg to DIR (default target/bench-report).

  --quick        few repetitions, small N: a smoke run
  --only GROUPS  only these groups: async, threaded, process, publisher, nats,
                 instructions, memory (comma-separated)";

/// The groups of scenarios, as `--only` names them.
const GROUPS: [&str; 7] = [
    "async",
    "threaded",
    "process",
    "publisher",
    "nats",
    "instructions",
    "memory",
];

/// The report's command line: `[--quick] [--out DIR] [--only GROUP[,GROUP...]]`.
#[derive(Debug, PartialEq)]
struct Options {
    quick: bool,
    out: PathBuf,
    /// The groups to run; `None` runs them all.
    only: Option<Vec<String>>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self {
            quick: false,
            out: PathBuf::from("target/bench-report"),
            only: None,
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--out" => {
                    let dir = args.next().ok_or("`--out` needs a directory")?;
                    options.out = PathBuf::from(dir);
                }
                "--only" => {
                    let list = args
                        .next()
                        .ok_or_else(|| format!("`--only` needs a group: {}", GROUPS.join(", ")))?;
                    let mut groups = Vec::new();
                    for group in list.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                        if !GROUPS.contains(&group) {
                            return Err(format!(
                                "unknown group `{group}` (expected one of {})",
                                GROUPS.join(", ")
                            ));
                        }
                        groups.push(group.to_owned());
                    }
                    if groups.is_empty() {
                        return Err(format!("`--only` needs a group: {}", GROUPS.join(", ")));
                    }
                    options.only.get_or_insert_with(Vec::new).extend(groups);
                }
                other => {
                    return Err(format!(
                        "unknown argument `{other}` (expected --quick, --out DIR, --only GROUP[,GROUP...])"
                    ));
                }
            }
        }
        Ok(options)
    }

    fn runs(&self, group: &str) -> bool {
        runs(self.only.as_deref(), group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn no_arguments_run_every_group_in_full() {
        let options = parse(&[]).expect("valid");
        assert!(!options.quick);
        assert_eq!(options.out, PathBuf::from("target/bench-report"));
        assert!(GROUPS.iter().all(|group| options.runs(group)));
    }

    #[test]
    fn only_runs_the_groups_named() {
        let options = parse(&["--quick", "--only", "async,memory", "--out", "x"]).expect("valid");
        assert!(options.quick);
        assert_eq!(options.out, PathBuf::from("x"));
        assert!(options.runs("async") && options.runs("memory"));
        assert!(!options.runs("threaded") && !options.runs("nats"));
        let twice = parse(&["--only", "nats", "--only", "process"]).expect("valid");
        assert!(twice.runs("nats") && twice.runs("process") && !twice.runs("async"));
    }

    #[test]
    fn bad_arguments_are_refused_with_what_was_expected() {
        let unknown = parse(&["--only", "async,gpu"]).expect_err("no such group");
        assert!(unknown.contains("`gpu`") && unknown.contains("instructions"));
        assert!(parse(&["--only"]).is_err());
        assert!(parse(&["--only", ","]).is_err());
        assert!(parse(&["--out"]).is_err());
        let flag = parse(&["--fast"]).expect_err("no such flag");
        assert!(flag.contains("`--fast`"));
    }
}
