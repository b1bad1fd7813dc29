//! `cargo xtask bench`: every scenario beside its raw baseline, in one run, into a report.
//!
//! - `cargo xtask bench`: the full report (`target/bench-report/report.{md,json,svg}`).
//! - `--quick`: a smoke run that finishes in well under a minute on a 2-core machine; it
//!   reports numbers and never fails on a slow one.
//! - `--only GROUP[,GROUP...]`: only those groups of scenarios (`async`, `threaded`, `process`,
//!   `publisher`, `nats`, `instructions`, `memory`); the report says which targets were not
//!   measured.
//! - `--criterion`: also run the criterion benches of the hot pieces (in their quick mode with
//!   `--quick`); arguments after `--` go to criterion.

use anyhow::Result;

/// `cargo xtask bench --help`.
const USAGE: &str = r"usage: cargo xtask bench [--quick] [--only GROUP[,GROUP...]] [--criterion] [-- <criterion args>]

Runs every scenario beside its raw baseline, interleaved, in one process, and writes
target/bench-report/report.{md,json,svg}.

  --quick        a smoke run: few repetitions, small N (well under a minute)
  --only GROUPS  only these groups: async, threaded, process, publisher, nats,
                 instructions, memory (comma-separated; targets of the others
                 are reported as not measured)
  --criterion    also run the criterion benches of the hot pieces; arguments
                 after `--` go to criterion";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let (ours, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    // Every `--only` list, passed on as one.
    let mut only: Vec<&str> = Vec::new();
    let mut flags = ours.iter();
    while let Some(arg) = flags.next() {
        match arg.as_str() {
            "--quick" | "--criterion" => {}
            "--only" => {
                let groups = flags
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("`--only` needs a group list\n\n{USAGE}"))?;
                only.push(groups);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => anyhow::bail!("unknown `bench` flag `{arg}`\n\n{USAGE}"),
        }
    }
    let quick = ours.iter().any(|a| a == "--quick");
    let out = crate::workspace_root().join("target").join("bench-report");
    let out = out.to_string_lossy().into_owned();
    let mut report = vec![
        "run",
        "--release",
        "--quiet",
        "--package",
        "benches",
        "--bin",
        "bench-report",
        "--",
        "--out",
        &out,
    ];
    if quick {
        report.push("--quick");
    }
    let only = only.join(",");
    if !only.is_empty() {
        report.extend(["--only", &only]);
    }
    crate::cargo(&report, &[])?;

    if ours.iter().any(|a| a == "--criterion") {
        let mut criterion = vec!["bench", "--package", "benches", "--benches", "--"];
        if quick {
            criterion.extend(["--quick", "--noplot"]);
        }
        criterion.extend(passthrough.iter().map(String::as_str));
        crate::cargo(&criterion, &[])?;
    }
    Ok(())
}
