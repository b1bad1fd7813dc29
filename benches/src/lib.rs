//! What the criterion benches and the `bench-report` binary share: the runs through the
//! framework and the raw baselines they are measured against. Each run returns the time it took,
//! so callers can interleave and repeat.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use coordinator::{
    BoxError, Coordinator, CoordinatorBuilder, ExecutionMode, Outcome, PortableNode,
    ProcessExecutionStrategy, RequestCompletionPublisher, RequestId, SubmitOptions, Task, TaskBody,
    TaskExecutionStrategy, ThreadedExecutionStrategy,
};
/// The trivial task (it returns its number), and the registry of every binary here, each its
/// own process worker (see [`serve_if_child`]).
pub use exec_nats::example_nodes::{Echo, registry};
use exec_strategies::process::wire;
use metrics_exporter_prometheus::PrometheusRecorder;
use tokio::runtime::Runtime;
use tokio::sync::broadcast::error::RecvError;

/// Set in the environment of a raw echo child (the process baseline).
const RAW_ECHO_ENV: &str = "BENCHES_RAW_ECHO";

/// Called first by every binary here: serves as a process worker, or as a raw echo child, when
/// started as one (and then never returns).
pub fn serve_if_child() {
    if std::env::var_os(RAW_ECHO_ENV).is_some() {
        raw_echo_child();
    }
    coordinator::run_worker_if_requested(&registry());
}

/// This binary again, with `args`, talked to over its stdin and stdout (see [`serve_if_child`]).
pub fn this_binary(args: &[&str]) -> Command {
    let mut child = Command::new(std::env::current_exe().expect("own path"));
    child
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    child
}

/// The runtime every benchmark uses: 2 workers, like the machines these run on.
pub fn runtime() -> Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(2).enable_all();
    builder.build().expect("a tokio runtime")
}

/// A started publisher and a coordinator on it.
#[derive(Debug)]
#[allow(missing_docs)]
pub struct Started {
    pub publisher: RequestCompletionPublisher,
    pub coordinator: Coordinator,
}

impl Started {
    /// Starts the coordinator `builder` makes, on a fresh publisher.
    pub fn new(rt: &Runtime, builder: CoordinatorBuilder) -> Self {
        rt.block_on(async {
            let publisher = RequestCompletionPublisher::new();
            publisher.start().expect("start publisher");
            let coordinator = builder.build();
            coordinator.start(&publisher).expect("start coordinator");
            Self {
                publisher,
                coordinator,
            }
        })
    }

    /// One serving the async mode alone.
    pub fn with_async(rt: &Runtime) -> Self {
        Self::new(rt, Coordinator::builder().with_async())
    }

    /// One serving the async mode alone, its metrics going to a Prometheus recorder, which is
    /// bound only while the coordinator is built (its handles keep it): nothing else records.
    pub fn with_metrics(rt: &Runtime) -> (Self, PrometheusRecorder) {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let started = metrics::with_local_recorder(&recorder, || Self::with_async(rt));
        (started, recorder)
    }

    /// Shuts the coordinator, then the publisher, down.
    pub fn shutdown(self, rt: &Runtime) {
        rt.block_on(async {
            self.coordinator.shutdown().await;
            self.publisher.shutdown().await;
        });
    }
}

/// A runtime, a 2-thread rayon pool and a coordinator serving the async mode and the threaded
/// mode on that pool: what the async and threaded scenarios and their baselines run on; and,
/// started on first use, a pool of 2 worker processes, the raw echo children and a coordinator
/// recording metrics.
#[derive(Debug)]
pub struct Fixture {
    /// The runtime, which the other scenarios run on too.
    pub rt: Runtime,
    pool: Arc<rayon::ThreadPool>,
    started: Started,
    workers: OnceLock<Arc<ProcessExecutionStrategy>>,
    echo: OnceLock<Mutex<RawEcho>>,
    metered: OnceLock<Started>,
}

impl Default for Fixture {
    fn default() -> Self {
        let rt = runtime();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build();
        let pool = Arc::new(pool.expect("a rayon pool"));
        let threaded = ThreadedExecutionStrategy::builder().pool(Arc::clone(&pool));
        let threaded = threaded.build().expect("threaded");
        let builder = Coordinator::builder().with_async();
        let builder = builder.strategy(ExecutionMode::THREADED, threaded);
        let started = Started::new(&rt, builder);
        let (workers, echo, metered) = (OnceLock::new(), OnceLock::new(), OnceLock::new());
        Self {
            rt,
            pool,
            started,
            workers,
            echo,
            metered,
        }
    }
}

