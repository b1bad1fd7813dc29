//! Chaos in the process mode: seeded random mixes of portable tasks that succeed, fail, panic,
//! sleep (waiting, or blocking their thread), exit or abort their worker, crash it once and then
//! succeed, return outputs near and over the frame limit or carry inputs near and over it; with
//! timeouts (the caller's, each attempt's and the pool's), retries, cancellation by handle and
//! by id, a limit on the mode, `submit_many` batches, `try_spawn` handles dropped unawaited, async
//! parents fanning out to the pool (some cancelled), workers SIGKILLed from outside, and a
//! coordinator shutdown with a short grace, a shutdown of the pool itself, or the drop of the
//! last handle racing it all.
//!
//! Per accepted request it checks: exactly one terminal message (none for a request that was
//! not accepted), every awaited caller answered once and within a bound, each answer one its
//! node could give (a value is the node's own, an error of a kind the node or the pool can
//! cause), the job table's counts after shutdown, no run starting more often than its request's
//! attempts, and no node starting once a stop (cancellation, timeout) of a request above it was
//! answered unless it was handed out before. Per seed: the pool is whole again after crashes
//! (all its workers live, a probe answered), and no worker process of the pool is left, not even
//! as a zombie, once shutdown returned or the last handle went.
//!
//! This binary is its own worker. `CHAOS_SEEDS` (default 24), `CHAOS_FIRST_SEED` (default 1) and
//! `CHAOS_OPS` (default 100) widen the run (`CHAOS_VERBOSE=1` says how each seed's requests ended):
//! `CHAOS_SEEDS=200 CHAOS_OPS=150 cargo test --release -p coordinator --all-features --test process_chaos`.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, Node, NodeRegistry, PortableNode,
    ProcessExecutionStrategy, RequestCompletionMessage, RequestCompletionPublisher, RequestHandle,
    RetryPolicy, SubmitError, SubmitOptions, Task, TaskExecutionStrategy, run_worker_if_requested,
};
use serde::{Deserialize, Serialize};
use support::{ChaosRun, Recorder, Rng, mono_ns, run_chaos_seeds};

/// Every await of an answer is bounded by this: a lost answer fails, it does not hang.
const ANSWER_BOUND: Duration = Duration::from_secs(10);
const PROCESS: &str = "process";

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static LATE_STARTS: AtomicU64 = AtomicU64::new(0);
static LATEST_START_US: AtomicU64 = AtomicU64::new(0);

/// What a chaos node does in its worker.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
enum Act {
    /// Returns its request id.
    Value,
    Fail,
    Panic,
    /// Waits this many milliseconds (a cancellation stops it there), then returns its id.
    Nap(u64),
    /// Blocks its thread this many milliseconds (only a kill stops it), then returns its id.
    Spin(u64),
    Exit(i32),
    Abort,
    /// Aborts its worker the first time it runs, returns its id after that.
    CrashOnce,
    /// Returns this many bytes.
    Bytes(u64),
}

/// The one portable node: logs its start (its request id, its pid, when) and does its act.
#[derive(Serialize, Deserialize)]
struct Chaos {
    id: String,
    log: String,
    act: Act,
    pad: Vec<u8>,
}

impl Node for Chaos {
    type Output = Vec<u8>;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "chaos".into()
    }
    async fn invoke(self) -> Result<Vec<u8>, BoxError> {
        let line = format!("{} {} {}\n", self.id, std::process::id(), mono_ns());
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)?
            .write_all(line.as_bytes())?;
        let id = self.id.into_bytes();
        match self.act {
            Act::Value => Ok(id),
            Act::Fail => Err(format!("chaos: {} failed", String::from_utf8_lossy(&id)).into()),
            Act::Panic => {
                std::panic::panic_any(format!("chaos: {} panicked", String::from_utf8_lossy(&id)))
            }
            Act::Nap(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(id)
            }
            Act::Spin(ms) => {
                std::thread::sleep(Duration::from_millis(ms));
                Ok(id)
            }
            Act::Exit(code) => std::process::exit(code),
            Act::Abort => std::process::abort(),
            Act::CrashOnce => {
                let marker = format!("{}.{}", self.log, String::from_utf8_lossy(&id));
                if std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&marker)
                    .is_ok()
                {
                    std::process::abort();
                }
                Ok(id)
            }
            Act::Bytes(n) => Ok((0..n).map(|i| (i % 251) as u8).collect()),
        }
    }
}

impl PortableNode for Chaos {
    const NAME: &'static str = "chaos";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Chaos>().unwrap();
    registry
}

