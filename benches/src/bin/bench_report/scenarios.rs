//! The scenarios, each with its raw baseline.

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::{
    Echo, broadcast_fan_out, publish_fan_out, raw_rayon_spawn_crossbeam, raw_tokio_spawn_channel,
    registry, request_ids, spawn_then_await, started_coordinator, submit_batch, submit_trivial,
};
use coordinator::{
    ExecutionMode, PortableNode, ProcessExecutionStrategy, Task, TaskExecutionStrategy,
};
use exec_strategies::process::wire::{self, ToWorker};
use pubsub::Publisher;
use tokio::runtime::Runtime;

use crate::Progress;
use crate::measure::{ScenarioResult, compare, compare_series, percentile, summary};

/// The scenarios' names in the report: the targets and the docs' claims find rows by them.
pub(crate) mod names {
    pub(crate) const ASYNC: &str = "async";
    pub(crate) const ASYNC_TRY_SPAWN: &str = "async, try_spawn handles awaited in order";
    pub(crate) const THREADED: &str = "threaded";
    pub(crate) const BATCH: &str = "async, one submit_many batch";
    pub(crate) const STUCK: &str = "async beside a subscriber that never reads";
    pub(crate) const ROUND_TRIP: &str = "process round trip";
    pub(crate) const PINNED_ROUND_TRIP: &str = "process round trip, pinned to one CPU";
    pub(crate) const THROUGHPUT: &str = "process throughput, 2 workers";
    pub(crate) const DISTRIBUTED: &str = "distributed (NATS JetStream), 2 workers";
    /// How many subscribers each fan-out scenario has.
    pub(crate) const SUBSCRIBERS: [usize; 3] = [1, 4, 16];

    pub(crate) fn fan_out(subscribers: usize) -> String {
        format!("publisher fan-out, {subscribers} subscribers")
    }

    /// Every scenario a full run reports.
    pub(crate) fn all() -> Vec<String> {
        let mut all: Vec<String> = [
            ASYNC,
            ASYNC_TRY_SPAWN,
            BATCH,
            STUCK,
            THREADED,
            ROUND_TRIP,
            PINNED_ROUND_TRIP,
            THROUGHPUT,
            DISTRIBUTED,
        ]
        .map(String::from)
        .to_vec();
        all.extend(SUBSCRIBERS.map(fan_out));
        all
    }
}

/// async (the scaling series, every N measured in the same rounds, then through `try_spawn`) and
/// threaded through the coordinator, each when asked for.
pub(crate) fn local_strategies(
    rt: &Runtime,
    sizes: &[u64],
    reps: usize,
    (run_async, run_threaded): (bool, bool),
    progress: &mut Progress,
) -> Vec<ScenarioResult> {
    let mut results = Vec::new();
    if !run_async && !run_threaded {
        return results;
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool"),
    );
    let (publisher, coordinator) = started_coordinator(rt, Some(&pool));
    if run_async {
        // The scaling series: every size in each round, so the growth with N is read between
        // figures taken side by side.
        let ids: Vec<_> = sizes.iter().map(|&n| request_ids(n)).collect();
        results.extend(compare_series(
            names::ASYNC,
            sizes,
            reps,
            "tokio::spawn + mpsc + HashMap",
            |i| submit_trivial(rt, &coordinator, &ids[i], &ExecutionMode::ASYNC),
            |i| raw_tokio_spawn_channel(rt, &ids[i]),
            progress,
        ));
    }
    // The size both the `try_spawn` row and the threaded scenario run at (N = 100,000).
    let n = sizes[sizes.len().min(2) - 1];
    let ids = request_ids(n);
    if run_async {
        // The same requests through `try_spawn`, their handles awaited in order: the shape of
        // the baseline (spawn everything, then learn every outcome) without one future per call
        // polled together.
        results.push(compare(
            names::ASYNC_TRY_SPAWN,
            n,
            reps,
            "tokio::spawn + mpsc + HashMap",
            || spawn_then_await(rt, &coordinator, &ids),
            || raw_tokio_spawn_channel(rt, &ids),
            progress,
        ));
        // Map-style fan-out: every request accepted under one lock, the outputs awaited in
        // order.
        results.push(compare(
            names::BATCH,
            n,
            reps,
            "tokio::spawn + mpsc + HashMap",
            || submit_batch(rt, &coordinator, &ids),
            || raw_tokio_spawn_channel(rt, &ids),
            progress,
        ));
        results.push(beside_a_stuck_subscriber(
            rt,
            &coordinator,
            &ids,
            reps,
            progress,
        ));
    }
    if run_threaded {
        results.push(compare(
            names::THREADED,
            n,
            reps,
            "rayon::spawn + crossbeam + HashMap",
            || submit_trivial(rt, &coordinator, &ids, &ExecutionMode::THREADED),
            || raw_rayon_spawn_crossbeam(&pool, &ids),
            progress,
        ));
    }
    rt.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
    results
}

