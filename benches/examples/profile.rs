//! Runs one scenario in a loop, for a profiler to watch:
//!
//! ```text
//! cargo build --release -p benches --example profile
//! perf record -g target/release/examples/profile async 100000 20
//! ```
//!
//! Scenarios: `async`, `threaded` (N `submit` futures awaited together, as the benchmark does),
//! `async-handles` (N handles from `try_spawn`, awaited in order), `raw-async`, `raw-threaded`,
//! `fan-out-16`, `broadcast-16`, `process` (N portable tasks in flight over a pool of 2 workers,
//! started anew each round), `process-4` (the same from 4 callers awaiting one task at a time),
//! `process-1` (one caller: the round trip).
//! Arguments: scenario, N (tasks or messages per round), rounds.
//! With `COUNT_ALLOCATIONS=1` it also reports heap allocations per task, and by size.
//! Under `valgrind --tool=callgrind` it gives instruction counts per function that do not depend
//! on the machine's load (docs/benchmarks.md, "Profiling one scenario").

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use benches::{
    broadcast_fan_out, publish_fan_out, raw_rayon_spawn_crossbeam, raw_tokio_spawn_channel,
    request_ids, runtime, spawn_then_await, started_coordinator, submit_trivial,
};
use coordinator::ExecutionMode;

/// Counts heap allocations, to report how many each task costs.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Allocations by size, in 16-byte classes (the last one takes everything from 4,080 bytes).
static SIZES: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Counting is off unless asked for (`COUNT_ALLOCATIONS=1`): one counter shared by every thread
/// slows the scenarios down.
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            SIZES[layout.size().min(4095) / 16].fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    // The `process` scenario's workers are this binary.
    coordinator::run_worker_if_requested(&benches::registry());
    COUNTING.store(
        std::env::var_os("COUNT_ALLOCATIONS").is_some(),
        Ordering::Relaxed,
    );
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
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..rounds {
        total += match scenario {
            "async" => submit_trivial(&rt, &coordinator, &ids, &ExecutionMode::ASYNC),
            "threaded" => submit_trivial(&rt, &coordinator, &ids, &ExecutionMode::THREADED),
            "async-handles" => spawn_then_await(&rt, &coordinator, &ids),
            "raw-async" => raw_tokio_spawn_channel(&rt, &ids),
            "raw-threaded" => raw_rayon_spawn_crossbeam(&pool, &ids),
            "process" => process_pipelined(&rt, n),
            "process-1" => process_callers(&rt, n, 1),
            "process-4" => process_callers(&rt, n, 4),
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
    if COUNTING.load(Ordering::Relaxed) {
        let allocations = (ALLOCATIONS.load(Ordering::Relaxed) - allocations_before) as f64
            / (n as f64 * f64::from(rounds.max(1)));
        println!("{allocations:.1} allocations per task (times above include counting them)");
        // The sizes seen at least once per 100 tasks: which allocations a task makes.
        let tasks = n as f64 * f64::from(rounds.max(1));
        for (class, count) in SIZES.iter().enumerate() {
            let per_task = count.load(Ordering::Relaxed) as f64 / tasks;
            if per_task >= 0.01 {
                println!(
                    "  {}..{} bytes: {per_task:.2} per task",
                    class * 16,
                    class * 16 + 16
                );
            }
        }
    }
    rt.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

/// N trivial portable tasks in flight at once through a fresh pool of 2 worker processes (this
/// binary); the pool's start is not counted.
fn process_pipelined(rt: &tokio::runtime::Runtime, n: u64) -> Duration {
    use coordinator::{ProcessExecutionStrategy, Task, TaskExecutionStrategy};
    rt.block_on(async {
        let strategy = ProcessExecutionStrategy::builder(benches::registry())
            .workers(2)
            .prefetch(1023)
            .start()
            .await
            .expect("worker pool");
        let start = std::time::Instant::now();
        let calls = (0..n).map(|i| {
            task_core::run(
                &strategy,
                Task::portable("r", benches::Echo(i)).into_erased(),
            )
        });
        let done = futures::future::join_all(calls).await;
        let elapsed = start.elapsed();
        assert!(done.iter().all(Result::is_ok), "every echo succeeds");
        strategy.shutdown(Duration::from_secs(5)).await;
        elapsed
    })
}

/// N trivial portable tasks through a fresh pool of 2 worker processes, from `callers` tasks
/// each awaiting one at a time (N / callers each); the pool's start is not counted.
fn process_callers(rt: &tokio::runtime::Runtime, n: u64, callers: u64) -> Duration {
    use coordinator::{ProcessExecutionStrategy, Task, TaskExecutionStrategy};
    rt.block_on(async {
        let strategy = Arc::new(
            ProcessExecutionStrategy::builder(benches::registry())
                .workers(2)
                .prefetch(1023)
                .start()
                .await
                .expect("worker pool"),
        );
        let start = std::time::Instant::now();
        let joins: Vec<_> = (0..callers)
            .map(|_| {
                let strategy = Arc::clone(&strategy);
                tokio::spawn(async move {
                    for i in 0..n / callers {
                        let task = Task::portable("r", benches::Echo(i)).into_erased();
                        task_core::run(&*strategy, task)
                            .await
                            .expect("every echo succeeds");
                    }
                })
            })
            .collect();
        for join in joins {
            join.await.expect("a caller task");
        }
        let elapsed = start.elapsed();
        strategy.shutdown(Duration::from_secs(5)).await;
        elapsed
    })
}
