//! The parent side: spawning, supervising and talking to worker processes.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use task_core::{
    BoxFuture, Completion, ErasedTask, NodeRegistry, Outcome, RequestId, StrategyStats, TaskError,
    TaskExecutionStrategy, WorkerStats,
};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, Semaphore, oneshot};

use super::wire::{self, FromWorker, HEADER_LEN, PROTOCOL_VERSION};
use super::worker::{CONCURRENCY_ENV, MAX_FRAME_ENV, PIPES_ENV, THREADS_ENV, WORKER_ENV};
use crate::tracker::Tracker;

/// Why a [`ProcessExecutionStrategy`] could not start.
#[derive(Clone)]
pub struct ProcessError {
    kind: ErrorKind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    Spawn,
    Handshake,
    HandshakeTimeout,
    Protocol,
    Runtime,
}

impl ProcessError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A worker process could not be started (missing or unexecutable command, resource limits).
    pub fn is_spawn(&self) -> bool {
        self.kind == ErrorKind::Spawn
    }

    /// A worker announced another protocol version (it is a different build of the program).
    pub fn is_handshake_mismatch(&self) -> bool {
        self.kind == ErrorKind::Handshake
    }

    /// A worker did not announce itself in time (it is not a worker: `main` never called
    /// [`run_worker_if_requested`](super::run_worker_if_requested)).
    pub fn is_handshake_timeout(&self) -> bool {
        self.kind == ErrorKind::HandshakeTimeout
    }

    /// A worker broke the wire protocol during the handshake (wrote something that is not a frame).
    pub fn is_protocol(&self) -> bool {
        self.kind == ErrorKind::Protocol
    }

    /// The supervisor thread or its runtime could not be started, or `start` was not awaited on a
    /// tokio runtime.
    pub fn is_runtime(&self) -> bool {
        self.kind == ErrorKind::Runtime
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for ProcessError {}

/// Configures and starts a [`ProcessExecutionStrategy`].
#[derive(Debug)]
pub struct ProcessBuilder {
    workers: usize,
    program: Option<PathBuf>,
    args: Vec<OsString>,
    registry: NodeRegistry,
    max_frame: usize,
    per_worker: usize,
    prefetch: usize,
    worker_threads: usize,
    task_timeout: Option<Duration>,
    cancel_grace: Duration,
    poison_after: u32,
    recycle_after: Option<u64>,
    handshake_timeout: Duration,
}

impl ProcessBuilder {
    fn new(registry: NodeRegistry) -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, usize::from),
            program: None,
            args: Vec::new(),
            registry,
            max_frame: wire::DEFAULT_MAX_FRAME,
            per_worker: 1,
            prefetch: 16,
            worker_threads: 1,
            task_timeout: None,
            cancel_grace: Duration::from_secs(1),
            poison_after: 2,
            recycle_after: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    /// How many worker processes to keep running (default: the machine's cores).
    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// The program to start as a worker, with its arguments (default: the current executable,
    /// with no arguments). It must call
    /// [`run_worker_if_requested`](super::run_worker_if_requested) first thing in `main`.
    #[must_use]
    pub fn command(
        mut self,
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Self {
        self.program = Some(program.into());
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// The largest frame either side accepts, in bytes (default 16 MiB). A task or output
    /// larger than this fails with [`TaskError::is_protocol_error`].
    #[must_use]
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(64);
        self
    }

    /// How many tasks one worker runs at once (default 1, as a `ProcessPoolExecutor` worker or a
    /// Celery prefork child does).
    ///
    /// With more than one, a worker that crashes fails every task running in it at that moment,
    /// not only the one that crashed it (the pool cannot tell them apart), and each counts toward
    /// being [poison](Self::poison_after).
    #[must_use]
    pub fn tasks_per_worker(mut self, tasks: usize) -> Self {
        self.per_worker = tasks.max(1);
        self
    }

    /// How many more tasks each worker is handed ahead of time (default 16): they wait in the
    /// worker's queue, so it never waits for its next task and frames travel in batches. A task
    /// a worker was handed but had not started when it died goes to another worker; it never
    /// fails for it. 0 hands a worker a task only when it has a place to run it. A task waits
    /// for a place when every worker is full.
    #[must_use]
    pub fn prefetch(mut self, tasks: usize) -> Self {
        self.prefetch = tasks;
        self
    }

    /// How many runtime threads each worker runs tasks on (default 1).
    #[must_use]
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads.max(1);
        self
    }

    /// A task still running `timeout` after it started fails as timed out at once, and is
    /// cancelled in its worker as [`cancel_grace`](Self::cancel_grace) says. Default: no
    /// timeout.
    #[must_use]
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout);
        self
    }

    /// How long a task whose caller stopped waiting (a cancellation, a coordinator's deadline,
    /// [`task_timeout`](Self::task_timeout)) has to stop after its worker is told (default 1 s).
    /// A queued task is dropped at once, a running one where it next waits; one that has not
    /// stopped by then (a CPU loop in the node, which nothing else interrupts) has its worker
    /// killed and replaced, failing only the tasks running in it
    /// ([`TaskError::is_worker_lost`]); the tasks queued in it go to other workers.
    #[must_use]
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// After how many crashes in a row of its worker a task is "poison" (default 2, at least
    /// 1): it then fails with [`TaskError::is_poison`], and a coordinator does not retry it
    /// whatever its retry policy says. Earlier crashes fail it with
    /// [`TaskError::is_worker_lost`], which a retry policy may retry. Counted by request id
    /// (retries share it) for the last 1,024 requests whose workers crashed; a request that gets an
    /// answer starts again from 0.
    #[must_use]
    pub fn poison_after(mut self, crashes: u32) -> Self {
        self.poison_after = crashes.max(1);
        self
    }

    /// Replaces each worker after it has been given `tasks` tasks (default: never), for nodes
    /// that leak memory or state.
    #[must_use]
    pub fn recycle_after(mut self, tasks: u64) -> Self {
        self.recycle_after = Some(tasks.max(1));
        self
    }

    /// How long a new worker has to announce itself (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Starts the supervisor and every worker, and checks each worker's handshake.
    ///
    /// # Errors
    ///
    /// When a worker cannot be spawned, does not announce itself in time, or announces another
    /// protocol version. No worker is left running then. [`ProcessError::is_runtime`] when it is
    /// not awaited on a tokio runtime (the workers' answers are read there).
    pub async fn start(self) -> Result<ProcessExecutionStrategy, ProcessError> {
        let readers = tokio::runtime::Handle::try_current().map_err(|_| {
            ProcessError::new(
                ErrorKind::Runtime,
                "ProcessBuilder::start must be awaited on a tokio runtime",
            )
        })?;
        let program = match self.program.clone() {
            Some(p) => p,
            None => std::env::current_exe().map_err(|e| {
                ProcessError::new(
                    ErrorKind::Spawn,
                    format!("cannot find the current executable: {e}"),
                )
            })?,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                ProcessError::new(ErrorKind::Runtime, format!("supervisor runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<Vec<tokio::task::JoinHandle<()>>>();
        std::thread::Builder::new()
            .name("exec-process-supervisor".into())
            .spawn(move || {
                // Workers are spawned from this thread, and their parent-death signal fires when
                // it exits; it lives until the strategy shuts down or its last handle is dropped.
                // The slots still supervised then were told to kill their workers: each is given
                // a moment to reap its worker, so none is left a zombie.
                if let Ok(lifecycles) = runtime.block_on(stop_rx) {
                    let reaped = futures::future::join_all(lifecycles);
                    let _ = runtime.block_on(async {
                        tokio::time::timeout(Duration::from_secs(2), reaped).await
                    });
                }
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| {
                ProcessError::new(ErrorKind::Runtime, format!("supervisor thread: {e}"))
            })?;

        let shared = Arc::new(Shared {
            config: Config {
                program,
                args: self.args,
                max_frame: self.max_frame,
                per_worker: self.per_worker,
                worker_threads: self.worker_threads,
                task_timeout: self.task_timeout,
                cancel_grace: self.cancel_grace,
                poison_after: self.poison_after,
                recycle_after: self.recycle_after,
                handshake_timeout: self.handshake_timeout,
            },
            expected_names: self
                .registry
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            runtime: handle.clone(),
            readers,
            readers_gone: AtomicBool::new(false),
            state: Mutex::new(PoolState {
                slots: (0..self.workers).map(|_| None).collect(),
                ..PoolState::default()
            }),
            places: Semaphore::new(
                self.workers
                    .saturating_mul(self.per_worker.saturating_add(self.prefetch))
                    .min(Semaphore::MAX_PERMITS),
            ),
            crashes: Mutex::new(CrashLog::default()),
            ready: Notify::new(),
            tracker: Tracker::default(),
            next_run: AtomicU64::new(0),
            next_worker: AtomicU64::new(0),
            stop: Mutex::new(Some(stop_tx)),
        });

        // Start every worker and wait for all handshakes before taking tasks.
        let mut first = Vec::new();
        for slot in 0..self.workers {
            let shared = Arc::clone(&shared);
            first.push(handle.spawn(async move { shared.start_worker(slot).await }));
        }
        let mut failure = None;
        let mut started = Vec::new();
        for (slot, join) in first.into_iter().enumerate() {
            match join.await {
                Ok(Ok(worker)) => started.push((slot, worker)),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(e) => {
                    failure = failure.or(Some(ProcessError::new(ErrorKind::Runtime, e.to_string())))
                }
            }
        }
        if let Some(error) = failure {
            for (_, mut worker) in started {
                let _ = worker.child.start_kill();
                let _ = worker.child.wait().await;
            }
            shared.stop_supervisor();
            return Err(error);
        }
        for (slot, worker) in started {
            // Nothing can have stopped the pool yet: no handle to it exists.
            let Ok(live) = shared.install(slot, worker, false) else {
                continue;
            };
            let s = Arc::clone(&shared);
            let lifecycle = handle.spawn(async move { s.supervise(slot, live).await });
            shared.lock().lifecycles.push(lifecycle);
        }
        Ok(ProcessExecutionStrategy {
            _owner: Arc::new(Owner {
                shared: Arc::clone(&shared),
            }),
            shared,
        })
    }
}

#[derive(Debug)]
struct Config {
    program: PathBuf,
    args: Vec<OsString>,
    max_frame: usize,
    per_worker: usize,
    worker_threads: usize,
    task_timeout: Option<Duration>,
    cancel_grace: Duration,
    poison_after: u32,
    recycle_after: Option<u64>,
    handshake_timeout: Duration,
}

/// A run handed to a worker and not answered yet.
struct Pending {
    /// `None` once the caller was answered early (timed out) or stopped waiting.
    reply: Option<oneshot::Sender<Reply>>,
    /// Whether the worker said it started the run.
    started: bool,
    /// The request the run belongs to, to count the crashes of its attempts.
    request_id: RequestId,
    /// The task timeout's timer, once the run started: stopped when the run is answered.
    timer: Option<tokio::task::AbortHandle>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

/// What a run's caller learns from the pool.
enum Reply {
    /// The worker's answer, or why the run failed.
    Done(Result<Vec<u8>, TaskError>),
    /// The worker died before starting the run: it goes to another worker. `explained` when
    /// another run or the pool accounts for the death (the worker was running something, or was
    /// killed), so the handover does not count toward [`MAX_HANDOVERS`].
    NotStarted { explained: bool },
}

/// How many times in a row the attempts of recent requests crashed their workers.
#[derive(Default)]
struct CrashLog {
    counts: HashMap<RequestId, u32>,
    /// The requests counted, oldest first, to forget the oldest past [`CrashLog::CAPACITY`].
    order: VecDeque<RequestId>,
}

impl CrashLog {
    const CAPACITY: usize = 1024;

    /// Counts one more crash of `request_id`'s attempts; returns how many in a row so far.
    fn crashed(&mut self, request_id: &RequestId) -> u32 {
        if let Some(count) = self.counts.get_mut(request_id) {
            *count += 1;
            return *count;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some(oldest) = self.order.pop_front()
        {
            self.counts.remove(&oldest);
        }
        self.order.push_back(request_id.clone());
        self.counts.insert(request_id.clone(), 1);
        1
    }

    /// `request_id` got an answer (or was declared poison): its count starts again from 0.
    fn forget(&mut self, request_id: &RequestId) {
        if self.counts.remove(request_id).is_some() {
            self.order.retain(|id| id != request_id);
        }
    }
}

/// A live worker as the pool sees it.
struct Slot {
    id: u64,
    pid: u32,
    /// The worker's input. Closing it lets the worker finish what it has and exit.
    input: Option<Arc<WorkerInput>>,
    kill: Option<oneshot::Sender<String>>,
    /// Keyed by the pool's own run counter, never by outside input: a fast unkeyed hash is safe.
    pending: HashMap<u64, Pending, foldhash::fast::FixedState>,
    given: u64,
    completed: u64,
    /// Takes no more runs (it is being recycled): its input closes once its runs are answered.
    draining: bool,
}

impl Slot {
    fn request_kill(&mut self, reason: String) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(reason);
        }
    }

    /// Gives up on `run` (its caller is gone or was answered as timed out): its caller is not
    /// answered, and the worker is told to drop it. Returns whether `run` was still pending here.
    fn abandon(&mut self, run: u64) -> bool {
        let Some(pending) = self.pending.get_mut(&run) else {
            return false;
        };
        pending.reply = None;
        if let Some(timer) = pending.timer.take() {
            timer.abort();
        }
        let cancel = wire::encode_frame(&wire::ToWorker::Cancel { id: run }, usize::MAX);
        if let (Some(input), Ok(frame)) = (&self.input, cancel) {
            // A closed input means the worker is ending anyway.
            let _ = input.send(&frame, true);
        }
        true
    }
}

#[derive(Default)]
struct PoolState {
    slots: Vec<Option<Slot>>,
    restarts: u64,
    shutting_down: bool,
    last_spawn_error: Option<String>,
    lifecycles: Vec<tokio::task::JoinHandle<()>>,
}

struct Shared {
    config: Config,
    expected_names: Vec<String>,
    runtime: tokio::runtime::Handle,
    /// The runtime the pool was started on, where answers are read: the callers usually run
    /// there, so an answer wakes its caller without a hop through the supervisor's thread.
    readers: tokio::runtime::Handle,
    /// Set when `readers` has shut down: answers are read on the supervisor's runtime from then.
    readers_gone: AtomicBool,
    state: Mutex<PoolState>,
    /// One place per task a worker may run or hold in its queue: a run waits here when all are
    /// full.
    places: Semaphore,
    crashes: Mutex<CrashLog>,
    /// Woken when a worker becomes ready (or fails to start).
    ready: Notify,
    tracker: Tracker,
    next_run: AtomicU64,
    next_worker: AtomicU64,
    /// Stops the supervisor thread, handing it the slots' supervision to wait for.
    stop: Mutex<Option<oneshot::Sender<Vec<tokio::task::JoinHandle<()>>>>>,
}

/// An installed worker with the receiving ends of its slot's channels.
struct Live {
    worker: Started,
    kill: oneshot::Receiver<String>,
}

/// A worker that has announced itself, before its supervision starts.
struct Started {
    id: u64,
    pid: u32,
    child: Child,
    input: Arc<WorkerInput>,
    output: BufReader<pipe::Receiver>,
}

fn describe(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => "SIGKILL",
            libc::SIGTERM => "SIGTERM",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGINT => "SIGINT",
            libc::SIGPIPE => "SIGPIPE",
            _ => "signal",
        };
        format!("was killed by signal {signal} ({name})")
    } else if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else {
        format!("ended ({status})")
    }
}

async fn read_frame(
    stdout: &mut BufReader<impl AsyncRead + Unpin>,
    max_frame: usize,
) -> Result<Option<FromWorker>, TaskError> {
    let mut header = [0; HEADER_LEN];
    match stdout.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => {
            return Err(TaskError::worker_lost(format!(
                "reading from the worker: {e}"
            )));
        }
    }
    let len = wire::body_len(header, max_frame)?;
    // Usually the whole frame came in with its header: decode it where it lies.
    if stdout.buffer().len() >= len {
        let message = wire::decode_body(&stdout.buffer()[..len]);
        std::pin::Pin::new(&mut *stdout).consume(len);
        return Ok(Some(message?));
    }
    let mut body = vec![0; len];
    stdout
        .read_exact(&mut body)
        .await
        .map_err(|e| TaskError::protocol(format!("the worker's frame was cut short: {e}")))?;
    Ok(Some(wire::decode_body(&body)?))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop_supervisor(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let lifecycles = std::mem::take(&mut self.lock().lifecycles);
            let _ = stop.send(lifecycles);
        }
    }

    /// The last handle is gone without a shutdown: refuse new runs, kill every worker (their
    /// runs fail as worker lost), and stop the supervisor once it has reaped them.
    fn release(&self) {
        self.tracker.close();
        {
            let mut state = self.lock();
            state.shutting_down = true;
            for worker in state.slots.iter_mut().flatten() {
                worker.request_kill("the pool was dropped".into());
            }
        }
        self.places.close();
        self.ready.notify_waiters();
        self.stop_supervisor();
    }

    /// Spawns a worker process and checks its handshake.
    async fn start_worker(&self, slot: usize) -> Result<Started, ProcessError> {
        let spawn_error = |what: &str, e: std::io::Error| {
            ProcessError::new(
                ErrorKind::Spawn,
                format!(
                    "cannot start worker `{}`: {what}: {e}",
                    self.config.program.display()
                ),
            )
        };
        // The protocol's pipes: the worker's ends are named in its environment and kept open
        // across its exec, every other end closes there (the standard library opens pipes
        // close-on-exec), so no other child holds them.
        let (worker_reads, to_worker) = std::io::pipe().map_err(|e| spawn_error("pipe", e))?;
        let (from_worker, worker_writes) = std::io::pipe().map_err(|e| spawn_error("pipe", e))?;
        // What a node prints goes to the parent's stderr, never into a frame.
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| spawn_error("stderr", e))?;
        let mut command = Command::new(&self.config.program);
        command
            .args(&self.config.args)
            .env(WORKER_ENV, "1")
            .env(MAX_FRAME_ENV, self.config.max_frame.to_string())
            .env(THREADS_ENV, self.config.worker_threads.to_string())
            .env(CONCURRENCY_ENV, self.config.per_worker.to_string())
            .env(
                PIPES_ENV,
                format!("{},{}", worker_reads.as_raw_fd(), worker_writes.as_raw_fd()),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        keep_open_in_child(
            &mut command,
            [worker_reads.as_raw_fd(), worker_writes.as_raw_fd()],
        );
        let spawned = command.spawn();
        // The worker has its own copies now (or never will).
        drop((worker_reads, worker_writes));
        let mut child = spawned.map_err(|e| spawn_error("spawn", e))?;
        let pipes = pipe::Sender::from_owned_fd(OwnedFd::from(to_worker)).and_then(|input| {
            Ok((
                input,
                pipe::Receiver::from_owned_fd(OwnedFd::from(from_worker))?,
            ))
        });
        let (input, output) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(spawn_error("the worker's pipes", e));
            }
        };
        let mut output = BufReader::new(output);
        let hello = tokio::time::timeout(
            self.config.handshake_timeout,
            read_frame(&mut output, self.config.max_frame),
        )
        .await;
        let failure = match hello {
            Ok(Ok(Some(FromWorker::Hello {
                protocol,
                names,
                pid,
            }))) => {
                if protocol != PROTOCOL_VERSION {
                    ProcessError::new(
                        ErrorKind::Handshake,
                        format!(
                            "worker speaks protocol {protocol}, this program speaks {PROTOCOL_VERSION}"
                        ),
                    )
                } else {
                    let missing: Vec<&String> = self
                        .expected_names
                        .iter()
                        .filter(|n| !names.contains(n))
                        .collect();
                    if missing.is_empty() {
                        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(worker = id, pid, slot, "worker ready");
                        return Ok(Started {
                            id,
                            pid,
                            child,
                            input: Arc::new(WorkerInput::new(input)),
                            output,
                        });
                    } else {
                        ProcessError::new(
                            ErrorKind::Handshake,
                            format!(
                                "the worker's registry lacks {missing:?}: it is not the same program"
                            ),
                        )
                    }
                }
            }
            Ok(Ok(Some(FromWorker::Done { .. } | FromWorker::Started { .. }))) => {
                ProcessError::new(
                    ErrorKind::Protocol,
                    "the worker answered before announcing itself",
                )
            }
            Ok(Ok(None)) => {
                let status = child.wait().await.map(describe).unwrap_or_default();
                ProcessError::new(
                    ErrorKind::Spawn,
                    format!("the worker {status} before announcing itself"),
                )
            }
            Ok(Err(e)) => ProcessError::new(ErrorKind::Protocol, format!("bad handshake: {e}")),
            Err(_) => ProcessError::new(
                ErrorKind::HandshakeTimeout,
                format!(
                    "the worker did not announce itself within {:?}: does its main call run_worker_if_requested first?",
                    self.config.handshake_timeout
                ),
            ),
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        Err(failure)
    }

    /// Runs one slot for the life of the pool: supervises its worker, and replaces it when it
    /// ends, until shutdown.
    async fn supervise(self: Arc<Self>, slot: usize, mut live: Live) {
        let this = &self;
        let mut backoff = Duration::from_millis(50);
        loop {
            this.run_worker(slot, live).await;
            if self.lock().shutting_down {
                return;
            }
            // Replace it; a worker that cannot start is retried with a growing pause, and tasks
            // waiting for a worker are told why meanwhile.
            live = loop {
                match self.start_worker(slot).await {
                    Ok(worker) => match self.install(slot, worker, true) {
                        Ok(live) => break live,
                        Err(mut worker) => {
                            // The pool shut down or was dropped while this one started: nobody
                            // would close its input or kill it.
                            let _ = worker.child.start_kill();
                            let _ = worker.child.wait().await;
                            return;
                        }
                    },
                    Err(e) => {
                        tracing::warn!(slot, error = %e, "could not replace a worker");
                        self.lock().last_spawn_error = Some(e.to_string());
                        self.ready.notify_waiters();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        if self.lock().shutting_down {
                            return;
                        }
                    }
                }
            };
            backoff = Duration::from_millis(50);
        }
    }

    /// Makes a started worker available for dispatch in `slot` (counted as a restart when it
    /// replaces one); hands it back when the pool is stopping.
    fn install(&self, slot: usize, worker: Started, restart: bool) -> Result<Live, Box<Started>> {
        let (kill_tx, kill_rx) = oneshot::channel::<String>();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Box::new(worker));
        }
        if restart {
            state.restarts += 1;
            state.last_spawn_error = None;
        }
        state.slots[slot] = Some(Slot {
            id: worker.id,
            pid: worker.pid,
            input: Some(Arc::clone(&worker.input)),
            kill: Some(kill_tx),
            pending: HashMap::default(),
            given: 0,
            completed: 0,
            draining: false,
        });
        drop(state);
        self.ready.notify_waiters();
        Ok(Live {
            worker,
            kill: kill_rx,
        })
    }

    /// Serves one worker until it ends. Then the runs it had started fail (as poison once their
    /// request crashed its workers often enough) and those it had not started go to another.
    async fn run_worker(self: &Arc<Self>, slot: usize, live: Live) {
        let Live {
            worker,
            kill: kill_rx,
        } = live;
        let Started {
            id,
            pid,
            mut child,
            input,
            output,
        } = worker;
        let writer = self.runtime.spawn(finish_writes(input));
        let mut reader = self.read_on_callers_runtime(slot, output);
        let read_ended = |read: Result<Ended, tokio::task::JoinError>| {
            read.unwrap_or_else(|e| {
                if e.is_cancelled() {
                    // The runtime the pool was started on has shut down: read on the
                    // supervisor's from now on.
                    self.readers_gone.store(true, Ordering::SeqCst);
                }
                Ended::Killed(format!("its answers could no longer be read ({e})"))
            })
        };
        let (ended, read_all) = tokio::select! {
            read = &mut reader => (read_ended(read), true),
            // Its output may outlive it (held by a process it started): its exit is its end.
            _ = child.wait() => (Ended::Died("it ended".into()), false),
            reason = kill_rx => {
                (Ended::Killed(reason.unwrap_or_else(|_| "its slot was closed".into())), false)
            }
        };
        let _ = child.start_kill();
        let status = match child.wait().await {
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        if !read_all {
            // What it wrote before it ended still counts: a run it answered is answered, one it
            // started is started. Its output closes with it, so this is quick.
            let _ = tokio::time::timeout(READ_REST, &mut reader).await;
        }
        reader.abort();
        writer.abort();
        let reason = ended.reason();
        let lost = self.lock().slots[slot].take();
        let Some(lost) = lost else { return };
        let running = lost.pending.values().filter(|p| p.started).count();
        if !lost.pending.is_empty() {
            tracing::warn!(worker = id, pid, %status, %reason, running, queued = lost.pending.len() - running, "worker lost");
        }
        for mut pending in lost.pending.into_values() {
            let Some(reply) = pending.reply.take() else {
                continue;
            };
            let what = format!("worker {pid} {status} ({reason})");
            if !pending.started && !matches!(ended, Ended::BrokeProtocol(_)) {
                let explained = running > 0 || matches!(ended, Ended::Killed(_));
                let _ = reply.send(Reply::NotStarted { explained });
                continue;
            }
            let crashes = match ended {
                Ended::Died(_) => self.crash_log().crashed(&pending.request_id),
                // The pool ended it, or it is broken: its runs did not crash it.
                Ended::Killed(_) | Ended::BrokeProtocol(_) => 0,
            };
            let error = if crashes >= self.config.poison_after {
                self.crash_log().forget(&pending.request_id);
                TaskError::poison(format!(
                    "the task is poison: its worker died {crashes} times in a row running it, the last time: {what}"
                ))
            } else {
                TaskError::worker_lost(what)
            };
            let _ = reply.send(Reply::Done(Err(error)));
        }
    }

    fn crash_log(&self) -> MutexGuard<'_, CrashLog> {
        self.crashes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts reading the worker's answers on the runtime the pool was started on (falling back to
    /// the supervisor's when that one is gone, or when bytes are already buffered).
    fn read_on_callers_runtime(
        self: &Arc<Self>,
        slot: usize,
        mut output: BufReader<pipe::Receiver>,
    ) -> tokio::task::JoinHandle<Ended> {
        let shared = Arc::clone(self);
        if self.readers_gone.load(Ordering::SeqCst) || !output.buffer().is_empty() {
            return self
                .runtime
                .spawn(async move { shared.read_answers(slot, &mut output).await });
        }
        let fd = match output.into_inner().into_nonblocking_fd() {
            Ok(fd) => fd,
            Err(e) => {
                let ended =
                    Ended::Killed(format!("its output could not be moved to a reader ({e})"));
                return self.runtime.spawn(async move { ended });
            }
        };
        self.readers.spawn(async move {
            // Registered with this runtime's reactor, so its readiness wakes a thread here.
            match pipe::Receiver::from_owned_fd(fd) {
                Ok(pipe) => shared.read_answers(slot, &mut BufReader::new(pipe)).await,
                Err(e) => Ended::Killed(format!("its output could not be watched ({e})")),
            }
        })
    }

    /// Delivers the worker's answers until it closes its output or breaks the protocol; returns
    /// why it stopped.
    async fn read_answers(
        self: &Arc<Self>,
        slot: usize,
        output: &mut BufReader<impl AsyncRead + Unpin>,
    ) -> Ended {
        loop {
            let message = match read_frame(output, self.config.max_frame).await {
                Ok(Some(message)) => message,
                Ok(None) => return Ended::Died("it closed its output".into()),
                Err(e) if e.is_protocol_error() => return Ended::BrokeProtocol(e.to_string()),
                Err(e) => return Ended::Died(e.to_string()),
            };
            let mut state = self.lock();
            let Some(worker) = state.slots[slot].as_mut() else {
                return Ended::Killed("its slot was closed".into());
            };
            let (id, outcome) = match message {
                FromWorker::Done { id, outcome } => (id, outcome),
                FromWorker::Started { id } => {
                    let Some(pending) = worker.pending.get_mut(&id) else {
                        return Ended::BrokeProtocol(format!(
                            "it started run {id}, which it was not given"
                        ));
                    };
                    let newly = !std::mem::replace(&mut pending.started, true);
                    if newly && pending.reply.is_some() {
                        pending.timer = self.time_out_later(worker.id, id);
                    }
                    continue;
                }
                FromWorker::Hello { .. } => {
                    return Ended::BrokeProtocol("it announced itself twice".into());
                }
            };
            let Some(mut pending) = worker.pending.remove(&id) else {
                return Ended::BrokeProtocol(format!(
                    "it answered run {id}, which it was not given"
                ));
            };
            worker.completed += 1;
            if worker.draining
                && worker.pending.is_empty()
                && let Some(input) = worker.input.take()
            {
                // Recycled: close its input; it exits once idle and the slot gets a new worker.
                input.close();
            }
            drop(state);
            if let Some(reply) = pending.reply.take() {
                let _ = reply.send(Reply::Done(outcome));
            }
        }
    }

    /// Hands a run to the least busy live worker, waiting for one when none is live.
    async fn dispatch(
        self: &Arc<Self>,
        request_id: &RequestId,
        frame: &mut [u8],
        run: u64,
    ) -> Result<Dispatched, TaskError> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if state.shutting_down {
                    return Err(TaskError::shutdown("process"));
                }
                let chosen = state
                    .slots
                    .iter_mut()
                    .flatten()
                    .filter(|w| !w.draining && w.input.is_some())
                    .min_by_key(|w| w.pending.len());
                if let Some(worker) = chosen {
                    // The lock keeps frames of concurrent dispatches whole and in order. A worker
                    // with little to do gets the frame at once, written from this thread
                    // straight into the pipe (no hop through the supervisor). One with a queue
                    // of runs gets it from the writing task on the supervisor's thread, with the
                    // other frames dispatched meanwhile, in one write: the worker has work until
                    // then, and a write per frame (and a wake of the worker per write) is what
                    // limits a full pipeline.
                    let now = worker.pending.len() < BATCH_WHEN_PENDING;
                    // A worker with a free place and nothing queued (every answer it gave is
                    // read) starts the run as it arrives: it is taken as started, and the worker
                    // need not say so (a round trip then costs one frame each way). Otherwise the
                    // worker says when it starts it.
                    let started = worker.pending.len() < self.config.per_worker;
                    wire::set_announce(frame, !started);
                    let sent = worker.input.as_ref().map(|input| input.send(frame, now));
                    if !matches!(sent, Some(Ok(()))) {
                        // The worker is dying (its end of the pipe closed): it takes nothing
                        // more, its supervision sees it end, and the run goes to another.
                        worker.input = None;
                        continue;
                    }
                    let (reply, answer) = oneshot::channel();
                    worker.pending.insert(
                        run,
                        Pending {
                            reply: Some(reply),
                            started,
                            request_id: request_id.clone(),
                            timer: if started {
                                self.time_out_later(worker.id, run)
                            } else {
                                None
                            },
                        },
                    );
                    worker.given += 1;
                    if self.config.recycle_after.is_some_and(|k| worker.given >= k) {
                        worker.draining = true;
                    }
                    return Ok(Dispatched {
                        answer,
                        worker_id: worker.id,
                    });
                }
                if let Some(error) = &state.last_spawn_error
                    && state.slots.iter().all(Option::is_none)
                {
                    return Err(TaskError::worker_lost(format!(
                        "no worker is running: {error}"
                    )));
                }
            }
            notified.await;
        }
    }

    /// Runs `f` on the live worker with id `worker_id`, if it is still live.
    fn with_worker<R>(&self, worker_id: u64, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let mut state = self.lock();
        state
            .slots
            .iter_mut()
            .flatten()
            .find(|w| w.id == worker_id)
            .map(f)
    }

    /// Starts the task timeout of `run`, which just started, if the pool has one.
    fn time_out_later(
        self: &Arc<Self>,
        worker_id: u64,
        run: u64,
    ) -> Option<tokio::task::AbortHandle> {
        let timeout = self.config.task_timeout?;
        let shared = Arc::clone(self);
        let timer = self.runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            shared.expire(worker_id, run);
        });
        Some(timer.abort_handle())
    }

    /// `run` passed the pool's task timeout: if it is still running, its caller is answered as
    /// timed out now, and it is cancelled in its worker.
    fn expire(self: &Arc<Self>, worker_id: u64, run: u64) {
        let timeout = self.config.task_timeout.unwrap_or_default();
        let expired = self.with_worker(worker_id, |worker| {
            let Some(reply) = worker.pending.get_mut(&run).and_then(|p| p.reply.take()) else {
                // Answered in time, or already abandoned.
                return false;
            };
            let _ = reply.send(Reply::Done(Err(TaskError::timed_out(format!(
                "the task ran past its timeout of {timeout:?}"
            )))));
            worker.abandon(run)
        });
        if expired == Some(true) {
            self.kill_later(worker_id, run);
        }
    }

    /// The caller stopped waiting for `run` (its request was cancelled or passed its deadline):
    /// it is cancelled in its worker.
    fn abandon(self: &Arc<Self>, worker_id: u64, run: u64) {
        // The entry stays until the worker answers, so a late answer is not a protocol breach.
        if self.with_worker(worker_id, |worker| worker.abandon(run)) == Some(true) {
            self.kill_later(worker_id, run);
        }
    }

    /// Kills the worker if the cancelled `run` is still running in it after the cancel grace
    /// (nothing else stops a node that never waits); the runs it had not started go to others.
    fn kill_later(self: &Arc<Self>, worker_id: u64, run: u64) {
        let shared = Arc::clone(self);
        let grace = self.config.cancel_grace;
        self.runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            shared.with_worker(worker_id, |worker| {
                if worker.pending.get(&run).is_some_and(|p| p.started) {
                    worker.request_kill(format!(
                        "run {run} was still running {grace:?} after it was cancelled"
                    ));
                }
            });
        });
    }

    fn kill_all(&self, reason: &str) {
        let mut state = self.lock();
        for worker in state.slots.iter_mut().flatten() {
            worker.request_kill(reason.to_owned());
        }
    }

    fn stats(&self) -> (Vec<WorkerStats>, u64) {
        let state = self.lock();
        let workers = state
            .slots
            .iter()
            .flatten()
            .map(|w| WorkerStats::new(w.id, Some(w.pid), w.pending.len() as u64, w.completed))
            .collect();
        (workers, state.restarts)
    }

    /// Runs `task` on a worker and resolves to its outcome. The future is dropped unfinished when
    /// the request is cancelled or passes its deadline: the run's [`AbandonOnDrop`] then has it
    /// cancelled in its worker.
    async fn run(self: Arc<Self>, task: ErasedTask) -> Outcome {
        let shared = &self;
        let Some(_admission) = shared.tracker.admit() else {
            return Err(TaskError::shutdown("process"));
        };
        let (info, portable) = task.into_portable();
        let outcome = async {
            let Some(portable) = portable else {
                return Err(TaskError::unsupported(format!(
                    "node `{}` is not a PortableNode: the process mode runs only tasks made with Task::portable",
                    info.name()
                )));
            };
            if !shared.expected_names.iter().any(|n| n == portable.name()) {
                return Err(TaskError::not_registered(portable.name()));
            }
            let run = shared.next_run.fetch_add(1, Ordering::Relaxed);
            let mut frame = wire::encode_frame(
                &wire::RunRef {
                    id: run,
                    name: portable.name(),
                    payload: portable.payload()?,
                    announce: true,
                },
                shared.config.max_frame,
            )?;
            let _place = shared
                .places
                .acquire()
                .await
                .map_err(|_| TaskError::shutdown("process"))?;
            let mut handed = 0;
            let bytes = loop {
                let dispatched = shared.dispatch(info.request_id(), &mut frame, run).await?;
                let mut abandon = AbandonOnDrop {
                    shared,
                    worker_id: dispatched.worker_id,
                    run,
                    armed: true,
                };
                let answer = dispatched.answer.await;
                abandon.armed = false;
                match answer {
                    Ok(Reply::Done(answer)) => break answer,
                    Ok(Reply::NotStarted { explained: true }) => {}
                    Ok(Reply::NotStarted { explained: false }) if handed < MAX_HANDOVERS => {
                        handed += 1;
                    }
                    Ok(Reply::NotStarted { explained: false }) => {
                        break Err(TaskError::worker_lost(format!(
                            "{MAX_HANDOVERS} workers died holding the task before starting it, \
                             with nothing running in them"
                        )));
                    }
                    Err(_) => {
                        break Err(TaskError::worker_lost(
                            "the worker ended without answering",
                        ));
                    }
                }
            };
            if !bytes.as_ref().is_err_and(TaskError::is_worker_lost) {
                shared.forget_crashes(info.request_id());
            }
            portable.decode_output(&bytes?)
        }
        .await;
        shared.tracker.record(&outcome);
        outcome
    }

    /// `request_id`'s run got an answer from its worker: its crashes are no longer in a row.
    fn forget_crashes(&self, request_id: &RequestId) {
        let mut log = self.crash_log();
        if !log.counts.is_empty() {
            log.forget(request_id);
        }
    }
}