/// The async scenario on a bus with a subscriber that never reads, beside the same requests on
/// a bus nobody subscribes to: what announcing every outcome costs, and proof that a stuck
/// subscriber holds nothing up (it is told how many messages it missed).
fn beside_a_stuck_subscriber(
    rt: &Runtime,
    unobserved: &coordinator::Coordinator,
    ids: &[coordinator::RequestId],
    reps: usize,
    progress: &mut Progress,
) -> ScenarioResult {
    let (publisher, observed) = started_coordinator(rt, None);
    let mut stuck = publisher.subscribe_stream().expect("a stream");
    let result = compare(
        names::STUCK,
        ids.len() as u64,
        reps,
        "the same requests, nobody subscribed",
        || submit_trivial(rt, &observed, ids, &ExecutionMode::ASYNC),
        || submit_trivial(rt, unobserved, ids, &ExecutionMode::ASYNC),
        progress,
    );
    rt.block_on(async {
        use futures::StreamExt;
        let missed = stuck
            .next()
            .await
            .and_then(Result::err)
            .expect("the stuck subscriber is told it missed messages");
        assert!(missed.count() > 0);
        observed.shutdown().await;
        publisher.shutdown().await;
    });
    result
}

/// A child echoing frames back: the process baseline.
struct EchoChild {
    child: std::process::Child,
    to: std::process::ChildStdin,
    from: std::process::ChildStdout,
}

impl EchoChild {
    fn spawn() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(crate::RAW_ECHO_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("echo child");
        let to = child.stdin.take().expect("stdin");
        let from = child.stdout.take().expect("stdout");
        Self { child, to, from }
    }
}

impl Drop for EchoChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A started pool of 2 workers (this binary), as both process scenarios use it: one task
/// running at a time in each (the default), up to 1,023 more queued in it.
fn worker_pool(rt: &Runtime) -> Arc<ProcessExecutionStrategy> {
    Arc::new(rt.block_on(async {
        ProcessExecutionStrategy::builder(registry())
            .workers(2)
            .prefetch(1023)
            .start()
            .await
            .expect("worker pool")
    }))
}

/// One trivial task as the pool's wire carries it: what the raw baselines echo.
fn echo_frame() -> Vec<u8> {
    wire::encode_frame(
        &ToWorker::Run {
            id: 1,
            name: Echo::NAME.into(),
            payload: task_core::encode(&Echo(7)).expect("encodable"),
            announce: false,
        },
        wire::DEFAULT_MAX_FRAME,
    )
    .expect("small frame")
}

