//! `cargo xtask docs`: the workspace's rustdoc with warnings denied.

use anyhow::{Result, bail};

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(unknown) = args.first() {
        bail!("`docs` takes no arguments, got `{unknown}`");
    }
    crate::cargo(
        &[
            "doc",
            "--workspace",
            "--all-features",
            "--no-deps",
            "--exclude",
            "xtask",
            "--exclude",
            "benches",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}