impl Fixture {
    /// Runs scenario `name` once over `ids` (`ids.len()` tasks or messages): `async` and
    /// `threaded` (every `submit` future awaited together), `async-handles` (`try_spawn`, the
    /// handles awaited in order), `batch` (one `submit_many`), the raw baselines `raw-async` and
    /// `raw-threaded`, the design floors `floor-async`, `floor-handles`, `floor-unshared` and
    /// `floor-threaded` ([`design_floor`]), `async-stuck` (async beside a subscriber that never
    /// reads), `async-metrics` (async, its metrics going to a Prometheus recorder), `fan-out-16`
    /// and `broadcast-16` ([`publish_fan_out`] and [`broadcast_fan_out`] to 16 subscribers),
    /// `process` (the tasks in flight over 2 worker processes), `process-1` (one at a time: the
    /// round trip) and their baselines `raw-process` and `raw-process-1` ([`RawEcho`]). `None` for
    /// a name it does not know.
    pub fn run(&self, name: &str, ids: &[RequestId]) -> Option<Duration> {
        let (rt, coordinator, n) = (&self.rt, &self.started.coordinator, ids.len() as u64);
        let workers = || self.workers.get_or_init(|| worker_pool(rt));
        let echo = || self.echo.get_or_init(|| Mutex::new(RawEcho::spawn()));
        let echo = || echo().lock().expect("no run panicked holding the echo");
        Some(match name {
            "async" => submit_trivial(rt, coordinator, ids, &ExecutionMode::ASYNC),
            "threaded" => submit_trivial(rt, coordinator, ids, &ExecutionMode::THREADED),
            "async-handles" => spawn_then_await(rt, coordinator, ids),
            "batch" => submit_batch(rt, coordinator, ids),
            "raw-async" => raw_tokio_spawn_channel(rt, ids),
            "raw-threaded" => raw_rayon_spawn_crossbeam(&self.pool, ids),
            "floor-async" => design_floor(rt, None, ids, Floor::JoinAll),
            "floor-handles" => design_floor(rt, None, ids, Floor::InOrder),
            "floor-unshared" => design_floor(rt, None, ids, Floor::Unshared),
            "floor-threaded" => design_floor(rt, Some(&self.pool), ids, Floor::JoinAll),
            "async-stuck" => {
                let _stuck = self.started.publisher.subscribe_stream().expect("a stream");
                submit_trivial(rt, coordinator, ids, &ExecutionMode::ASYNC)
            }
            "async-metrics" => {
                let metered = self.metered.get_or_init(|| Started::with_metrics(rt).0);
                submit_trivial(rt, &metered.coordinator, ids, &ExecutionMode::ASYNC)
            }
            "fan-out-16" => publish_fan_out(rt, 16, n),
            "broadcast-16" => broadcast_fan_out(rt, 16, n),
            "process" => process_pipelined(rt, workers(), n),
            "process-1" => process_round_trips(rt, workers(), n),
            "raw-process" => echo().pipelined(n),
            "raw-process-1" => echo().round_trips(n),
            _ => return None,
        })
    }

    /// Shuts down the coordinators and the publishers, and the worker processes if started (the
    /// echo children are killed as they are dropped).
    pub fn shutdown(self) {
        if let Some(workers) = self.workers.into_inner() {
            self.rt.block_on(workers.shutdown(Duration::from_secs(5)));
        }
        if let Some(metered) = self.metered.into_inner() {
            metered.shutdown(&self.rt);
        }
        self.started.shutdown(&self.rt);
    }
}

/// How long `rt` takes to run `work` to its end.
pub fn timed(rt: &Runtime, work: impl Future) -> Duration {
    let start = Instant::now();
    rt.block_on(work);
    start.elapsed()
}

/// `n` distinct request ids, made once and cloned into each run.
pub fn request_ids(n: u64) -> Vec<RequestId> {
    (0..n).map(|i| RequestId::from(format!("r{i}"))).collect()
}

/// The trivial task (it returns `i`): run on a thread when `blocking` (the threaded mode), async
/// otherwise.
fn trivial_task(blocking: bool, id: &RequestId, i: usize) -> Task<usize> {
    let run = move || Ok::<_, BoxError>(black_box(i));
    if blocking {
        Task::blocking(id.clone(), "trivial", run)
    } else {
        Task::from_fn(id.clone(), "trivial", move || async move { run() })
    }
}

/// Submits one trivial task per id, all at once, and waits for every result.
pub fn submit_trivial(
    rt: &Runtime,
    on: &Coordinator,
    ids: &[RequestId],
    mode: &ExecutionMode,
) -> Duration {
    timed(rt, async {
        let calls = ids.iter().enumerate().map(|(i, id)| {
            let task = trivial_task(*mode == ExecutionMode::THREADED, id, i);
            on.submit(task, mode.clone())
        });
        let done = futures::future::join_all(calls).await;
        assert!(done.iter().all(Result::is_ok), "every task succeeds");
    })
}