/// A leaf drawn for a request: its act, its padding, and the attempts its options allow.
#[derive(Clone, Copy, Debug)]
struct Leaf {
    act: Act,
    pad: usize,
    attempts: u32,
    /// The caller's deadline.
    timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
struct Accepted {
    parent: Option<String>,
    /// `None` for an async parent.
    leaf: Option<Leaf>,
}

/// What one seed's run saw.
struct World {
    next_id: AtomicU64,
    log: String,
    max_frame: usize,
    accepted: Mutex<HashMap<String, Accepted>>,
    submitted_at: Mutex<HashMap<String, u64>>,
    /// When a caller heard its request was cancelled or timed out (or dropped with its
    /// coordinator): its tree is stopped then.
    stopped_at: Mutex<HashMap<String, u64>>,
    answered: Mutex<HashMap<String, usize>>,
    /// How each caller's answer would close a job.
    answered_as: Mutex<HashMap<String, JobResult>>,
    awaited: Mutex<HashSet<String>>,
    /// Answers saying a worker died (exit, abort, signal), for the pool's restarts.
    crashes_heard: AtomicU64,
    failures: Mutex<Vec<String>>,
    notes: Mutex<HashMap<String, Vec<String>>>,
}

impl World {
    fn new(log: String, max_frame: usize) -> Self {
        Self {
            next_id: AtomicU64::new(0),
            log,
            max_frame,
            accepted: Mutex::default(),
            submitted_at: Mutex::default(),
            stopped_at: Mutex::default(),
            answered: Mutex::default(),
            answered_as: Mutex::default(),
            awaited: Mutex::default(),
            crashes_heard: AtomicU64::new(0),
            failures: Mutex::default(),
            notes: Mutex::default(),
        }
    }
    fn note(&self, id: &str, what: String) {
        let at = mono_ns() / 1000;
        self.notes
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_default()
            .push(format!("{at}us: {what}"));
    }
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
    fn new_id(&self) -> String {
        format!("p{}", self.next_id.fetch_add(1, SeqCst))
    }
    fn trying(&self, id: &str) {
        self.submitted_at
            .lock()
            .unwrap()
            .insert(id.to_string(), mono_ns());
    }
    fn accept(&self, id: &str, parent: Option<&str>, leaf: Option<Leaf>) {
        self.note(id, format!("accepted, parent {parent:?}, {leaf:?}"));
        let accepted = Accepted {
            parent: parent.map(str::to_string),
            leaf,
        };
        let previous = self
            .accepted
            .lock()
            .unwrap()
            .insert(id.to_string(), accepted);
        assert!(previous.is_none(), "request id {id} accepted twice");
    }
    fn awaiting(&self, id: &str) {
        self.awaited.lock().unwrap().insert(id.to_string());
    }

    /// Records the answer a caller got, and checks it is one its node could give.
    fn answer(&self, id: &str, leaf: Option<Leaf>, result: &Result<Vec<u8>, SubmitError>) {
        self.note(
            id,
            format!(
                "answered {:?}",
                result.as_ref().map(Vec::len).map_err(|e| e.to_string())
            ),
        );
        *self
            .answered
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert(0) += 1;
        let answered_as = match result.as_ref().map_err(SubmitError::task_error) {
            Ok(_) => JobResult::Success,
            Err(Some(e)) => JobResult::of(&Err(e.clone())),
            Err(None) => JobResult::Failure,
        };
        self.answered_as
            .lock()
            .unwrap()
            .insert(id.to_string(), answered_as);
        let error = match result {
            Ok(value) => {
                if let Some(leaf) = leaf {
                    self.check_value(id, leaf, value);
                }
                return;
            }
            Err(error) => error,
        };
        let dropped = error.to_string().contains("coordinator was dropped");
        if error.is_cancelled() || error.is_timeout() || dropped {
            self.stopped_at
                .lock()
                .unwrap()
                .insert(id.to_string(), mono_ns());
        }
        let Some(task_error) = error.task_error() else {
            return self.fail(format!("{id}: accepted, answered as rejected: {error}"));
        };
        let message = task_error.message().to_string();
        if task_error.is_worker_lost() || task_error.is_poison() {
            if message.contains("exited with status") || message.contains("killed by signal") {
                self.crashes_heard.fetch_add(1, SeqCst);
            }
            return;
        }
        if error.is_cancelled() || error.is_timeout() || dropped || task_error.is_shutdown() {
            return;
        }
        let Some(leaf) = leaf else {
            return self.fail(format!("{id}: a parent ended with {error}"));
        };
        let expected = match leaf.act {
            Act::Fail => task_error.is_node_error() && message.contains(&format!("{id} failed")),
            Act::Panic => task_error.is_panic() && message.contains(&format!("{id} panicked")),
            Act::Bytes(n) if n as usize + 64 > self.max_frame => task_error.is_protocol_error(),
            _ => false,
        };
        let padded = leaf.pad + 300 > self.max_frame && task_error.is_protocol_error();
        if !expected && !padded {
            self.fail(format!("{id}: {leaf:?} answered {error}"));
        }
    }

    fn check_value(&self, id: &str, leaf: Leaf, value: &[u8]) {
        let right = match leaf.act {
            Act::Value | Act::Nap(_) | Act::Spin(_) | Act::CrashOnce => value == id.as_bytes(),
            Act::Bytes(n) => {
                value.len() as u64 == n
                    && value.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8)
            }
            Act::Fail | Act::Panic | Act::Exit(_) | Act::Abort => false,
        };
        if !right {
            let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
            self.fail(format!(
                "{id}: {leaf:?} succeeded with {} bytes: {shown:?}",
                value.len()
            ));
        }
    }
}

/// The settings of one seed's pool and coordinator.
#[derive(Debug)]
struct Setup {
    workers: usize,
    per_worker: usize,
    prefetch: usize,
    cancel_grace: Duration,
    task_timeout: Option<Duration>,
    recycle_after: Option<u64>,
    poison_after: u32,
    max_frame: usize,
    worker_threads: usize,
    limit: Option<usize>,
    /// The pool is started on a runtime of its own, which shuts down at this op: answers are
    /// read on the pool's own runtime from then on.
    starter_ends: Option<u64>,
    end: End,
}

