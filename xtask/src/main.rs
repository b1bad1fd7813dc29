//! Project automation, run as `cargo xtask <command>`:
//!
//! - `bench [--quick] [--only GROUP[,GROUP...]] [--criterion] [-- <criterion args>]`: every
//!   scenario (or only some groups) beside its raw baseline in one run, reported in
//!   `$CARGO_TARGET_DIR/bench-report/` (`target/bench-report/` by default); optionally the
//!   criterion benches.
//! - `docs [--check]`: generates `docs/components/task_execution.md` from the crates' sources
//!   (`--check`: fails when the committed one is stale), checks that the Rust snippets of the
//!   README and `docs/` match compiled code, then builds the rustdoc with warnings (broken
//!   intra-doc links included) denied.

mod docs;
mod snippets;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = r"usage: cargo xtask <command>

  bench [--quick] [--only GROUP[,GROUP...]] [--out DIR] [--criterion] [-- <criterion args>]
        every scenario beside its raw baseline, interleaved, in one run; writes
        report.{md,json,svg} to DIR ($CARGO_TARGET_DIR/bench-report, or target/bench-report)
          --quick        a smoke run: few repetitions, small N
          --only GROUPS  only these groups: async, threaded, process, publisher, nats,
                         instructions, memory (comma-separated; the docs' claims on the
                         others are reported as not measured)
          --criterion    also run the criterion benches of the hot pieces (in their quick
                         mode with --quick); arguments after `--` go to criterion
  docs [--check]
        generate docs/components/task_execution.md (--check: fail if stale),
        check the README's and docs/'s Rust snippets against compiled code,
        then build the rustdoc with warnings denied";

/// Errors print as their chain of causes, without a backtrace (CI sets `RUST_BACKTRACE`, and
/// the line that matters would scroll away).
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ours = &args[..args.iter().position(|a| *a == "--").unwrap_or(args.len())];
    match ours {
        [] => println!("{USAGE}"),
        _ if ours.iter().any(|a| matches!(*a, "help" | "--help" | "-h")) => println!("{USAGE}"),
        ["bench", ..] => bench(&args[1..])?,
        ["docs"] => docs::run(false)?,
        ["docs", "--check"] => docs::run(true)?,
        _ => bail!("unknown command or arguments {args:?}\n\n{USAGE}"),
    }
    Ok(())
}

/// The groups of scenarios, as `cargo xtask bench --only` names them.
const GROUPS: &str = "async, threaded, process, publisher, nats, instructions, memory";

/// `cargo xtask bench`: checks the flags, runs the report, then the criterion benches when asked
/// for.
fn bench(args: &[&str]) -> Result<()> {
    let (ours, criterion_args) =
        args.split_at(args.iter().position(|a| *a == "--").unwrap_or(args.len()));
    let (mut report, mut only, mut criterion) = (Vec::new(), Vec::new(), false);
    let mut flags = ours.iter();
    while let Some(&flag) = flags.next() {
        let mut value = || {
            flags
                .next()
                .copied()
                .with_context(|| format!("`{flag}` needs a value"))
        };
        match flag {
            "--quick" => report.push(flag),
            "--criterion" => criterion = true,
            "--out" => report.extend([flag, value()?]),
            "--only" => {
                for group in value()?.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                    if !GROUPS.split(", ").any(|known| known == group) {
                        bail!("unknown group `{group}`: expected {GROUPS}");
                    }
                    only.push(group);
                }
            }
            _ => bail!("unknown flag `{flag}`\n\n{USAGE}"),
        }
    }
    let only = only.join(",");
    if !only.is_empty() {
        report.extend(["--only", &only]);
    }
    cargo(
        "run --release --quiet -p benches --bin bench-report --",
        &report,
        &[],
    )?;
    if criterion {
        let quick = if report.contains(&"--quick") {
            "--quick --noplot"
        } else {
            ""
        };
        let passed = criterion_args.get(1..).unwrap_or_default();
        cargo(
            &format!("bench -p benches --benches -- {quick}"),
            passed,
            &[],
        )?;
    }
    Ok(())
}

/// Runs `cargo` with the words of `command`, then `more`, from the workspace root, failing when
/// it fails.
fn cargo(command: &str, more: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let args: Vec<&str> = command
        .split_whitespace()
        .chain(more.iter().copied())
        .collect();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(&args)
        .current_dir(workspace_root())
        .envs(envs.iter().copied());
    let status = cargo
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    root.map_or_else(|| ".".into(), Path::to_path_buf)
}
