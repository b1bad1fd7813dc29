//! `cargo xtask bench`: every scenario beside its raw baseline, in one run, into a report.
//!
//! - `cargo xtask bench`: the full report (`target/bench-report/report.{md,json,svg}`).
//! - `--quick`: a smoke run that finishes in well under a minute on a 2-core machine; it
//!   reports numbers and never fails on a slow one.
//! - `--criterion`: also run the criterion benches of the hot pieces (in their quick mode with
//!   `--quick`); arguments after `--` go to criterion.

use anyhow::Result;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let (ours, passthrough) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    for arg in ours {
        if !matches!(arg.as_str(), "--quick" | "--criterion") {
            anyhow::bail!("unknown `bench` flag `{arg}` (expected --quick, --criterion)");
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