/// Submits one trivial async task per id in one `submit_many` batch, then awaits every output,
/// in order.
pub fn submit_batch(rt: &Runtime, on: &Coordinator, ids: &[RequestId]) -> Duration {
    timed(rt, async {
        let tasks = ids
            .iter()
            .enumerate()
            .map(|(i, id)| trivial_task(false, id, i));
        let batch = on.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
        let outputs = batch.expect("the batch is accepted").all().await;
        assert!(outputs.iter().all(Result::is_ok), "every task succeeds");
    })
}

/// Spawns one trivial async task per id, keeping the handles, then awaits them in order: the
/// common alternative to awaiting every `submit` future at once with `join_all`.
pub fn spawn_then_await(rt: &Runtime, on: &Coordinator, ids: &[RequestId]) -> Duration {
    timed(rt, async {
        let (mode, options) = (ExecutionMode::ASYNC, SubmitOptions::new);
        let spawn = |(i, id)| on.try_spawn(trivial_task(false, id, i), mode.clone(), options());
        let handles: Vec<_> = ids.iter().enumerate().map(spawn).collect();
        for handle in handles {
            let output = handle.expect("no limit is set").await;
            output.expect("every task succeeds");
        }
    })
}

/// How a design floor awaits its answers, and whether it keeps them in a shared map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// Under `join_all`, each submitted when its future is first polled, as `submit`'s are.
    JoinAll,
    /// Submitted first, then awaited one by one, as `try_spawn` handles are.
    InOrder,
    /// Under `join_all`, with no shared map: each answer's sender moves into its task, so
    /// nothing could find, cancel or count an open request.
    Unshared,
}

/// The design floor: the least a coordinator reached through the task API can do per request, in
/// the scenarios' shape. Each task is made with the API the scenarios use and erased, its request
/// id entered in one locked map of open requests beside a oneshot answer, its body run as a tokio
/// task (or on `pool`, the threaded mode), which takes the answer out of the map and sends the
/// output, downcast by the caller. No job record, time stamp, cancellation, deadline, scope,
/// panic catching, stats or bus.
pub fn design_floor(
    rt: &Runtime,
    pool: Option<&rayon::ThreadPool>,
    ids: &[RequestId],
    shape: Floor,
) -> Duration {
    type Open = std::sync::Mutex<HashMap<RequestId, tokio::sync::oneshot::Sender<Outcome>>>;
    let open = Arc::new(Open::new(HashMap::with_capacity(ids.len())));
    let submit = |(i, id): (usize, &RequestId)| {
        let task = trivial_task(pool.is_some(), id, i);
        let (info, body) = task.into_erased().into_parts();
        let (answer, answered) = tokio::sync::oneshot::channel();
        // The answer's sender moves into the task, or waits in the map for it.
        let (answer, open) = if shape == Floor::Unshared {
            (Some(answer), None)
        } else {
            let mut map = open.lock().expect("no panic under the lock");
            map.insert(info.request_id().clone(), answer);
            (None, Some(Arc::clone(&open)))
        };
        let end = move |outcome| {
            let taken = || open?.lock().ok()?.remove(info.request_id());
            // Not found: the caller's answer fails, and the run's check with it.
            if let Some(answer) = answer.or_else(taken) {
                drop(answer.send(outcome));
            }
        };
        match (body, pool) {
            (TaskBody::Async(body), None) => {
                drop(tokio::spawn(async move { end(body.into_future().await) }))
            }
            (TaskBody::Blocking(body), Some(pool)) => pool.spawn(move || end(body.run())),
            _ => unreachable!("the task made for the mode"),
        }
        async move { answered.await.ok()?.ok()?.downcast::<usize>().ok() }
    };
    timed(rt, async {
        let calls = ids.iter().enumerate();
        let outputs = if shape == Floor::InOrder {
            let (answers, mut outputs): (Vec<_>, _) = (calls.map(submit).collect(), Vec::new());
            for answer in answers {
                outputs.push(answer.await);
            }
            outputs
        } else {
            futures::future::join_all(calls.map(|call| async move { submit(call).await })).await
        };
        assert!(outputs.iter().all(Option::is_some), "every task succeeds");
    })
}

