//! A runnable NATS worker serving the example nodes of [`exec_nats::example_nodes`] (`echo`,
//! `nap`, `fail`, `count`, `burst`, `pad`, `wait-for`).
//!
//! Your own worker is the same few lines with your registry:
//! `NatsWorker::builder(registry()).connect().await?.run_until(ctrl_c).await`.
//!
//! `exec-nats-worker --help` lists the flags. Stops on Ctrl-C or SIGTERM, finishing what it runs.

use std::time::Duration;

use clap::Parser;
use exec_nats::{NatsConfig, NatsWorker, example_nodes};
use tracing_subscriber::EnvFilter;

/// A NATS worker serving the example nodes: echo, nap, fail, count, burst, pad and wait-for
/// (see `exec_nats::example_nodes`).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The server URL [default: $EXEC_NATS_URL, else nats://127.0.0.1:4222].
    #[arg(long)]
    url: Option<String>,
    /// The work-queue stream's name [default: EXEC_TASKS].
    #[arg(long)]
    stream: Option<String>,
    /// The subjects' prefix [default: exec].
    #[arg(long)]
    prefix: Option<String>,
    /// The mode whose tasks this worker takes [default: distributed].
    #[arg(long)]
    mode: Option<String>,
    /// Tasks run at once [default: the machine's cores].
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long the server waits for an acknowledgement before redelivering, in milliseconds
    /// [default: 30000].
    #[arg(long)]
    ack_wait_ms: Option<u64>,
    /// Deliveries of one task before the server gives up on it [default: 5].
    #[arg(long)]
    max_deliver: Option<i64>,
    /// For tests: exit without acknowledging, after this many tasks.
    #[arg(long, hide = true)]
    exit_before_ack_after: Option<u64>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let defaults = NatsConfig::default();
    let config = NatsConfig {
        url: args.url.unwrap_or(defaults.url.clone()),
        stream: args.stream.unwrap_or(defaults.stream.clone()),
        prefix: args.prefix.unwrap_or(defaults.prefix.clone()),
        mode: args.mode.unwrap_or(defaults.mode.clone()),
        ..defaults
    };
    // What it serves, so that a mode or stream that does not match the submitting side's is
    // seen here rather than as requests that never end.
    let serving = format!(
        "mode `{}` (subject {}) of stream {} at {}",
        config.mode,
        config.task_subject(),
        config.stream,
        without_credentials(&config.url)
    );
    let mut builder = NatsWorker::builder(example_nodes::registry()).config(config);
    if let Some(n) = args.concurrency {
        builder = builder.concurrency(n);
    }
    if let Some(ms) = args.ack_wait_ms {
        builder = builder.ack_wait(Duration::from_millis(ms));
    }
    if let Some(n) = args.max_deliver {
        builder = builder.max_deliver(n);
    }
    if let Some(n) = args.exit_before_ack_after {
        builder = builder.exit_before_ack_after(n);
    }
    let worker = builder.connect().await?;
    eprintln!("serving {serving}");
    // Tells a parent (a test, a supervisor) that the consumer is bound.
    println!("ready {}", worker.id());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    worker
        .run_until(async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    eprintln!("stopped: the tasks it was running are finished");
    Ok(())
}

/// `urls` (comma-separated) without the `user:password@` (or token) of each, which the line
/// saying what the worker serves must not write to its logs.
fn without_credentials(urls: &str) -> String {
    let host = |url: &str| match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://{host}"),
        (None, Some((_, host))) => host.to_owned(),
        _ => url.to_owned(),
    };
    urls.split(',').map(host).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_left_out_of_the_url_it_prints() {
        let cases = [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "nats://me:s3cret@a:4222,tls://tok@b:4222",
                "nats://a:4222,tls://b:4222",
            ),
            ("user:pw@host:4222", "host:4222"),
        ];
        for (url, printed) in cases {
            assert_eq!(super::without_credentials(url), printed);
        }
    }
}