/// One task at a time through the pool, beside one frame at a time through an echo child.
fn round_trip(
    name: &str,
    rt: &Runtime,
    strategy: &Arc<ProcessExecutionStrategy>,
    round_trips: u64,
    reps: usize,
    progress: &mut Progress,
) -> ScenarioResult {
    let frame = echo_frame();
    let mut echo = EchoChild::spawn();
    compare(
        name,
        round_trips,
        reps,
        "raw length-prefixed pipe echo",
        || {
            // The caller is a task on the runtime, as in an application (not the thread blocked
            // in `block_on`, which a worker thread would have to wake for every answer).
            let strategy = Arc::clone(strategy);
            rt.block_on(async move {
                tokio::spawn(async move {
                    let start = Instant::now();
                    for i in 0..round_trips {
                        let task = Task::portable("r", Echo(i)).into_erased();
                        black_box(task_core::run(&*strategy, task).await.expect("echo"));
                    }
                    start.elapsed()
                })
                .await
                .expect("the caller task")
            })
        },
        || {
            let start = Instant::now();
            let mut back = vec![0; frame.len()];
            for _ in 0..round_trips {
                echo.to.write_all(&frame).expect("write");
                echo.to.flush().expect("flush");
                echo.from.read_exact(&mut back).expect("read");
            }
            black_box(&back);
            start.elapsed()
        },
        progress,
    )
}

/// The flag of the child that measures the round trip pinned to one CPU:
/// `--pinned-round-trip <round trips> <reps>`.
pub(crate) const PINNED_FLAG: &str = "--pinned-round-trip";

/// The pinned child's side: pins this process to the first CPU it may run on, before any thread
/// of its own starts (the runtime's threads, the workers and the echo child inherit the pin),
/// then measures the round trip and prints it as JSON.
pub(crate) fn pinned_round_trip_child(round_trips: u64, reps: usize) {
    let Some(core) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().next()) else {
        eprintln!("no CPU to pin to");
        std::process::exit(1);
    };
    if !core_affinity::set_for_current(core) {
        eprintln!("could not pin this process to CPU {}", core.id);
        std::process::exit(1);
    }
    let rt = benches::runtime();
    let strategy = worker_pool(&rt);
    let mut progress = Progress::new(1);
    let result = round_trip(
        names::PINNED_ROUND_TRIP,
        &rt,
        &strategy,
        round_trips,
        reps,
        &mut progress,
    );
    rt.block_on(strategy.shutdown(Duration::from_secs(5)));
    println!("{}", serde_json::to_string(&result).expect("serializable"));
}

/// The round trip measured in a child pinned to one CPU, where a wake-up never crosses cores:
/// the comparison with the raw pipe that does not depend on where the scheduler puts the
/// threads. `None` (and why, on stderr) where the child could not pin itself or failed.
pub(crate) fn pinned_round_trip(
    round_trips: u64,
    reps: usize,
    progress: &mut Progress,
) -> Option<ScenarioResult> {
    progress.start(names::PINNED_ROUND_TRIP, reps);
    let result: Result<ScenarioResult, String> =
        crate::measure_in_child(&[PINNED_FLAG, &round_trips.to_string(), &reps.to_string()]);
    match result {
        Ok(result) => {
            progress.done(&summary(&result));
            Some(result)
        }
        Err(why) => {
            progress.done(&format!("not measured ({why})"));
            None
        }
    }
}

