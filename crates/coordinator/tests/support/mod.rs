//! Shared helpers for the coordinator's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{
    BoxError, Buffer, Coordinator, CoordinatorBuilder, RequestCompletionMessage,
    RequestCompletionPublisher, Task, TaskExecutionStrategy, TreeEvent,
};
use task_core::{BoxFuture, Completion, ErasedTask};

/// What a tree's reader saw, as a line: `joined ID (parent P)`, `ID: EVENT`, `ID ended RESULT`.
pub fn tree_line(event: &TreeEvent) -> String {
    match event {
        TreeEvent::Joined { info, .. } => {
            let parent = info.parent_id().map_or("none".into(), |p| p.to_string());
            format!("joined {} (parent {parent})", info.request_id())
        }
        TreeEvent::Event {
            request_id, event, ..
        } => format!("{request_id}: {event}"),
        TreeEvent::Ended {
            request_id, result, ..
        } => format!("{request_id} ended {result}"),
        other => panic!("an event the tests do not know: {other:?}"),
    }
}

/// A started publisher and a coordinator with the async strategy, started on it.
pub fn started() -> (RequestCompletionPublisher, Coordinator) {
    started_from(Coordinator::builder().with_async())
}

/// A started publisher and the coordinator `builder` makes, started on it.
pub fn started_from(builder: CoordinatorBuilder) -> (RequestCompletionPublisher, Coordinator) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = builder.build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator)
}

/// A started publisher and a coordinator with the async strategy and the threaded strategy
/// `threaded` builds.
#[cfg(feature = "threaded")]
pub fn started_threaded(
    threaded: coordinator::ThreadedBuilder,
) -> (RequestCompletionPublisher, Coordinator) {
    let threaded = threaded.build().unwrap();
    let mode = coordinator::ExecutionMode::THREADED;
    started_from(Coordinator::builder().with_async().strategy(mode, threaded))
}

/// Records every message the bus carries, for counting terminal messages per request.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<RequestCompletionMessage>>>);

impl Recorder {
    /// Records on an unbounded buffer, so it sees every message. The callback runs on a thread
    /// of its own: read after the publisher's shutdown, or through `wait_for`.
    pub fn attach(publisher: &RequestCompletionPublisher) -> Self {
        let recorder = Self::default();
        let sink = Arc::clone(&recorder.0);
        publisher
            .subscribe_with(Buffer::Unbounded, move |m| {
                sink.lock()
                    .unwrap()
                    .push(m.expect("an unbounded subscriber misses nothing"))
            })
            .unwrap();
        recorder
    }

    /// Waits (up to 10 s) until at least `n` messages were recorded.
    pub async fn wait_for(&self, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.0.lock().unwrap().len() < n && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn messages(&self) -> Vec<RequestCompletionMessage> {
        self.0.lock().unwrap().clone()
    }

    /// Terminal messages per request id.
    pub fn terminal_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in self.0.lock().unwrap().iter().filter(|m| m.is_terminal()) {
            *counts
                .entry(m.request_id().unwrap().to_string())
                .or_insert(0) += 1;
        }
        counts
    }
}

/// A trivial async task returning `value`.
pub fn value_task(id: &str, value: u64) -> Task<u64> {
    Task::from_fn(id.to_string(), "value", move || async move {
        Ok::<_, BoxError>(value)
    })
}

/// A strategy that runs tasks inline and counts its shutdowns.
#[derive(Default)]
pub struct CountingInline {
    pub shutdowns: AtomicUsize,
    pub executed: AtomicUsize,
}

impl TaskExecutionStrategy for CountingInline {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        self.executed.fetch_add(1, Ordering::SeqCst);
        completion.spawn(task.run_inline());
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }

    fn name(&self) -> &str {
        "counting-inline"
    }
}

/// A seeded source of choices, for the chaos tests: the same seed, the same run.
pub struct Rng(fastrand::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.u64(..)
    }

    /// A number below `n` (0 for 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n.max(1))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn micros(&mut self, max: u64) -> Duration {
        Duration::from_micros(self.below(max))
    }
}

/// A multi-thread runtime with `threads` workers and every driver.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// What [`run_chaos_seeds`] ran, and the seeds that failed.
pub struct ChaosRun {
    pub first: u64,
    pub seeds: u64,
    pub ops: u64,
    pub failed: Vec<u64>,
    pub elapsed: std::time::Duration,
}

/// Runs `run_seed(seed, ops)` for each seed the environment asks for (`CHAOS_FIRST_SEED`,
/// `CHAOS_SEEDS`, `CHAOS_OPS`; else from 1, `seeds` of `ops` operations), each on a runtime of its
/// own, and says the first failures of each failing seed (`CHAOS_VERBOSE`: each seed's time).
pub fn run_chaos_seeds<F>(seeds: u64, ops: u64, run_seed: impl Fn(u64, u64) -> F) -> ChaosRun
where
    F: std::future::Future<Output = Vec<String>>,
{
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (first, seeds, ops) = (
        env("CHAOS_FIRST_SEED", 1),
        env("CHAOS_SEEDS", seeds),
        env("CHAOS_OPS", ops),
    );
    let verbose = std::env::var_os("CHAOS_VERBOSE").is_some();
    let began = std::time::Instant::now();
    let mut failed = Vec::new();
    for seed in first..first + seeds {
        let runtime = runtime(2);
        let started = std::time::Instant::now();
        let failures = runtime.block_on(run_seed(seed, ops));
        runtime.shutdown_timeout(Duration::from_secs(1));
        if verbose {
            eprintln!(
                "seed {seed}: {:?}, {} failures",
                started.elapsed(),
                failures.len()
            );
        }
        if !failures.is_empty() {
            eprintln!(
                "seed {seed}: {} failures, first: {:#?}",
                failures.len(),
                &failures[..failures.len().min(16)]
            );
            failed.push(seed);
        }
    }
    ChaosRun {
        first,
        seeds,
        ops,
        failed,
        elapsed: began.elapsed(),
    }
}

/// The `(name, test)` pairs of [`run_harnessless`], each named after its function.
#[macro_export]
macro_rules! named_tests {
    ($($test:ident),* $(,)?) => {
        [$((stringify!($test), $test as fn())),*]
    };
}

/// Runs the tests of a test binary without libtest's harness (one that is its own process worker:
/// its `main` must serve as a worker first): each in turn, a panic failing it; prints libtest's
/// lines and exits 1 if any failed.
pub fn run_harnessless(tests: &[(&str, fn())]) {
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(test)).is_ok() {
            passed += 1;
            println!("test {name} ... ok");
        } else {
            failed += 1;
            println!("test {name} ... FAILED");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in a test and in its worker processes.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
