//! Records the compiler's version for the benchmark report, which names what built it.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RUSTC");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // Left out of the report, rather than failing the build, if the compiler cannot say.
    if let Ok(output) = Command::new(rustc).arg("-V").output()
        && output.status.success()
    {
        let version = String::from_utf8_lossy(&output.stdout);
        println!("cargo:rustc-env=BENCH_RUSTC_VERSION={}", version.trim());
    }
}