pub(crate) fn process(
    rt: &Runtime,
    round_trips: u64,
    pipelined: u64,
    reps: usize,
    progress: &mut Progress,
) -> Vec<ScenarioResult> {
    let strategy = worker_pool(rt);
    let frame = echo_frame();
    let mut results = vec![round_trip(
        names::ROUND_TRIP,
        rt,
        &strategy,
        round_trips,
        reps,
        progress,
    )];
    let mut pair = [EchoChild::spawn(), EchoChild::spawn()];
    results.push(compare(
        names::THROUGHPUT,
        pipelined,
        reps,
        "raw pipelined pipe echo, 2 children",
        || {
            let start = Instant::now();
            rt.block_on(async {
                let calls = (0..pipelined).map(|i| {
                    task_core::run(&*strategy, Task::portable("r", Echo(i)).into_erased())
                });
                let done = futures::future::join_all(calls).await;
                assert!(done.iter().all(Result::is_ok));
            });
            start.elapsed()
        },
        || {
            let start = Instant::now();
            std::thread::scope(|scope| {
                for child in pair.iter_mut() {
                    let count = pipelined / 2;
                    let frame = &frame;
                    let EchoChild { to, from, .. } = child;
                    scope.spawn(move || {
                        let mut out = std::io::BufWriter::new(to);
                        for _ in 0..count {
                            out.write_all(frame).expect("write");
                        }
                        out.flush().expect("flush");
                    });
                    scope.spawn(move || {
                        let mut back = vec![0; frame.len()];
                        let mut input = std::io::BufReader::new(from);
                        for _ in 0..count {
                            input.read_exact(&mut back).expect("read");
                        }
                    });
                }
            });
            start.elapsed()
        },
        progress,
    ));
    rt.block_on(strategy.shutdown(Duration::from_secs(5)));
    results
}

/// Publish-to-delivery latency of one message at a time to one subscriber, in microseconds.
fn latencies(rt: &Runtime, messages: usize, ours: bool) -> (f64, f64) {
    rt.block_on(async {
        let samples = Arc::new(Mutex::new(Vec::with_capacity(messages)));
        if ours {
            let publisher = Publisher::<Instant>::new();
            publisher.start().expect("start");
            let mut stream = publisher.subscribe_stream().expect("subscribe");
            let sink = Arc::clone(&samples);
            let reader = tokio::spawn(async move {
                while let Some(item) = stream.recv().await {
                    // One message at a time: never a whole buffer behind.
                    let sent = item.expect("nothing missed");
                    sink.lock()
                        .expect("samples")
                        .push(sent.elapsed().as_secs_f64() * 1e6);
                }
            });
            for i in 0..messages {
                publisher.publish(Instant::now()).expect("running");
                while samples.lock().expect("samples").len() <= i {
                    tokio::task::yield_now().await;
                }
            }
            publisher.shutdown().await;
            reader.await.expect("reader");
        } else {
            let (tx, mut rx) = tokio::sync::broadcast::channel::<Instant>(1024);
            let sink = Arc::clone(&samples);
            let reader = tokio::spawn(async move {
                while let Ok(sent) = rx.recv().await {
                    sink.lock()
                        .expect("samples")
                        .push(sent.elapsed().as_secs_f64() * 1e6);
                }
            });
            for i in 0..messages {
                tx.send(Instant::now()).expect("receiver alive");
                while samples.lock().expect("samples").len() <= i {
                    tokio::task::yield_now().await;
                }
            }
            drop(tx);
            reader.await.expect("reader");
        }
        let mut values = samples.lock().expect("samples").clone();
        (percentile(&mut values, 50.0), percentile(&mut values, 99.0))
    })
}

pub(crate) fn publisher(
    rt: &Runtime,
    messages: u64,
    reps: usize,
    progress: &mut Progress,
) -> Vec<ScenarioResult> {
    let mut results = Vec::new();
    for subscribers in names::SUBSCRIBERS {
        results.push(compare(
            &names::fan_out(subscribers),
            messages,
            reps,
            "tokio::sync::broadcast, sender waits for the slowest",
            || publish_fan_out(rt, subscribers, messages),
            || broadcast_fan_out(rt, subscribers, messages),
            progress,
        ));
    }
    results
}

/// Publish-to-delivery latency, ours and tokio::sync::broadcast's, one message at a time.
pub(crate) fn publisher_latency(rt: &Runtime, samples: usize) -> serde_json::Value {
    let (p50, p99) = latencies(rt, samples, true);
    let (b50, b99) = latencies(rt, samples, false);
    serde_json::json!({
        "messages": samples,
        "publisher": { "p50_us": p50, "p99_us": p99 },
        "broadcast": { "p50_us": b50, "p99_us": b99 },
    })
}