/// The async baseline: `tokio::spawn` per id, a channel to one collector tracking each id.
pub fn raw_tokio_spawn_channel(rt: &Runtime, ids: &[RequestId]) -> Duration {
    timed(rt, async {
        let ((tx, mut rx), expected) = (tokio::sync::mpsc::unbounded_channel(), ids.len());
        let collector = tokio::spawn(async move {
            let mut seen: HashMap<RequestId, usize> = HashMap::with_capacity(expected);
            while seen.len() < expected
                && let Some((id, value)) = rx.recv().await
            {
                seen.insert(id, value);
            }
            seen.len()
        });
        for (i, id) in ids.iter().enumerate() {
            let (tx, id) = (tx.clone(), id.clone());
            tokio::spawn(async move { tx.send((id, black_box(i))) });
        }
        black_box(collector.await.expect("collector"));
    })
}

/// The threaded baseline: `rayon::spawn` per id on `pool`, a crossbeam channel to the caller,
/// which tracks each id.
pub fn raw_rayon_spawn_crossbeam(pool: &rayon::ThreadPool, ids: &[RequestId]) -> Duration {
    let start = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, id) in ids.iter().enumerate() {
        let (tx, id) = (tx.clone(), id.clone());
        pool.spawn(move || drop(tx.send((id, black_box(i)))));
    }
    drop(tx);
    let mut seen: HashMap<RequestId, usize> = HashMap::with_capacity(ids.len());
    seen.extend(rx.iter());
    black_box(seen.len());
    start.elapsed()
}

/// A started pool of 2 worker processes (the calling binary: see [`serve_if_child`]), one task
/// running in each (the default), up to 1,023 more queued in it.
pub fn worker_pool(rt: &Runtime) -> Arc<ProcessExecutionStrategy> {
    let pool = ProcessExecutionStrategy::builder(registry()).workers(2);
    let pool = rt.block_on(pool.prefetch(1023).start());
    Arc::new(pool.expect("worker pool"))
}

/// `n` trivial tasks through the pool one at a time, awaited by a task on the runtime, as in an
/// application (not by the thread blocked in `block_on`, which a worker thread would have to wake
/// for every answer).
pub fn process_round_trips(rt: &Runtime, pool: &Arc<ProcessExecutionStrategy>, n: u64) -> Duration {
    let pool = Arc::clone(pool);
    let caller = rt.spawn(async move {
        let start = Instant::now();
        for i in 0..n {
            let task = Task::portable("r", Echo(i)).into_erased();
            black_box(task_core::run(&*pool, task).await.expect("echo"));
        }
        start.elapsed()
    });
    rt.block_on(caller).expect("the caller task")
}

/// `n` trivial tasks in flight through the pool at once.
pub fn process_pipelined(rt: &Runtime, pool: &ProcessExecutionStrategy, n: u64) -> Duration {
    timed(rt, async {
        let run = |i| task_core::run(pool, Task::portable("r", Echo(i)).into_erased());
        let done = futures::future::join_all((0..n).map(run)).await;
        assert!(done.iter().all(Result::is_ok), "every echo succeeds");
    })
}

/// A child process, killed when dropped.
#[derive(Debug)]
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The process baseline: 2 children (the calling binary: see [`serve_if_child`]) echoing every
/// length-prefixed frame back over pipes, and the frame they echo: one trivial task as the pool's
/// wire carries it.
#[derive(Debug)]
pub struct RawEcho {
    frame: Vec<u8>,
    children: [(ChildStdin, ChildStdout, Killed); 2],
}

impl RawEcho {
    /// Starts both children.
    pub fn spawn() -> Self {
        let payload = task_core::encode(&Echo(7)).expect("encodable");
        let run = wire::ToWorker::Run {
            id: 1,
            name: Echo::NAME.into(),
            payload,
            announce: false,
        };
        let frame = wire::encode_frame(&run, wire::DEFAULT_MAX_FRAME).expect("a small frame");
        let child = || {
            let child = this_binary(&[]).env(RAW_ECHO_ENV, "1").spawn();
            let mut child = child.expect("echo child");
            let to = child.stdin.take().expect("stdin");
            (to, child.stdout.take().expect("stdout"), Killed(child))
        };
        Self {
            frame,
            children: [child(), child()],
        }
    }

    /// `n` frames through the first child, one at a time.
    pub fn round_trips(&mut self, n: u64) -> Duration {
        let (to, from, _) = &mut self.children[0];
        let (start, mut back) = (Instant::now(), vec![0; self.frame.len()]);
        for _ in 0..n {
            to.write_all(&self.frame).expect("write");
            to.flush().expect("flush");
            from.read_exact(&mut back).expect("read");
        }
        black_box(&back);
        start.elapsed()
    }

