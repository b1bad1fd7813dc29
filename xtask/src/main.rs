//! Project automation, run as `cargo xtask <command>`:
//!
//! - `bench [--quick] [--criterion] [-- <criterion args>]`: every scenario beside its raw
//!   baseline in one run, reported in `target/bench-report/`; optionally the criterion benches.
//! - `docs`: the workspace's rustdoc, with warnings (broken intra-doc links included) denied.

mod bench;
mod docs;

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
    "usage: cargo xtask <command>\n\n\
     commands:\n  \
     bench [--quick] [--criterion] [-- <criterion args>]\n  \
                                             scenarios beside raw baselines -> target/bench-report\n  \
     docs                                    build the workspace rustdoc, warnings denied"
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