#[derive(Debug, Clone, Copy)]
enum End {
    /// The coordinator shuts down with this grace at op `at`.
    /// With `again`, a second one with no grace follows two ops later (an impatient Ctrl-C).
    Shutdown {
        at: u64,
        grace: Duration,
        again: bool,
    },
    /// The pool itself shuts down at op `at`, the coordinator after the last op.
    PoolShutdown { at: u64, grace: Duration },
    /// The last handle is dropped after the last op.
    Drop,
}

impl Setup {
    fn draw(rng: &mut Rng, ops: u64) -> Self {
        let (at, grace) = (ops / 2 + rng.below(ops / 2), rng.micros(60_000));
        let end = match rng.below(10) {
            0..5 => End::Shutdown {
                at,
                grace,
                again: rng.chance(30),
            },
            5..7 => End::PoolShutdown { at, grace },
            _ => End::Drop,
        };
        Setup {
            workers: 1 + rng.below(3) as usize,
            per_worker: if rng.chance(70) { 1 } else { 2 },
            prefetch: [0, 1, 2, 4, 16][rng.below(5) as usize],
            cancel_grace: Duration::from_millis(20 + rng.below(200)),
            task_timeout: rng
                .chance(25)
                .then(|| Duration::from_millis(80 + rng.below(300))),
            recycle_after: rng.chance(20).then(|| 2 + rng.below(10)),
            poison_after: 1 + rng.below(2) as u32,
            max_frame: [1024, 4096, 16 << 10, 64 << 10][rng.below(4) as usize],
            worker_threads: 1 + rng.below(2) as usize,
            limit: rng.chance(30).then(|| 1 + rng.below(4) as usize),
            starter_ends: rng.chance(20).then(|| rng.below(ops)),
            end,
        }
    }
}

fn draw_leaf(rng: &mut Rng, max_frame: usize) -> Leaf {
    let frame = max_frame as u64;
    let act = match rng.below(100) {
        0..30 => Act::Value,
        30..38 => Act::Fail,
        38..44 => Act::Panic,
        44..56 => Act::Nap(if rng.chance(15) { 300 } else { rng.below(20) }),
        56..64 => Act::Spin(if rng.chance(25) { 300 } else { rng.below(15) }),
        64..67 => Act::Exit(1 + rng.below(5) as i32),
        67..70 => Act::Abort,
        70..76 => Act::CrashOnce,
        76..84 => Act::Bytes(frame - 100 + rng.below(140)),
        84..88 => Act::Bytes(frame + rng.below(frame)),
        _ => Act::Bytes(rng.below(frame / 2)),
    };
    let pad = match rng.below(100) {
        0..6 => (frame - 400 + rng.below(500)) as usize,
        6..9 => (frame + rng.below(100)) as usize,
        9..20 => rng.below(frame / 2) as usize,
        _ => 0,
    };
    Leaf {
        act,
        pad,
        attempts: 1,
        timeout: None,
    }
}

fn draw_options(rng: &mut Rng, leaf: &mut Leaf) -> SubmitOptions {
    let mut options = SubmitOptions::new();
    if rng.chance(20) {
        let timeout = rng.micros(60_000);
        leaf.timeout = Some(timeout);
        options = options.timeout(timeout);
    }
    if rng.chance(25) {
        leaf.attempts = 2 + rng.below(2) as u32;
        let mut policy = RetryPolicy::new(leaf.attempts)
            .backoff(Duration::from_micros(200), Duration::from_millis(5));
        if rng.chance(30) {
            policy = policy.attempt_timeout(rng.micros(30_000));
        }
        options = options.retry(policy);
    }
    options
}

fn leaf_task(world: &World, id: &str, leaf: Leaf) -> Task<Vec<u8>> {
    let node = Chaos {
        id: id.to_string(),
        log: world.log.clone(),
        act: leaf.act,
        pad: vec![7; leaf.pad],
    };
    Task::portable(id.to_string(), node)
}

/// Submits one to three leaves to the pool in one of the ways at random (spawn, try_spawn, a
/// batch) and returns the handles of those accepted.
async fn submit_leaves(
    world: &Arc<World>,
    coordinator: &Coordinator,
    parent: Option<&str>,
    rng: &mut Rng,
) -> Vec<(String, Leaf, RequestHandle<Vec<u8>>)> {
    let mut leaf = draw_leaf(rng, world.max_frame);
    let options = draw_options(rng, &mut leaf);
    let how = rng.below(100);
    if how < 25 {
        let most = if rng.chance(20) { 10 } else { 3 };
        let n = 1 + rng.below(most);
        let leaves: Vec<(String, Leaf)> = (0..n)
            .map(|_| {
                let mut one = draw_leaf(rng, world.max_frame);
                (one.attempts, one.timeout) = (leaf.attempts, leaf.timeout);
                (world.new_id(), one)
            })
            .collect();
        for (id, _) in &leaves {
            world.trying(id);
        }
        let tasks = leaves.iter().map(|(id, leaf)| leaf_task(world, id, *leaf));
        return match coordinator.submit_many(tasks, PROCESS, options) {
            Ok(batch) => {
                for (id, leaf) in &leaves {
                    world.accept(id, parent, Some(*leaf));
                }
                leaves
                    .into_iter()
                    .zip(batch.into_handles())
                    .map(|((id, leaf), handle)| (id, leaf, handle))
                    .collect()
            }
            Err(error) => {
                if !error.is_rejected() {
                    world.fail(format!("batch: not a rejection: {error}"));
                }
                Vec::new()
            }
        };
    }
    let id = world.new_id();
    let task = leaf_task(world, &id, leaf);
    world.trying(&id);
    let accepted = if how < 60 {
        coordinator.spawn(task, PROCESS, options).await
    } else {
        coordinator.try_spawn(task, PROCESS, options)
    };
    match accepted {
        Ok(handle) => {
            world.accept(&id, parent, Some(leaf));
            vec![(id, leaf, handle)]
        }
        Err(error) => {
            if !error.is_rejected() {
                world.fail(format!("{id}: not a rejection: {error}"));
            }
            Vec::new()
        }
    }
}