    /// `n` frames pipelined through both children, half each, written and read by a thread of
    /// their own.
    pub fn pipelined(&mut self, n: u64) -> Duration {
        let (start, frame) = (Instant::now(), &self.frame[..]);
        std::thread::scope(|scope| {
            for (to, from, _) in &mut self.children {
                scope.spawn(move || {
                    let mut out = BufWriter::new(to);
                    (0..n / 2).for_each(|_| out.write_all(frame).expect("write"));
                    out.flush().expect("flush");
                });
                scope.spawn(move || {
                    let (mut back, mut input) = (vec![0; frame.len()], BufReader::new(from));
                    (0..n / 2).for_each(|_| input.read_exact(&mut back).expect("read"));
                });
            }
        });
        start.elapsed()
    }
}

/// A raw echo child's side: echoes every length-prefixed frame from stdin to stdout.
fn raw_echo_child() -> ! {
    let mut input = std::io::stdin().lock();
    let mut output = BufWriter::new(std::io::stdout().lock());
    let (mut header, mut buf) = ([0; wire::HEADER_LEN], Vec::new());
    while input.read_exact(&mut header).is_ok() {
        buf.resize(u32::from_le_bytes(header) as usize, 0);
        let ok = input.read_exact(&mut buf).is_ok()
            && output.write_all(&header).is_ok()
            && output.write_all(&buf).is_ok()
            && output.flush().is_ok();
        if !ok {
            break;
        }
    }
    std::process::exit(0)
}

/// `messages` messages published to `subscribers` stream subscribers of a fresh publisher, each
/// read to the end. The subscribers are unbounded (`Buffer::Unbounded`): publishing never waits
/// for a subscriber, so a bounded one that fell a whole ring behind would miss messages, and every
/// subscriber must see every message, as every receiver of the baseline does (checked).
pub fn publish_fan_out(rt: &Runtime, subscribers: usize, messages: u64) -> Duration {
    timed(rt, async {
        let publisher = pubsub::Publisher::<u64>::with_capacity(1024);
        publisher.start().expect("start");
        let subscribe = |_| {
            let stream = publisher.subscribe_stream_with(pubsub::Buffer::Unbounded);
            let mut stream = stream.expect("subscribe");
            tokio::spawn(async move {
                let mut n = 0_u64;
                while let Some(item) = stream.recv().await {
                    black_box(item.expect("an unbounded subscriber misses nothing"));
                    n += 1;
                }
                n
            })
        };
        let readers: Vec<_> = (0..subscribers).map(subscribe).collect();
        for i in 0..messages {
            publisher.publish(i).expect("running");
        }
        publisher.shutdown().await;
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), messages);
        }
    })
}

/// The fan-out baseline: the same through `tokio::sync::broadcast`, made lossless the cheapest
/// way, as the publisher is: the sender never lets the slowest receiver fall a whole buffer
/// behind (where raw `broadcast` would overwrite what it has not read), and waits for receivers
/// to catch up instead. Every receiver must see every message (checked).
pub fn broadcast_fan_out(rt: &Runtime, subscribers: usize, messages: u64) -> Duration {
    const CAPACITY: usize = 1024;
    timed(rt, async {
        let (tx, _) = tokio::sync::broadcast::channel::<u64>(CAPACITY);
        let space = Arc::new((tokio::sync::Notify::new(), AtomicBool::new(false)));
        let subscribe = |_| {
            let (mut rx, space) = (tx.subscribe(), Arc::clone(&space));
            tokio::spawn(async move {
                let mut n = 0_u64;
                loop {
                    match rx.recv().await {
                        Ok(m) => black_box(m),
                        Err(RecvError::Lagged(_)) => panic!("the baseline lost messages"),
                        Err(RecvError::Closed) => return n,
                    };
                    n += 1;
                    if space.1.load(SeqCst) && space.1.swap(false, SeqCst) {
                        space.0.notify_one();
                    }
                }
            })
        };
        let readers: Vec<_> = (0..subscribers).map(subscribe).collect();
        // `len` (messages the slowest receiver has not read) takes a lock and a search, so it is
        // read only when the messages sent since the last reading could have filled the buffer.
        let mut queued = 0;
        for i in 0..messages {
            while queued >= CAPACITY {
                let notified = space.0.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                space.1.store(true, SeqCst);
                queued = tx.len();
                if queued < CAPACITY {
                    break;
                }
                notified.await;
                queued = tx.len();
            }
            tx.send(i).expect("receivers alive");
            queued += 1;
        }
        drop(tx);
        for reader in readers {
            let received = reader.await.expect("reader");
            assert_eq!(received, messages, "every message reached every receiver");
        }
    })
}
