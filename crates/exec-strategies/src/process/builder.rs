//! [`ProcessBuilder`]: the pool's settings, and starting it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use task_core::NodeRegistry;

use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::error::{ErrorKind, ProcessError};
use super::pool::ProcessExecutionStrategy;
use super::shared::{Config, REAP, Shared};
use super::wire;

/// The most worker processes one pool keeps ([`ProcessBuilder::workers`]).
const MAX_WORKERS: usize = 4096;

/// The most runtime threads a worker runs tasks on ([`ProcessBuilder::worker_threads`]).
pub(super) const MAX_WORKER_THREADS: usize = 1024;

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

    /// How many worker processes to keep running (default: the machine's cores; 0 counts as 1;
    /// at most 4,096: [`start`](Self::start) refuses more).
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

    /// The largest frame either side accepts, in bytes (default 16 MiB; at least 1 KiB, room for
    /// the error that says an output did not fit). A task or output larger than this fails with
    /// [`TaskError::is_protocol_error`](task_core::TaskError::is_protocol_error). The worker's
    /// handshake, which names every node it registered, may take up to 1 MiB whatever this is.
    #[must_use]
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(1024);
        self
    }

    /// How many tasks one worker runs at once (default 1, as a `ProcessPoolExecutor` worker or a
    /// Celery prefork child does; 0 counts as 1).
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
    /// worker's queue, so it never waits for its next task and frames travel in batches. A worker
    /// never holds more than its places and this many, even while another is down. A task
    /// waiting in a worker's queue when the worker died goes to another worker with room (or to
    /// its replacement); it never fails for it. A queued task waits behind what its worker runs:
    /// for long or uneven tasks, a small prefetch (or 0) keeps tasks from waiting behind a long
    /// one while another worker is free. A task handed to a worker with a free place is taken as started as it is sent
    /// (a round trip needs no third frame): if that worker dies before reading it, it fails as
    /// lost and counts toward [poison](Self::poison_after), as a running task does, rather than
    /// risk running twice. 0 hands a worker a task only when it has a place to run it. A task
    /// waits for a place when every worker is full.
    #[must_use]
    pub fn prefetch(mut self, tasks: usize) -> Self {
        self.prefetch = tasks;
        self
    }

    /// How many runtime threads each worker runs tasks on (default 1; 0 counts as 1, and more
    /// than 1,024 as 1,024).
    #[must_use]
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = threads.clamp(1, MAX_WORKER_THREADS);
        self
    }

    /// A task still running `timeout` after it started fails as timed out at once, and is
    /// cancelled in its worker as [`cancel_grace`](Self::cancel_grace) says. Default: no
    /// timeout. This span, the cancel grace and the handshake timeout are each cut to
    /// [`LONGEST_TIMER`](task_core::LONGEST_TIMER), a century.
    #[must_use]
    pub fn task_timeout(mut self, timeout: Duration) -> Self {
        self.task_timeout = Some(timeout.min(task_core::LONGEST_TIMER));
        self
    }

    /// How long a task whose caller stopped waiting (a cancellation, a coordinator's deadline,
    /// [`task_timeout`](Self::task_timeout)) has to stop after its worker is told (default 1 s).
    /// A queued task is dropped at once, a running one where it next waits; one that has not
    /// stopped by then (a CPU loop in the node, which nothing else interrupts) has its worker
    /// killed and replaced, failing only the tasks running in it
    /// ([`TaskError::is_worker_lost`](task_core::TaskError::is_worker_lost)); the tasks queued in it go to other workers.
    #[must_use]
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace.min(task_core::LONGEST_TIMER);
        self
    }

    /// After how many crashes in a row of its worker a task is "poison" (default 2, at least
    /// 1): it then fails with [`TaskError::is_poison`](task_core::TaskError::is_poison), and a coordinator does not retry it
    /// whatever its retry policy says. Earlier crashes fail it with
    /// [`TaskError::is_worker_lost`](task_core::TaskError::is_worker_lost), which a retry policy may retry. Counted by request id
    /// (retries share it) for the last 1,024 requests whose workers crashed; a request that gets an
    /// answer starts again from 0.
    ///
    /// Any end of the worker the pool did not bring about counts as a crash, a kill from outside
    /// included: an operator's `SIGKILL` cannot be told from the OOM killer's, which a task that
    /// eats memory brings on itself. With 1, a task is poison the first time its worker dies
    /// under it, whoever killed it; a worker the pool kills (a cancelled task that did not stop,
    /// shutdown) counts for nothing.
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
        self.handshake_timeout = timeout.min(task_core::LONGEST_TIMER);
        self
    }

    /// Starts the supervisor and every worker, and checks each worker's handshake.
    ///
    /// # Errors
    ///
    /// When a worker cannot be spawned (or more than 4,096 are asked for), does not
    /// announce itself in time, or announces another protocol version. No worker is left
    /// running then. [`ProcessError::is_runtime`] when it is not awaited on a tokio runtime, or
    /// is awaited on a multi-thread one without its IO driver. That driver is looked for by
    /// trying it, which panics without it: the panic is caught, but the panic hook prints it,
    /// and a program built with `panic = "abort"` aborts there instead.
    ///
    /// Awaited on a multi-thread runtime, the workers' answers are read there (it needs its IO
    /// driver: `enable_all` or `enable_io`), so an answer wakes its caller on the same thread.
    /// On a current-thread runtime, which runs tasks only while a thread blocks on it, they are
    /// read on the pool's own thread: the pool answers from any runtime, whatever that one
    /// does.
    pub async fn start(self) -> Result<ProcessExecutionStrategy, ProcessError> {
        if self.workers > MAX_WORKERS {
            return Err(ProcessError::new(
                ErrorKind::Spawn,
                format!(
                    "cannot start {} workers: a pool has at most {MAX_WORKERS}",
                    self.workers
                ),
            ));
        }
        if super::pipes::is_unserving_worker() {
            return Err(ProcessError::new(
                ErrorKind::Spawn,
                "this process was started as a worker of a ProcessExecutionStrategy, and starts \
                 a pool of its own instead of serving: call run_worker_if_requested first thing \
                 in main (without it, every worker would start workers of its own)",
            ));
        }
        let readers = tokio::runtime::Handle::try_current().map_err(|_| {
            ProcessError::new(
                ErrorKind::Runtime,
                "ProcessBuilder::start must be awaited on a tokio runtime",
            )
        })?;
        let multi_thread = readers.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        if multi_thread && !io_driver_is_on() {
            return Err(ProcessError::new(
                ErrorKind::Runtime,
                "ProcessBuilder::start was awaited on a multi-thread runtime without its IO \
                 driver, which would read the workers' answers: build it with enable_all or \
                 enable_io",
            ));
        }
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
        // Answers are read where they wake their callers: on a multi-thread runtime, whose
        // workers run its tasks whatever the caller does. A current-thread runtime runs them only
        // while a thread blocks on it (which may never happen again once `start` returns) and may
        // have no IO driver: the pool's own runtime reads them then.
        let readers = if multi_thread {
            readers
        } else {
            handle.clone()
        };
        let (stop_tx, stop_rx) = oneshot::channel::<TaskTracker>();
        std::thread::Builder::new()
            .name("exec-process-supervisor".into())
            .spawn(move || {
                // Workers are spawned from this thread, and their parent-death signal fires when
                // it exits; it lives until the strategy shuts down or its last handle is dropped.
                // The slots still supervised then were told to kill their workers: each is given
                // a moment to reap its worker, so none is left a zombie.
                if let Ok(lifecycles) = runtime.block_on(stop_rx) {
                    let reaped = lifecycles.wait();
                    let _ = runtime.block_on(async { tokio::time::timeout(REAP, reaped).await });
                }
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| {
                ProcessError::new(ErrorKind::Runtime, format!("supervisor thread: {e}"))
            })?;

        let config = Config {
            program,
            args: self.args,
            max_frame: self.max_frame,
            per_worker: self.per_worker,
            per_worker_held: self.per_worker.saturating_add(self.prefetch),
            worker_threads: self.worker_threads,
            task_timeout: self.task_timeout,
            cancel_grace: self.cancel_grace,
            poison_after: self.poison_after,
            recycle_after: self.recycle_after,
            handshake_timeout: self.handshake_timeout,
        };
        let places = self
            .workers
            .saturating_mul(self.per_worker.saturating_add(self.prefetch));
        let shared = Arc::new(Shared::new(
            config,
            &self.registry,
            self.workers,
            places,
            [handle.clone(), readers],
            stop_tx,
        ));

        // Start every worker and wait for all handshakes before taking tasks. If this future is
        // dropped before it returns, the guard stops the pool: a worker still announcing itself
        // stops waiting, and each one started is killed and reaped where it is (by its starting
        // task, or by a task of the supervisor's for one handed over here).
        let mut starting = Starting {
            shared: Arc::clone(&shared),
            started: Vec::new(),
            done: false,
        };
        let mut first = Vec::new();
        for slot in 0..self.workers {
            let shared = Arc::clone(&shared);
            let (tx, rx) = oneshot::channel();
            handle.spawn(shared.lifecycles.clone().track_future(async move {
                if let Err(Ok(mut orphan)) = tx.send(shared.start_worker(slot).await) {
                    // `start` was dropped: nobody else will kill or reap this worker.
                    let _ = orphan.child.start_kill();
                    let _ = orphan.child.wait().await;
                }
            }));
            first.push(rx);
        }
        let mut failure = None;
        for (slot, answer) in first.into_iter().enumerate() {
            match answer.await {
                Ok(Ok(worker)) => starting.started.push((slot, worker)),
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    let e = "the supervisor's runtime stopped while a worker started";
                    failure = failure.or(Some(ProcessError::new(ErrorKind::Runtime, e)));
                }
            }
        }
        let started = std::mem::take(&mut starting.started);
        if let Some(error) = failure {
            for (_, mut worker) in started {
                let _ = worker.child.start_kill();
                let _ = worker.child.wait().await;
            }
            return Err(error);
        }
        starting.done = true;
        for (slot, worker) in started {
            // Nothing can have stopped the pool yet: no handle to it exists.
            let Ok(live) = shared.install(slot, worker, false) else {
                continue;
            };
            let s = Arc::clone(&shared);
            let lifecycle = shared
                .lifecycles
                .track_future(async move { s.supervise(slot, live).await });
            handle.spawn(lifecycle);
        }
        // Every slot is supervised: the pool's supervision is complete once these end.
        shared.lifecycles.close();
        Ok(ProcessExecutionStrategy::new(shared))
    }
}

