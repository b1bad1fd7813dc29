//! Fault-injection soak: many requests mixed across the async, threaded and process modes with
//! panics, timeouts, cancellations, retried failures, and worker processes SIGKILLed along the
//! way. Every request must end exactly once with the result its class predicts.
//!
//! `SOAK_N` sets the number of requests (default 20,000 so CI stays quick;
//! `SOAK_N=100000 cargo test -p coordinator --all-features --test soak` is the full run).
//! This binary is its own process worker.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinator::{
    BoxError, Buffer, Coordinator, ExecutionMode, JobResult, Node, NodeRegistry, PortableNode,
    ProcessExecutionStrategy, RequestCompletionMessage, RequestCompletionPublisher, Retention,
    RetryPolicy, SubmitError, SubmitOptions, Task, ThreadedExecutionStrategy,
    run_worker_if_requested,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// What a request does, chosen from its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Class {
    Ok,
    Fails,
    Panics,
    TimesOut,
    Cancelled,
    /// Fails its first attempt, succeeds when retried.
    Flaky,
}

fn class_of(i: u64) -> Class {
    match i % 100 {
        0 => Class::Panics,
        1 => Class::TimesOut,
        2 => Class::Cancelled,
        3 | 4 => Class::Fails,
        5..=9 => Class::Flaky,
        _ => Class::Ok,
    }
}

fn mode_of(i: u64) -> ExecutionMode {
    match i % 3 {
        0 => ExecutionMode::ASYNC,
        1 => ExecutionMode::THREADED,
        _ => ExecutionMode::PROCESS,
    }
}

fn expected(class: Class) -> JobResult {
    match class {
        Class::Ok | Class::Flaky => JobResult::Success,
        Class::Fails | Class::Panics => JobResult::Failure,
        Class::TimesOut => JobResult::TimedOut,
        Class::Cancelled => JobResult::Cancelled,
    }
}

/// The portable node the process mode runs.
#[derive(Serialize, Deserialize)]
struct Work {
    i: u64,
    class: Class,
}

impl Node for Work {
    type Output = u64;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "work".into()
    }
    async fn invoke(self) -> Result<u64, BoxError> {
        match self.class {
            Class::Ok | Class::Flaky => Ok(self.i * 2),
            Class::Fails => Err(format!("request {} failed on purpose", self.i).into()),
            Class::Panics => panic!("request {} panicked on purpose", self.i),
            Class::TimesOut | Class::Cancelled => {
                std::thread::sleep(Duration::from_secs(30));
                Ok(0)
            }
        }
    }
}

impl PortableNode for Work {
    const NAME: &'static str = "work";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Work>().unwrap();
    registry
}

const TIMEOUT: Duration = Duration::from_millis(30);

/// The in-process task for request `i`.
fn local_task(i: u64, class: Class, blocking: bool) -> Task<u64> {
    let id = format!("r{i}");
    let tries = Arc::new(AtomicU32::new(0));
    if blocking {
        Task::replayable_blocking(id, "work", move || {
            let attempt = tries.fetch_add(1, Ordering::SeqCst) + 1;
            run_local(i, class, attempt, || {
                std::thread::sleep(Duration::from_millis(100))
            })
        })
    } else {
        Task::replayable_fn(id, "work", move || {
            let attempt = tries.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if matches!(class, Class::TimesOut | Class::Cancelled) {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                run_local(i, class, attempt, || {})
            }
        })
    }
}

fn run_local(i: u64, class: Class, attempt: u32, stall: impl FnOnce()) -> Result<u64, BoxError> {
    match class {
        Class::Ok => Ok(i * 2),
        Class::Flaky if attempt == 1 => Err("transient".into()),
        Class::Flaky => Ok(i * 2),
        Class::Fails => Err(format!("request {i} failed on purpose").into()),
        Class::Panics => panic!("request {i} panicked on purpose"),
        Class::TimesOut | Class::Cancelled => {
            stall();
            Ok(0)
        }
    }
}

