//! `cargo xtask bench`: the criterion benchmarks, each beside its raw baseline in the same run.

use anyhow::Result;

/// Runs every bench target of the `benches` package. `--quick` asks criterion for its quick
/// mode (a smoke run that still reports numbers); anything after `--` goes to criterion.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let passthrough: Vec<&str> = args
        .iter()
        .skip_while(|a| a.as_str() != "--")
        .skip(1)
        .map(String::as_str)
        .collect();
    let mut cargo_args = vec!["bench", "--package", "benches", "--benches", "--"];
    if quick {
        cargo_args.extend(["--quick", "--noplot"]);
    }
    cargo_args.extend(passthrough);
    crate::cargo(&cargo_args, &[])
}