/// An async parent fanning out to the pool: awaits some children, drops the others, sometimes
/// cancels one.
fn parent_task(
    world: &Arc<World>,
    coordinator: &Coordinator,
    id: &str,
    seed: u64,
) -> Task<Vec<u8>> {
    let (world, coordinator, me) = (Arc::clone(world), coordinator.clone(), id.to_string());
    Task::from_fn(id.to_string(), "parent", move || async move {
        let mut rng = Rng::new(seed);
        let mut handles = Vec::new();
        for _ in 0..1 + rng.below(3) {
            tokio::time::sleep(rng.micros(3_000)).await;
            handles.extend(submit_leaves(&world, &coordinator, Some(&me), &mut rng).await);
            if rng.chance(15)
                && let Some((child, _, _)) = handles.first()
            {
                coordinator.cancel(child);
            }
        }
        for (child, leaf, handle) in handles {
            if rng.chance(30) {
                continue;
            }
            match tokio::time::timeout(ANSWER_BOUND, handle).await {
                Ok(result) => world.answer(&child, Some(leaf), &result),
                Err(_) => world.fail(format!("{child}: its parent {me} was never answered")),
            }
        }
        Ok::<_, BoxError>(Vec::new())
    })
}

fn await_answer(
    world: &Arc<World>,
    id: String,
    leaf: Option<Leaf>,
    handle: RequestHandle<Vec<u8>>,
) -> tokio::task::JoinHandle<()> {
    let world = Arc::clone(world);
    world.awaiting(&id);
    tokio::spawn(async move {
        match tokio::time::timeout(ANSWER_BOUND, handle).await {
            Ok(result) => world.answer(&id, leaf, &result),
            Err(_) => world.fail(format!("{id}: caller never answered")),
        }
    })
}

/// This process's children (the pool's workers, live or zombie), with their state.
fn children() -> Vec<(u32, char)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(me) {
            found.push((pid, state));
        }
    }
    found
}

fn pool_pids(coordinator: &Coordinator) -> Vec<(u32, u64)> {
    coordinator.system_detail().modes[PROCESS]
        .workers
        .iter()
        .filter_map(|w| w.pid.map(|pid| (pid, w.in_flight)))
        .collect()
}

