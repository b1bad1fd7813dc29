//! Project automation, run as `cargo xtask <command>`:
//!
//! - `bench [--quick] [--only GROUP[,GROUP...]] [--criterion] [-- <criterion args>]`: every
//!   scenario (or only some groups) beside its raw baseline in one run, reported in
//!   `target/bench-report/`; optionally the criterion benches.
//! - `docs [--check]`: generates `docs/components/task_execution.md` from the crates' sources
//!   (`--check`: fails when the committed one is stale), checks that the Rust snippets of the
//!   README and `docs/` match compiled code, then builds the rustdoc with warnings (broken
//!   intra-doc links included) denied.

mod bench;
mod docs;
mod snippets;

use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let rest: Vec<String> = args.collect();
    match command.as_deref() {
        Some("bench") => bench::run(&rest),
        Some("docs") => docs::run(&rest),
        Some("help" | "--help" | "-h") | None => {
            println!("{}", usage());
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{}", usage()),
    }
}

fn usage() -> &'static str {
    r"usage: cargo xtask <command>

commands:
  bench [--quick] [--only GROUP[,GROUP...]] [--criterion] [-- <criterion args>]
        every scenario beside its raw baseline, in one run -> target/bench-report/
        (`cargo xtask bench --help` for the groups)
  docs [--check]
        generate docs/components/task_execution.md (--check: fail if stale),
        check the README's and docs/'s Rust snippets against compiled code,
        then build the rustdoc with warnings denied"
}

/// Runs `cargo` with `args` from the workspace root, failing when it fails.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(args).current_dir(workspace_root());
    for (k, v) in envs {
        command.env(k, v);
    }
    let status = command
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed with {status}", args.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}