/// How long a worker's answers are still read after it ended or was killed: what it wrote before
/// is in the pipe already.
const READ_REST: Duration = Duration::from_millis(500);

/// Why a worker's supervision ended.
enum Ended {
    /// It died: it closed its output (exited, crashed, was killed from outside).
    Died(String),
    /// The pool ended it (a cancelled run that would not stop, its input closed, the pool
    /// stopping).
    Killed(String),
    /// It broke the protocol: nothing it holds is handed to another worker of the same program.
    BrokeProtocol(String),
}

impl Ended {
    fn reason(&self) -> &str {
        match self {
            Self::Died(reason) | Self::Killed(reason) | Self::BrokeProtocol(reason) => reason,
        }
    }
}

/// How many workers a run is handed to in turn when each dies, with nothing running, before
/// starting it: a safeguard against workers that die on their own (a broken environment), which
/// would otherwise pass a task around forever. A death another run accounts for never counts.
const MAX_HANDOVERS: u32 = 16;

/// A run handed to a worker.
struct Dispatched {
    answer: oneshot::Receiver<Reply>,
    worker_id: u64,
}

/// Cancels a run in its worker when its caller stops waiting before the answer came.
struct AbandonOnDrop<'a> {
    shared: &'a Arc<Shared>,
    worker_id: u64,
    run: u64,
    armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abandon(self.worker_id, self.run);
        }
    }
}