/// Waits (bounded) until the pool has all its workers, then checks that it answers.
async fn probe(world: &Arc<World>, coordinator: &Coordinator, setup: &Setup) {
    let began = Instant::now();
    loop {
        let detail = coordinator.system_detail();
        let stats = &detail.modes[PROCESS];
        // A worker killed a moment ago may not be seen dead yet: the probe waits for live ones
        // (a run handed to a dead worker fails as lost, by design).
        tokio::time::sleep(Duration::from_millis(20)).await;
        let alive = stats.workers.iter().filter_map(|w| w.pid).all(|pid| {
            children()
                .iter()
                .any(|&(child, state)| child == pid && state != 'Z')
        });
        if stats.workers.len() == setup.workers && alive {
            let heard = world.crashes_heard.load(SeqCst);
            if heard > 0 && stats.restarts == 0 {
                world.fail(format!("{heard} crashes heard, no worker replaced"));
            }
            break;
        }
        if began.elapsed() > ANSWER_BOUND {
            return world.fail(format!("the pool never got its workers back: {stats:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let id = world.new_id();
    let leaf = Leaf {
        act: Act::Value,
        pad: 0,
        attempts: 3,
        timeout: None,
    };
    let policy = RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(1));
    world.trying(&id);
    let submitted = coordinator.submit_with(
        leaf_task(world, &id, leaf),
        PROCESS,
        SubmitOptions::new().retry(policy),
    );
    match tokio::time::timeout(ANSWER_BOUND, submitted).await {
        Ok(result) => {
            world.accept(&id, None, Some(leaf));
            world.awaiting(&id);
            world.answer(&id, Some(leaf), &result);
            // Beside another run in its worker, it shares that run's crash, and its thread
            // (the pool's timeout then counts the time the other blocks it).
            let beside = result
                .as_ref()
                .err()
                .and_then(SubmitError::task_error)
                .is_some_and(|e| e.is_worker_lost() || e.is_poison() || e.is_timeout());
            if result.is_err() && !(beside && setup.per_worker > 1) {
                world.fail(format!("the probe {id} failed: {result:?}"));
            }
        }
        Err(_) => world.fail(format!("the probe {id} was never answered")),
    }
}

async fn run_seed(seed: u64, ops: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let setup = Setup::draw(&mut rng, ops);
    let log = format!(
        "{}/pchaos-{}-{seed}.log",
        std::env::temp_dir().display(),
        std::process::id()
    );
    let _ = std::fs::remove_file(&log);
    let world = Arc::new(World::new(log.clone(), setup.max_frame));
    world.note("setup", format!("{setup:?}"));

    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let recorder = Recorder::attach(&publisher);
    let mut pool = ProcessExecutionStrategy::builder(registry())
        .workers(setup.workers)
        .tasks_per_worker(setup.per_worker)
        .prefetch(setup.prefetch)
        .cancel_grace(setup.cancel_grace)
        .poison_after(setup.poison_after)
        .max_frame(setup.max_frame)
        .worker_threads(setup.worker_threads);
    if let Some(timeout) = setup.task_timeout {
        pool = pool.task_timeout(timeout);
    }
    if let Some(k) = setup.recycle_after {
        pool = pool.recycle_after(k);
    }
    let mut starter = None;
    let pool = if setup.starter_ends.is_some() {
        let (runtime, pool) = std::thread::spawn(move || {
            let runtime = support::runtime(1);
            let pool = runtime.block_on(pool.start());
            (runtime, pool)
        })
        .join()
        .unwrap();
        starter = Some(runtime);
        pool
    } else {
        pool.start().await
    };
    let pool = pool.expect("the pool starts");
    let mut builder = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::PROCESS, pool.clone());
    if let Some(limit) = setup.limit {
        builder = builder.limit(PROCESS, limit);
    }
    let coordinator = builder.build();
    coordinator.start(&publisher).unwrap();
    // Only a pool shutdown keeps a handle of its own.
    let mut pool = matches!(setup.end, End::PoolShutdown { .. }).then_some(pool);

    let mut kept: Vec<(String, Option<Leaf>, RequestHandle<Vec<u8>>)> = Vec::new();
    let mut waiters = Vec::new();
    let mut shutdown = None;
    let mut pool_shutdown = None;
    let mut second = None;
    for op in 0..ops {
        if rng.chance(30) {
            tokio::time::sleep(rng.micros(1_000)).await;
        }
        if op == ops / 3 {
            probe(&world, &coordinator, &setup).await;
        }
        if setup.starter_ends == Some(op)
            && let Some(runtime) = starter.take()
        {
            world.note("kills", "the runtime the pool started on shuts down".into());
            runtime.shutdown_background();
        }
        match setup.end {
            End::Shutdown {
                at, again: true, ..
            } if at + 2 == op => {
                let coordinator = coordinator.clone();
                second = Some(tokio::spawn(async move {
                    coordinator.shutdown_with_grace(Duration::ZERO).await;
                    children()
                }));
            }
            End::Shutdown { at, grace, .. } if at == op => {
                let coordinator = coordinator.clone();
                shutdown = Some(tokio::spawn(async move {
                    let began = Instant::now();
                    coordinator.shutdown_with_grace(grace).await;
                    (
                        children(),
                        coordinator.counts(),
                        began.elapsed(),
                        coordinator,
                    )
                }));
            }
            End::PoolShutdown { at, grace } if at == op => {
                let pool = pool.take().unwrap();
                pool_shutdown = Some(tokio::spawn(async move {
                    let began = Instant::now();
                    pool.shutdown(grace).await;
                    (children(), began.elapsed())
                }));
            }
            _ => {}
        }
        match rng.below(100) {
            0..18 => {
                let id = world.new_id();
                let mut leaf = draw_leaf(&mut rng, setup.max_frame);
                let options = draw_options(&mut rng, &mut leaf);
                let task = leaf_task(&world, &id, leaf);
                let (world, coordinator) = (Arc::clone(&world), coordinator.clone());
                waiters.push(tokio::spawn(async move {
                    world.trying(&id);
                    let submitted = coordinator.submit_with(task, PROCESS, options);
                    match tokio::time::timeout(ANSWER_BOUND, submitted).await {
                        Ok(Err(error)) if error.is_rejected() => {
                            world.note(&id, format!("rejected: {error}"));
                        }
                        Ok(result) => {
                            world.accept(&id, None, Some(leaf));
                            world.awaiting(&id);
                            world.answer(&id, Some(leaf), &result);
                        }
                        Err(_) => world.fail(format!("{id}: submit never returned")),
                    }
                }));
            }
            18..45 => {
                for (id, leaf, handle) in submit_leaves(&world, &coordinator, None, &mut rng).await
                {
                    if rng.chance(15) {
                        drop(handle);
                    } else {
                        kept.push((id, Some(leaf), handle));
                    }
                }
            }
            45..52 => {
                let id = world.new_id();
                let task = parent_task(&world, &coordinator, &id, rng.next());
                world.trying(&id);
                match coordinator.try_spawn(task, ExecutionMode::ASYNC, SubmitOptions::new()) {
                    Ok(handle) => {
                        world.accept(&id, None, None);
                        kept.push((id, None, handle));
                    }
                    Err(error) if error.is_rejected() => {}
                    Err(error) => world.fail(format!("{id}: not a rejection: {error}")),
                }
            }
            52..62 if !kept.is_empty() => {
                // The newest (likely queued in a worker) or any.
                let at = if rng.chance(50) {
                    kept.len() - 1
                } else {
                    rng.below(kept.len() as u64) as usize
                };
                let (id, leaf, handle) = kept.swap_remove(at);
                handle.cancel();
                waiters.push(await_answer(&world, id, leaf, handle));
            }
            62..68 => {
                let ids: Vec<String> = world.accepted.lock().unwrap().keys().cloned().collect();
                if !ids.is_empty() {
                    coordinator.cancel(&ids[rng.below(ids.len() as u64) as usize]);
                }
            }
            68..72 => {
                // A worker killed from outside, a busy one if there is one.
                let pids = pool_pids(&coordinator);
                let busy: Vec<u32> = pids.iter().filter(|p| p.1 > 0).map(|p| p.0).collect();
                let all: Vec<u32> = pids.iter().map(|p| p.0).collect();
                // Now and then any child: a replacement still announcing itself too.
                let any: Vec<u32> = children().iter().map(|c| c.0).collect();
                let from = match () {
                    () if rng.chance(30) => &any,
                    () if busy.is_empty() => &all,
                    () => &busy,
                };
                if !from.is_empty() {
                    let pid = from[rng.below(from.len() as u64) as usize] as i32;
                    if rng.chance(70) {
                        world.note("kills", format!("SIGKILL {pid}"));
                        // SAFETY: sends a signal to a worker of this process's pool.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    } else {
                        // Stopped a moment: its pipes fill, then it goes on.
                        let pause = Duration::from_millis(5 + rng.below(80));
                        world.note("kills", format!("SIGSTOP {pid} for {pause:?}"));
                        // SAFETY: as above.
                        unsafe { libc::kill(pid, libc::SIGSTOP) };
                        std::thread::spawn(move || {
                            std::thread::sleep(pause);
                            // SAFETY: as above.
                            unsafe { libc::kill(pid, libc::SIGCONT) };
                        });
                    }
                }
            }
            72..90 if !kept.is_empty() => {
                let (id, leaf, handle) = kept.swap_remove(rng.below(kept.len() as u64) as usize);
                waiters.push(await_answer(&world, id, leaf, handle));
            }
            90..95 => {
                let id = world.new_id();
                let leaf = draw_leaf(&mut rng, setup.max_frame);
                world.trying(&id);
                let task = leaf_task(&world, &id, leaf);
                if coordinator
                    .try_spawn(task, PROCESS, SubmitOptions::new())
                    .is_ok()
                {
                    world.accept(&id, None, Some(leaf));
                }
            }
            95..98 => {
                // Every worker busy in a node that blocks it, more queued behind, and those
                // cancelled a moment later: none of them may start.
                let mut queued = Vec::new();
                for i in 0..setup.workers + 1 + rng.below(3) as usize {
                    let id = world.new_id();
                    let act = if i < setup.workers {
                        Act::Spin(600)
                    } else {
                        Act::Value
                    };
                    let leaf = Leaf {
                        act,
                        pad: 0,
                        attempts: 1,
                        timeout: None,
                    };
                    world.trying(&id);
                    let task = leaf_task(&world, &id, leaf);
                    match coordinator.try_spawn(task, PROCESS, SubmitOptions::new()) {
                        Ok(handle) => {
                            world.accept(&id, None, Some(leaf));
                            if i < setup.workers {
                                kept.push((id, Some(leaf), handle));
                            } else {
                                queued.push((id, leaf, handle));
                            }
                        }
                        Err(error) if error.is_rejected() => {}
                        Err(error) => world.fail(format!("{id}: not a rejection: {error}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
                for (id, leaf, handle) in queued {
                    handle.cancel();
                    waiters.push(await_answer(&world, id, Some(leaf), handle));
                }
            }
            _ => {}
        }
    }
    for (id, leaf, handle) in kept.drain(..) {
        waiters.push(await_answer(&world, id, leaf, handle));
    }
    if let Some(pool_shutdown) = pool_shutdown {
        match tokio::time::timeout(Duration::from_secs(20), pool_shutdown).await {
            Ok(Ok((left, took))) => {
                world.note("pool shutdown", format!("took {took:?}, left {left:?}"));
                check_took(&world, &setup, took, "the pool's shutdown");
                if !left.is_empty() {
                    world.fail(format!(
                        "workers left when the pool's shutdown returned: {left:?}"
                    ));
                }
            }
            _ => world.fail("the pool's shutdown did not return within 20 s".into()),
        }
        let coordinator = coordinator.clone();
        shutdown = Some(tokio::spawn(async move {
            let began = Instant::now();
            coordinator
                .shutdown_with_grace(Duration::from_secs(5))
                .await;
            (
                children(),
                coordinator.counts(),
                began.elapsed(),
                coordinator,
            )
        }));
    }
    if let Some(second) = second {
        match tokio::time::timeout(Duration::from_secs(20), second).await {
            Ok(Ok(left)) if left.is_empty() => {}
            Ok(Ok(left)) => world.fail(format!(
                "workers left when a second shutdown returned: {left:?}"
            )),
            _ => world.fail("a second shutdown did not return within 20 s".into()),
        }
    }
    let ended = match shutdown {
        Some(shutdown) => {
            drop(coordinator);
            match tokio::time::timeout(Duration::from_secs(20), shutdown).await {
                Ok(Ok((left, counts, took, coordinator))) => {
                    world.note(
                        "shutdown",
                        format!("took {took:?}, {counts:?}, left {left:?}"),
                    );
                    if !left.is_empty() {
                        world.fail(format!("workers left when shutdown returned: {left:?}"));
                    }
                    if let End::Shutdown { .. } = setup.end {
                        check_took(&world, &setup, took, "the coordinator's shutdown");
                    }
                    Some((counts, coordinator))
                }
                _ => {
                    world.fail("shutdown_with_grace did not return within 20 s".into());
                    None
                }
            }
        }
        None => {
            drop(coordinator);
            None
        }
    };
    for waiter in waiters {
        let _ = tokio::time::timeout(ANSWER_BOUND * 2, waiter).await;
    }
    // Quiet: every request accepted so far announced (parents may still be answering).
    let settle = Instant::now();
    loop {
        let counts = recorder.terminal_counts();
        let open: Vec<String> = world
            .accepted
            .lock()
            .unwrap()
            .keys()
            .filter(|id| !counts.contains_key(*id))
            .cloned()
            .collect();
        if open.is_empty() {
            break;
        }
        if settle.elapsed() > ANSWER_BOUND {
            world.fail(format!("never announced: {open:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // No worker left once the last handle went: killed and reaped, however it ended.
    let gone = Instant::now();
    loop {
        let left = children();
        if left.is_empty() {
            break;
        }
        if gone.elapsed() > ANSWER_BOUND {
            world.fail(format!("workers left after the end: {left:?}"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let accepted = world.accepted.lock().unwrap().clone();
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.shutdown_with_grace(Duration::from_secs(1)),
    )
    .await;

    check_messages(&world, &recorder, &accepted, ended.as_ref());
    let starts = read_starts(&log);
    check_starts(&world, &accepted, &starts, ended.as_ref().map(|e| &e.1));
    if let Some((_, coordinator)) = ended {
        drop(coordinator);
    }
    ACCEPTED.fetch_add(accepted.len() as u64, SeqCst);
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
        for m in recorder.messages().iter().filter(|m| m.is_terminal()) {
            let kind = match m {
                RequestCompletionMessage::Success(_) => "ok",
                RequestCompletionMessage::Failure(f) => match &f.error {
                    e if e.is_cancelled() => "cancelled",
                    e if e.is_timeout() => "timeout",
                    e if e.is_shutdown() => "shutdown",
                    e if e.is_node_error() => "node",
                    e if e.is_panic() => "panic",
                    e if e.is_poison() => "poison",
                    e if e.is_worker_lost() => "lost",
                    e if e.is_protocol_error() => "protocol",
                    e if e.is_strategy_error() => "strategy",
                    _ => "other",
                },
                _ => "?",
            };
            *kinds.entry(kind).or_default() += 1;
        }
        eprintln!("  {:?}: {} accepted, {kinds:?}", setup.end, accepted.len());
    }
    // Every awaited caller answered, once.
    let answered = world.answered.lock().unwrap().clone();
    for id in world.awaited.lock().unwrap().iter() {
        match answered.get(id) {
            Some(1) => {}
            n => world.fail(format!("{id}: awaited caller answered {n:?} times")),
        }
    }
    let _ = std::fs::remove_file(&log);
    for (id, a) in &accepted {
        if a.leaf.is_some_and(|l| l.act == Act::CrashOnce) {
            let _ = std::fs::remove_file(format!("{log}.{id}"));
        }
    }
    let mut failures = std::mem::take(&mut *world.failures.lock().unwrap());
    if !failures.is_empty() {
        let notes = world.notes.lock().unwrap();
        for what in ["setup", "shutdown", "pool shutdown", "kills"] {
            failures.push(format!("{what}: {:?}", notes.get(what)));
        }
    }
    failures
}

fn check_took(world: &World, setup: &Setup, took: Duration, what: &str) {
    let grace = match setup.end {
        End::Shutdown { grace, .. } | End::PoolShutdown { grace, .. } => grace,
        End::Drop => return,
    };
    if took > grace + Duration::from_secs(6) {
        world.fail(format!("{what} with grace {grace:?} took {took:?}"));
    }
}

/// One terminal message per accepted request, none for others; the job table's counts.
fn check_messages(
    world: &World,
    recorder: &Recorder,
    accepted: &HashMap<String, Accepted>,
    ended: Option<&(coordinator::JobCounts, Coordinator)>,
) {
    let counts = recorder.terminal_counts();
    // The message, the caller's answer and the job agree on how each request ended.
    let mut announced = HashMap::new();
    for m in recorder.messages() {
        let result = match &m {
            RequestCompletionMessage::Success(_) => JobResult::Success,
            RequestCompletionMessage::Failure(f) => JobResult::of(&Err(f.error.clone())),
            _ => continue,
        };
        announced.insert(m.request_id().unwrap().to_string(), result);
    }
    for (id, answered) in world.answered_as.lock().unwrap().iter() {
        if announced.get(id).is_some_and(|a| a != answered) {
            world.fail(format!(
                "{id}: answered {answered:?}, announced {:?}",
                announced[id]
            ));
        }
    }
    for (id, a) in accepted {
        let Some(job) = ended.and_then(|(_, c)| c.job(id)) else {
            continue;
        };
        if job.result() != announced.get(id).copied() {
            world.fail(format!(
                "{id}: job {:?}, announced {:?}",
                job.result(),
                announced.get(id)
            ));
        }
        // A caller's deadline holds whatever the worker does (a node blocking its thread).
        let late = a.leaf.and_then(|l| l.timeout).zip(job.duration());
        if let Some((timeout, took)) = late
            && took > timeout + Duration::from_secs(2)
        {
            world.fail(format!(
                "{id}: a deadline of {timeout:?}, ended after {took:?}"
            ));
        }
    }
    let Some((jobs, _)) = ended else {
        return;
    };
    for id in accepted.keys() {
        let n = counts.get(id).copied().unwrap_or(0);
        if n != 1 {
            let notes = world.notes.lock().unwrap().get(id).cloned();
            world.fail(format!("{id}: {n} terminal messages; {notes:?}"));
        }
    }
    for (id, n) in &counts {
        if !accepted.contains_key(id) {
            world.fail(format!("{id}: {n} terminal messages, never accepted"));
        }
    }
    if jobs.open != 0 {
        world.fail(format!("{} jobs open after shutdown returned", jobs.open));
    }
    if jobs.closed != accepted.len() as u64 {
        world.fail(format!("jobs {jobs:?}, {} accepted", accepted.len()));
    }
    let succeeded = recorder
        .messages()
        .iter()
        .filter(|m| matches!(m, RequestCompletionMessage::Success(_)))
        .count() as u64;
    if succeeded != jobs.succeeded {
        world.fail(format!(
            "{succeeded} success messages, {} jobs succeeded",
            jobs.succeeded
        ));
    }
}

/// The starts the workers logged: request id and when, in order.
fn read_starts(log: &str) -> Vec<(String, u64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?.to_string();
            let _pid = fields.next()?;
            Some((id, fields.next()?.parse().ok()?))
        })
        .collect()
}

/// No run starts more often than its request's attempts, and none starts after a stop above it
/// was answered unless it was submitted before (the cancellation was then on its way to the
/// worker: counted, not failed).
fn check_starts(
    world: &World,
    accepted: &HashMap<String, Accepted>,
    starts: &[(String, u64)],
    coordinator: Option<&Coordinator>,
) {
    let mut per_id: HashMap<&str, u32> = HashMap::new();
    for (id, _) in starts {
        *per_id.entry(id.as_str()).or_default() += 1;
    }
    for (id, &n) in &per_id {
        let Some(leaf) = accepted.get(*id).and_then(|a| a.leaf) else {
            world.fail(format!("{id} started {n} times, never accepted"));
            continue;
        };
        let attempts = coordinator
            .and_then(|c| c.job(id))
            .map_or(leaf.attempts, |job| job.attempts());
        if n > attempts {
            let notes = world.notes.lock().unwrap().get(*id).cloned();
            world.fail(format!(
                "{id}: started {n} times in {attempts} attempts; {notes:?}"
            ));
        }
    }
    let stopped = world.stopped_at.lock().unwrap().clone();
    let submitted = world.submitted_at.lock().unwrap().clone();
    for (id, started) in starts {
        let mut above = Some(id.clone());
        while let Some(ancestor) = above {
            if let Some(&stop) = stopped.get(&ancestor)
                && *started > stop
            {
                if submitted.get(id).is_some_and(|&s| s > stop) {
                    world.fail(format!(
                        "{id} started, submitted after {ancestor}'s stop was answered"
                    ));
                } else {
                    LATE_STARTS.fetch_add(1, SeqCst);
                    LATEST_START_US.fetch_max((started - stop) / 1000, SeqCst);
                    if started - stop > late_bound() * 1_000_000 {
                        let notes = world.notes.lock().unwrap();
                        world.fail(format!(
                            "{id} started {} us after {ancestor}'s stop: {:?} / {:?}",
                            (started - stop) / 1000,
                            notes.get(id),
                            notes.get(&ancestor)
                        ));
                    }
                }
            }
            above = accepted.get(&ancestor).and_then(|a| a.parent.clone());
        }
    }
}

/// A start this many milliseconds after a stop above it was answered fails (`CHAOS_LATE`,
/// default 300): the cancellation reached its worker long before, and a run the worker had
/// queued is dropped when it is read.
fn late_bound() -> u64 {
    std::env::var("CHAOS_LATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn main() {
    std::panic::set_hook({
        let default_hook = std::panic::take_hook();
        Box::new(move |info| {
            let ours = info
                .payload()
                .downcast_ref::<String>()
                .is_some_and(|s| s.starts_with("chaos:"));
            if !ours {
                default_hook(info);
            }
        })
    });
    run_worker_if_requested(&registry());
    let ChaosRun {
        first,
        seeds,
        ops,
        failed,
        elapsed,
    } = run_chaos_seeds(24, 100, run_seed);
    eprintln!(
        "process chaos: {seeds} seeds from {first}, {ops} ops each, {} requests accepted, {} \
         starts after a stop was answered (handed out before it; the latest {} us after), {:?}",
        ACCEPTED.load(SeqCst),
        LATE_STARTS.load(SeqCst),
        LATEST_START_US.load(SeqCst),
        elapsed
    );
    if failed.is_empty() {
        println!("test process_chaos ... ok");
    } else {
        println!("test process_chaos ... FAILED: seeds {failed:?}");
        std::process::exit(1);
    }
}