fn options(class: Class, mode: &ExecutionMode) -> SubmitOptions {
    let mut options = SubmitOptions::new();
    if class == Class::TimesOut {
        options = options.timeout(TIMEOUT);
    }
    let quick = RetryPolicy::new(10).backoff(Duration::from_millis(5), Duration::from_millis(200));
    if *mode == ExecutionMode::PROCESS {
        // Worker processes get killed under the test's feet: a lost worker is retried. A loaded
        // debug build keeps tasks queued on a worker long enough for one request to meet ten
        // kills in a row (seen once in CI); thirty keeps that out of reach.
        let patient =
            RetryPolicy::new(30).backoff(Duration::from_millis(5), Duration::from_millis(200));
        options.retry(patient.retry_if(|e| e.is_worker_lost()))
    } else if class == Class::Flaky {
        options.retry(quick.retry_if(|e| e.is_node_error()))
    } else {
        options
    }
}

async fn run_one(coordinator: &Coordinator, i: u64) -> (u64, Result<u64, SubmitError>) {
    let class = class_of(i);
    let mode = mode_of(i);
    let task = if mode == ExecutionMode::PROCESS {
        Task::portable(format!("r{i}"), Work { i, class })
    } else {
        local_task(i, class, mode == ExecutionMode::THREADED)
    };
    let handle = match coordinator
        .spawn(task, mode.clone(), options(class, &mode))
        .await
    {
        Ok(handle) => handle,
        Err(e) => return (i, Err(e)),
    };
    if class == Class::Cancelled {
        if i.is_multiple_of(2) {
            // Sometimes before it starts, sometimes once it runs.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.cancel();
    }
    (i, handle.await)
}

/// Child processes of this process (live or zombie).
fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the command name (which is in parentheses) are: state, ppid, ...
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            found.push(pid);
        }
    }
    found
}

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn soak() {
    let n: u64 = std::env::var("SOAK_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = support::runtime(2);
    runtime.block_on(async {
        let started = Instant::now();
        let publisher = RequestCompletionPublisher::new();
        publisher.start().unwrap();
        // Terminal messages per request, counted as they arrive.
        let terminal: Arc<Mutex<HashMap<String, (u32, bool)>>> = Arc::default();
        let sink = terminal.clone();
        publisher
            .subscribe_with(Buffer::Unbounded, move |m| {
                let m = m.expect("an unbounded subscriber misses nothing");
                if m.is_terminal() {
                    let id = m.request_id().unwrap().to_string();
                    let ok = matches!(m, RequestCompletionMessage::Success(_));
                    sink.lock().unwrap().entry(id).or_insert((0, ok)).0 += 1;
                }
            })
            .unwrap();
        let process = ProcessExecutionStrategy::builder(registry())
            .workers(2)
            .start()
            .await
            .unwrap();
        let threaded = ThreadedExecutionStrategy::builder().threads(4).build().unwrap();
        let retained = 2_000;
        let coordinator = Coordinator::builder()
            .with_async()
            .strategy(ExecutionMode::THREADED, threaded)
            .strategy(ExecutionMode::PROCESS, process)
            .limit(ExecutionMode::ASYNC, 256)
            .limit(ExecutionMode::THREADED, 64)
            .limit(ExecutionMode::PROCESS, 64)
            .retention(Retention::KeepLast(retained))
            .build();
        coordinator.start(&publisher).unwrap();
        // The coordinator does not subscribe to its own bus: the test's recorder is alone.
        assert_eq!(publisher.subscriber_count(), 1);

        // SIGKILL a busy worker now and then while the load runs.
        let done = Arc::new(AtomicBool::new(false));
        let killer = {
            let coordinator = coordinator.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut kills = 0_u32;
                let mut seen = HashSet::new();
                while !done.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let detail = coordinator.system_detail();
                    let workers = &detail.modes["process"].workers;
                    seen.extend(workers.iter().filter_map(|w| w.pid));
                    // Take turns among the busy workers: always killing the first one would keep
                    // hitting the replacement that just took the retried tasks.
                    let busy: Vec<u32> = workers
                        .iter()
                        .filter(|w| w.in_flight > 0)
                        .filter_map(|w| w.pid)
                        .collect();
                    if let Some(&pid) = busy.get(kills as usize % busy.len().max(1)) {
                        // An external `kill`, so the test needs no libc.
                        let status = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .stderr(std::process::Stdio::null())
                            .status();
                        if status.is_ok_and(|s| s.success()) {
                            kills += 1;
                        }
                    }
                }
                (kills, seen)
            })
        };

        let mut rss_mid = 0;
        let mut results = HashMap::with_capacity(n as usize);
        let mut stream = futures::stream::iter(0..n)
            .map(|i| run_one(&coordinator, i))
            .buffer_unordered(512);
        while let Some((i, result)) = stream.next().await {
            if i == n / 2 {
                rss_mid = resident_kib();
            }
            // The table never holds more than the retained closed jobs plus the open ones.
            if i.is_multiple_of(1000) {
                let len = coordinator.with_state(|s| s.len());
                assert!(len <= retained + 512 + 64, "{len} jobs retained");
            }
            results.insert(i, result);
        }
        drop(stream);
        done.store(true, Ordering::SeqCst);
        let (kills, _seen) = killer.await.unwrap();

        // Every request got the outcome its class predicts.
        let mut tally: HashMap<JobResult, u64> = HashMap::new();
        for i in 0..n {
            let class = class_of(i);
            let result = &results[&i];
            let got = match result {
                Ok(v) => {
                    assert_eq!(*v, i * 2, "request {i} ({class:?})");
                    JobResult::Success
                }
                Err(e) => {
                    assert!(!e.is_rejected(), "request {i} was rejected: {e}");
                    if e.is_timeout() {
                        JobResult::TimedOut
                    } else if e.is_cancelled() {
                        JobResult::Cancelled
                    } else {
                        let te = e.task_error().unwrap();
                        match class {
                            Class::Panics => assert!(te.is_panic(), "request {i}: {te:?}"),
                            Class::Fails => assert!(te.is_node_error(), "request {i}: {te:?}"),
                            _ => panic!(
                                "request {i} ({class:?}) failed after {:?} attempts: {te:?}",
                                coordinator.job(&format!("r{i}")).map(|j| j.attempts())
                            ),
                        }
                        JobResult::Failure
                    }
                }
            };
            assert_eq!(got, expected(class), "request {i} ({class:?}, {:?})", mode_of(i));
            *tally.entry(got).or_default() += 1;
        }

        coordinator.shutdown_with_grace(Duration::from_secs(10)).await;
        assert_eq!(publisher.subscriber_count(), 1, "no subscriber leaked");
        publisher.shutdown().await;

        // Exactly one terminal message per request, agreeing with the caller's result.
        let terminal = terminal.lock().unwrap();
        assert_eq!(terminal.len() as u64, n);
        for i in 0..n {
            let (count, ok) = terminal[&format!("r{i}")];
            assert_eq!(count, 1, "request r{i} had {count} terminal messages");
            assert_eq!(ok, results[&i].is_ok(), "request r{i}");
        }
        // The counts add up.
        let counts = coordinator.counts();
        assert_eq!(counts.open, 0);
        assert_eq!(counts.closed, n);
        assert_eq!(counts.succeeded, tally[&JobResult::Success]);
        assert_eq!(counts.failed, tally[&JobResult::Failure]);
        assert_eq!(counts.timed_out, tally[&JobResult::TimedOut]);
        assert_eq!(counts.cancelled, tally[&JobResult::Cancelled]);
        assert_eq!(counts.evicted, n.saturating_sub(retained as u64));
        // The retained jobs carry the right results and retry counts.
        coordinator.with_state(|state| {
            for job in state.iter() {
                let i: u64 = job.request_id()[1..].parse().unwrap();
                assert_eq!(job.result(), Some(expected(class_of(i))));
                if class_of(i) == Class::Flaky && mode_of(i) != ExecutionMode::PROCESS {
                    assert_eq!(job.attempts(), 2, "{job:?}");
                }
            }
        });
        // No subscriber or listener left behind, no worker process either.
        assert_eq!(publisher.subscriber_count(), 0);
        let leftover = children();
        assert!(leftover.is_empty(), "child processes left: {leftover:?}");
        assert!(kills > 0, "the killer never hit a busy worker");
        let restarts = coordinator.system_detail().modes["process"].restarts;
        println!(
            "soak: {n} requests in {:.1?}; {tally:?}; {kills} workers SIGKILLed, {restarts} restarts; \
             resident memory {rss_mid} KiB at half-way, {} KiB at the end",
            started.elapsed(),
            resident_kib()
        );
    });
}

fn main() {
    // The nodes panic on purpose; keep those out of the output, report any other panic.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("on purpose") {
            default_hook(info);
        }
    }));
    run_worker_if_requested(&registry());
    let outcome = std::panic::catch_unwind(soak);
    match outcome {
        Ok(()) => println!("test soak ... ok\n1 passed, 0 failed"),
        Err(_) => {
            println!("test soak ... FAILED\n0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}
