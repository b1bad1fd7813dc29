//! Project automation, run as `cargo xtask <command>`: `bench` (every scenario beside its raw
//! baseline, and the criterion benches) and `docs` (the generated design document, the docs'
//! snippets and the rustdoc); `cargo xtask help` says more.

mod docs;
mod snippets;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use clap::Parser;
use clap::builder::PossibleValuesParser;

#[derive(Parser)]
#[command(bin_name = "cargo xtask")]
enum Xtask {
    /// Every scenario beside its raw baseline, interleaved, in one run; writes
    /// report.{md,json,svg} to $CARGO_TARGET_DIR/bench-report (or target/bench-report).
    Bench(Bench),
    /// Generates docs/components/task_execution.md, checks the README's and docs/'s Rust
    /// snippets against compiled code, then builds the rustdoc with warnings denied.
    Docs {
        /// Fail if the committed document is stale, instead of writing it.
        #[arg(long)]
        check: bool,
    },
}

#[derive(clap::Args)]
struct Bench {
    /// A smoke run: few repetitions, small N.
    #[arg(long)]
    quick: bool,
    /// Only these groups, comma-separated (the docs' claims on the others are reported as not
    /// measured).
    #[arg(long, value_delimiter = ',')]
    #[arg(value_parser = PossibleValuesParser::new(GROUPS.split(", ")))]
    only: Vec<String>,
    /// Where the report goes.
    #[arg(long, value_name = "DIR")]
    out: Option<String>,
    /// Also run the criterion benches of the hot pieces (in their quick mode with --quick).
    #[arg(long)]
    criterion: bool,
    /// Arguments for criterion.
    #[arg(last = true)]
    criterion_args: Vec<String>,
}

/// The groups of scenarios `bench-report --only` knows.
const GROUPS: &str = "async, threaded, process, publisher, nats, instructions, memory";

/// Errors print as their chain of causes, without a backtrace (CI sets `RUST_BACKTRACE`, and
/// the line that matters would scroll away).
fn main() -> std::process::ExitCode {
    let done = match Xtask::parse() {
        Xtask::Bench(args) => bench(args),
        Xtask::Docs { check } => docs::run(check),
    };
    if let Err(error) = done {
        eprintln!("Error: {error:#}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

/// `cargo xtask bench`: the report, then the criterion benches when asked for.
fn bench(args: Bench) -> Result<()> {
    let mut report = Vec::new();
    if args.quick {
        report.push("--quick".to_owned());
    }
    if !args.only.is_empty() {
        report.extend(["--only".to_owned(), args.only.join(",")]);
    }
    if let Some(out) = args.out {
        report.extend(["--out".to_owned(), out]);
    }
    let run_report = "run --release --quiet -p benches --bin bench-report --";
    cargo(run_report, &report, &[])?;
    if args.criterion {
        let quick = if args.quick { "--quick --noplot" } else { "" };
        let bench = format!("bench -p benches --benches -- {quick}");
        cargo(&bench, &args.criterion_args, &[])?;
    }
    Ok(())
}

/// Runs `cargo` with the words of `command`, then `more`, from the workspace root, failing when
/// it fails.
fn cargo(command: &str, more: &[String], envs: &[(&str, &str)]) -> Result<()> {
    let more = more.iter().map(String::as_str);
    let args: Vec<&str> = command.split_whitespace().chain(more).collect();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo.args(&args).current_dir(workspace_root());
    let status = cargo.envs(envs.iter().copied()).status();
    let args = args.join(" ");
    let status = status.with_context(|| format!("running cargo {args}"))?;
    ensure!(status.success(), "cargo {args} failed with {status}");
    Ok(())
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
    root.map_or_else(|| ".".into(), Path::to_path_buf)
}
