//! Runs one scenario in a loop, for a profiler to watch:
//!
//! ```text
//! cargo build --release -p benches --example profile
//! perf record -g target/release/examples/profile async 100000 20
//! ```
//!
//! Scenarios: `async`, `threaded`, `raw-async`, `raw-threaded`, `fan-out-16`, `broadcast-16`.
//! Arguments: scenario, N (tasks or messages per round), rounds.

use std::sync::Arc;
use std::time::Duration;

use benches::{
    broadcast_fan_out, publish_fan_out, raw_rayon_spawn_crossbeam, raw_tokio_spawn_channel,
    request_ids, runtime, started_coordinator, submit_trivial,
};
use coordinator::ExecutionMode;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map_or("async", String::as_str);
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
    let rt = runtime();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool"),
    );
    let (publisher, coordinator) = started_coordinator(&rt, Some(&pool));
    let ids = request_ids(n);
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        total += match scenario {
            "async" => submit_trivial(&rt, &coordinator, &ids, &ExecutionMode::ASYNC),
            "threaded" => submit_trivial(&rt, &coordinator, &ids, &ExecutionMode::THREADED),
            "raw-async" => raw_tokio_spawn_channel(&rt, &ids),
            "raw-threaded" => raw_rayon_spawn_crossbeam(&pool, &ids),
            "fan-out-16" => publish_fan_out(&rt, 16, n),
            "broadcast-16" => broadcast_fan_out(&rt, 16, n),
            other => {
                eprintln!("unknown scenario {other}");
                std::process::exit(2);
            }
        };
    }
    let per = total.as_nanos() / u128::from(n) / u128::from(rounds.max(1));
    println!("{scenario}: {per} ns per task over {rounds} rounds of {n}");
    rt.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}