/// From how many runs in flight on a worker its next frames wait for the writing task, to be
/// written together, instead of each being written at once.
const BATCH_WHEN_PENDING: usize = 8;

/// A worker's input pipe. Dispatch writes frames for an idle worker straight into the pipe
/// without blocking; what the pipe cannot take yet, and the frames for a busy worker, wait in a
/// backlog that [`finish_writes`] drains (whatever has gathered, in large writes) when it is
/// writable.
struct WorkerInput {
    pipe: pipe::Sender,
    backlog: Mutex<Backlog>,
    wake: Notify,
}

#[derive(Default)]
struct Backlog {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl WorkerInput {
    fn new(pipe: pipe::Sender) -> Self {
        Self {
            pipe,
            backlog: Mutex::new(Backlog::default()),
            wake: Notify::new(),
        }
    }

    fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` behind anything already waiting. With `now` and nothing waiting, writes at
    /// once what the pipe takes; otherwise the writing task writes it, together with whatever
    /// else is queued by the time it runs.
    fn send(&self, frame: &[u8], now: bool) -> std::io::Result<()> {
        let mut backlog = self.backlog();
        if backlog.closed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let mut rest = frame;
        if now && backlog.bytes.is_empty() {
            while !rest.is_empty() {
                match self.pipe.try_write(rest) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !rest.is_empty() {
            backlog.bytes.extend(rest);
            drop(backlog);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No more frames: once the backlog is written the pipe closes and the worker sees the end of
    /// its input.
    fn close(&self) {
        self.backlog().closed = true;
        self.wake.notify_one();
    }
}

/// Writes each worker's backlog whenever the pipe can take it, until the input is closed and
/// empty; dropping the last handle then closes the pipe.
async fn finish_writes(input: Arc<WorkerInput>) {
    enum Step {
        Wrote,
        Full,
        Idle,
    }
    loop {
        // The lock is held only inside this block, never across an await.
        let step = {
            let mut backlog = input.backlog();
            if backlog.bytes.is_empty() {
                if backlog.closed {
                    return;
                }
                Step::Idle
            } else {
                let (front, _) = backlog.bytes.as_slices();
                match input.pipe.try_write(front) {
                    Ok(n) if n > 0 => {
                        backlog.bytes.drain(..n);
                        Step::Wrote
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::Full,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Step::Wrote,
                    // The worker is gone; its supervision notices on the other pipe. Later
                    // frames are refused, so dispatch hands them to another worker.
                    _ => {
                        backlog.closed = true;
                        return;
                    }
                }
            }
        };
        match step {
            Step::Wrote => {}
            Step::Full => {
                if input.pipe.writable().await.is_err() {
                    input.backlog().closed = true;
                    return;
                }
            }
            Step::Idle => input.wake.notified().await,
        }
    }
}

/// Asks the kernel to kill the worker when the thread that spawned it (the supervisor) ends,
/// including when the whole parent process is killed, so no worker outlives its parent.
fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Keeps `fds` open across the worker's exec: clears their close-on-exec flag in the forked
/// child only, so the parent's copies stay close-on-exec and no other child inherits them.
fn keep_open_in_child(command: &mut Command, fds: [std::os::fd::RawFd; 2]) {
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe, on descriptors the child inherited.
    unsafe {
        command.pre_exec(move || {
            for fd in fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs tasks in a supervised pool of worker processes: crash isolation and separate memory.
///
/// Only [`PortableNode`](task_core::PortableNode)s cross the process boundary (submitted with
/// [`Task::portable`](task_core::Task::portable)); anything else fails with
/// [`TaskError::is_unsupported`]. The worker is your own program (the current executable by
/// default), which calls [`run_worker_if_requested`](super::run_worker_if_requested) first thing in
/// `main` with the registry of nodes it can run.
///
/// - A worker runs one task at a time ([`ProcessBuilder::tasks_per_worker`]) with a queue of
///   more behind it ([`ProcessBuilder::prefetch`]). When it crashes, is killed or exits, the task
///   it was running fails with [`TaskError::is_worker_lost`] and a message saying how it ended
///   (exit status or signal); the tasks in its queue run on another worker. It is replaced, and
///   the other workers are untouched.
/// - A request whose attempts crash their worker [`ProcessBuilder::poison_after`] times in a row
///   fails with [`TaskError::is_poison`], which no retry policy retries.
/// - A worker that breaks the protocol fails every task it holds and is replaced.
/// - Workers are killed by the kernel if the parent dies (Linux): no orphans.
/// - A task whose caller stops waiting (the coordinator's timeout or cancellation), or that runs
///   past [`ProcessBuilder::task_timeout`], is cancelled in its worker; if it is still running
///   after [`ProcessBuilder::cancel_grace`] its worker is killed and replaced.
/// - [`ProcessBuilder::recycle_after`] replaces workers after a number of tasks.
/// - Shutdown refuses new tasks, lets those in flight finish up to its grace period, then stops
///   and reaps every worker: no zombies. Dropping the last handle without a shutdown kills and
///   reaps the workers and stops the supervisor thread.
/// - The protocol runs on pipes of its own: a node's stdin is `/dev/null` and its stdout goes to
///   the parent's stderr.
///
/// Supervision runs on a thread of its own with its own small tokio runtime, so the strategy
/// works under any runtime of the caller's. The workers' answers are read on the runtime
/// [`ProcessBuilder::start`] was awaited on, where the callers usually are, so an answer wakes
/// its caller without a hop through another thread. If that runtime shuts down while the pool
/// lives on, the workers are replaced (tasks running on them fail as worker lost) and answers
/// are read on the supervisor's runtime from then on.
#[derive(Clone)]
pub struct ProcessExecutionStrategy {
    shared: Arc<Shared>,
    /// Dropped with the last clone: the pool then stops (see [`Owner`]).
    _owner: Arc<Owner>,
}

/// Owned by the strategy's handles alone (the pool's own tasks hold [`Shared`]): when the last
/// handle goes, without a shutdown, the pool kills its workers and stops its supervisor thread.
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl ProcessExecutionStrategy {
    /// A builder for a pool running the nodes of `registry`. Build the registry with the same
    /// function the worker's `main` uses.
    pub fn builder(registry: NodeRegistry) -> ProcessBuilder {
        ProcessBuilder::new(registry)
    }

    /// The process ids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared
            .lock()
            .slots
            .iter()
            .flatten()
            .map(|w| w.pid)
            .collect()
    }

    /// How many workers were replaced after ending (crashed, killed, timed out, recycled).
    pub fn restarts(&self) -> u64 {
        self.shared.lock().restarts
    }
}

impl fmt::Debug for ProcessExecutionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessExecutionStrategy")
            .field("program", &self.shared.config.program)
            .field("workers", &self.worker_pids())
            .field("restarts", &self.restarts())
            .finish()
    }
}

impl TaskExecutionStrategy for ProcessExecutionStrategy {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        // Refused at once after shutdown; a shutdown racing this is caught by the admission.
        if self.shared.tracker.is_closed() {
            completion.complete(Err(TaskError::shutdown("process")));
            return;
        }
        completion.spawn(Arc::clone(&self.shared).run(task));
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.shared.tracker.close();
        Box::pin(async move {
            let shared = &self.shared;
            // A grace too long to add to now never runs out.
            let deadline = Instant::now().checked_add(grace);
            if !shared.tracker.drain(grace).await {
                tracing::warn!(
                    in_flight = shared.tracker.in_flight(),
                    "process strategy: grace period over with tasks still running; killing workers"
                );
            }
            let lifecycles = {
                let mut state = shared.lock();
                state.shutting_down = true;
                for worker in state.slots.iter_mut().flatten() {
                    // Closing stdin lets the worker finish what it has and exit.
                    if let Some(input) = worker.input.take() {
                        input.close();
                    }
                }
                std::mem::take(&mut state.lifecycles)
            };
            shared.ready.notify_waiters();
            shared.places.close();
            // Give workers until the deadline (at least a moment) to exit, then kill them; either
            // way each is waited for, so none is left a zombie.
            let all = futures::future::join_all(lifecycles);
            futures::pin_mut!(all);
            match deadline {
                None => {
                    all.await;
                }
                Some(deadline) => {
                    let exit_by = deadline.max(Instant::now() + Duration::from_millis(200));
                    let kill_at = crate::support::sleep_until(exit_by);
                    futures::pin_mut!(kill_at);
                    if let futures::future::Either::Left(_) =
                        futures::future::select(kill_at, all.as_mut()).await
                    {
                        shared.kill_all("the pool shut down");
                        all.await;
                    }
                }
            }
            shared.stop_supervisor();
        })
    }

    fn name(&self) -> &str {
        "process"
    }

    fn stats(&self) -> StrategyStats {
        let (workers, restarts) = self.shared.stats();
        self.shared.tracker.stats().with_workers(workers, restarts)
    }
}