/// The pool as [`ProcessBuilder::start`] builds it: unless it is handed over (`done`), dropping
/// it stops the pool and reaps the workers `started` holds.
struct Starting {
    shared: Arc<Shared>,
    started: Vec<(usize, super::shared::Started)>,
    done: bool,
}

impl Drop for Starting {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for (_, mut worker) in self.started.drain(..) {
            let reaped = self.shared.lifecycles.track_future(async move {
                let _ = worker.child.start_kill();
                let _ = worker.child.wait().await;
            });
            self.shared.runtime.spawn(reaped);
        }
        self.shared.release();
    }
}

impl ProcessExecutionStrategy {
    /// A builder for a pool running the nodes of `registry`. Build the registry with the same
    /// function the worker's `main` uses.
    pub fn builder(registry: NodeRegistry) -> ProcessBuilder {
        ProcessBuilder::new(registry)
    }
}

/// Whether the runtime this is called on has its IO driver. Tokio has no query for it and panics
/// when a pipe is registered without one, so a pipe is registered and the panic (which the panic
/// hook reports) caught. A pipe that cannot be made says nothing: the driver is taken to be on.
fn io_driver_is_on() -> bool {
    let Ok((reads, _writes)) = std::io::pipe() else {
        return true;
    };
    let probe = std::panic::catch_unwind(|| {
        tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reads))
    });
    probe.is_ok()
}
