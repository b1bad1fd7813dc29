//! A runnable NATS worker serving the example nodes (`echo`, `nap`, `fail`).
//!
//! Your own worker is the same few lines with your registry:
//! `NatsWorker::builder(registry()).connect().await?.run_until(ctrl_c).await`.
//!
//! Flags: `--url URL` (default `$EXEC_NATS_URL` or `nats://127.0.0.1:4222`), `--stream NAME`,
//! `--prefix P`, `--mode M`, `--concurrency N`, `--ack-wait-ms MS`, `--max-deliver N`, and, for
//! tests only, `--exit-before-ack-after N`. Stops on Ctrl-C or SIGTERM, finishing what it runs.

use std::time::Duration;

use exec_nats::{NatsWorker, example_nodes};
use tracing_subscriber::EnvFilter;

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .ok_or_else(|| format!("{name} needs a value"))?
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}: not a valid value")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut builder = NatsWorker::builder(example_nodes::registry());
    if let Some(url) = flag::<String>(&args, "--url")? {
        builder = builder.url(url);
    }
    if let Some(stream) = flag::<String>(&args, "--stream")? {
        builder = builder.stream(stream);
    }
    if let Some(prefix) = flag::<String>(&args, "--prefix")? {
        builder = builder.prefix(prefix);
    }
    if let Some(mode) = flag::<String>(&args, "--mode")? {
        builder = builder.mode(mode);
    }
    if let Some(n) = flag::<usize>(&args, "--concurrency")? {
        builder = builder.concurrency(n);
    }
    if let Some(ms) = flag::<u64>(&args, "--ack-wait-ms")? {
        builder = builder.ack_wait(Duration::from_millis(ms));
    }
    if let Some(n) = flag::<i64>(&args, "--max-deliver")? {
        builder = builder.max_deliver(n);
    }
    if let Some(n) = flag::<u64>(&args, "--exit-before-ack-after")? {
        builder = builder.exit_before_ack_after(n);
    }
    let worker = builder.connect().await?;
    // Tells a parent (a test, a supervisor) that the consumer is bound.
    println!("ready {}", worker.id());
    worker
        .run_until(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
