//! The pool's shared state: its workers, the runs each holds, and the crashes counted.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::FutureExt;
use task_core::{BoxFuture, Completion, NodeRegistry, RequestId, TaskError, WorkerStats};
use tokio::io::BufReader;
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;

use super::input::WorkerInput;
use super::wire;
use crate::tracker::Tracker;

/// How long the slots' supervision is given to reap its workers once they were told to die, as
/// the pool stops: a slot still starting a worker is out of reach of the kill, and is not waited
/// for past this (its worker dies with the supervisor's runtime).
pub(super) const REAP: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(super) struct Config {
    pub(super) program: PathBuf,
    pub(super) args: Vec<OsString>,
    pub(super) max_frame: usize,
    pub(super) per_worker: usize,
    /// The runs one worker holds at most: its places, and its prefetch.
    pub(super) per_worker_held: usize,
    pub(super) worker_threads: usize,
    pub(super) task_timeout: Option<Duration>,
    pub(super) cancel_grace: Duration,
    pub(super) poison_after: u32,
    pub(super) recycle_after: Option<u64>,
    pub(super) handshake_timeout: Duration,
}

/// A run handed to a worker and not answered yet.
pub(super) struct Pending {
    /// `None` once the caller was answered early (timed out) or stopped waiting.
    pub(super) reply: Option<oneshot::Sender<Reply>>,
    /// Whether the worker said it started the run.
    pub(super) started: bool,
    /// The request the run belongs to, to count the crashes of its attempts.
    pub(super) request_id: RequestId,
    /// Its timer: the task timeout's once the run started, the cancel grace's once it was
    /// abandoned. Stopped when the run is answered or its worker is gone.
    pub(super) timer: Option<tokio::task::AbortHandle>,
    /// Where the node's events go: the request's sink.
    pub(super) events: Option<task_core::context::Events>,
    /// What a run whose caller stopped waiting keeps until its worker answers it or is gone.
    pub(super) kept: Option<Kept>,
}

/// What a run abandoned in its worker (its request was cancelled or passed its deadline) keeps
/// until the worker answers it, dies, or is killed after the cancel grace: its request's
/// completion, which holds the request's place under a coordinator's limit, and its place in the
/// pool. So both limits count the nodes still running, a cancelled one too. Dropped outside the
/// pool's lock: a completion let go may hand its place to a request that dispatches at once.
pub(super) struct Kept {
    pub(super) _completion: Completion,
    pub(super) _place: OwnedSemaphorePermit,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

/// What a run's caller learns from the pool.
pub(super) enum Reply {
    /// The worker's answer, or why the run failed.
    Done(Result<Vec<u8>, TaskError>),
    /// The worker died before starting the run: it goes to another worker. `explained` when
    /// another run or the pool accounts for the death (the worker was running something, or was
    /// killed), so the handover does not count toward [`MAX_HANDOVERS`].
    NotStarted { explained: bool },
}

/// How many times in a row the attempts of recent requests crashed their workers.
#[derive(Default)]
pub(super) struct CrashLog {
    pub(super) counts: HashMap<RequestId, u32>,
    /// The requests counted, oldest first, to forget the oldest past [`CrashLog::CAPACITY`].
    pub(super) order: VecDeque<RequestId>,
}

impl CrashLog {
    pub(super) const CAPACITY: usize = 1024;

    /// Counts one more crash of `request_id`'s attempts; returns how many in a row so far.
    pub(super) fn crashed(&mut self, request_id: &RequestId) -> u32 {
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
    pub(super) fn forget(&mut self, request_id: &RequestId) {
        if self.counts.remove(request_id).is_some() {
            self.order.retain(|id| id != request_id);
        }
    }
}

/// A live worker as the pool sees it.
pub(super) struct Slot {
    pub(super) id: u64,
    pub(super) pid: u32,
    /// The worker's input. Closing it lets the worker finish what it has and exit.
    pub(super) input: Option<Arc<WorkerInput>>,
    pub(super) kill: Option<oneshot::Sender<String>>,
    /// The runs it holds, by the pool's run number.
    pub(super) pending: HashMap<u64, Pending>,
    pub(super) given: u64,
    pub(super) completed: u64,
    /// Takes no more runs (it is being recycled): its input closes once its runs are answered.
    pub(super) draining: bool,
}

impl Slot {
    pub(super) fn request_kill(&mut self, reason: String) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(reason);
        }
    }

    /// Gives up on `run` (its caller is gone or was answered as timed out): its caller is not
    /// answered, and the worker is told to drop it. The run's entry takes `kept`, if any, until
    /// the worker answers. Returns whether `run` was still pending here (`kept` is left to the
    /// caller otherwise).
    pub(super) fn abandon(&mut self, run: u64, kept: &mut Option<Kept>) -> bool {
        let Some(pending) = self.pending.get_mut(&run) else {
            return false;
        };
        pending.reply = None;
        if kept.is_some() {
            pending.kept = kept.take();
        }
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
pub(super) struct PoolState {
    pub(super) slots: Vec<Option<Slot>>,
    pub(super) restarts: u64,
    pub(super) shutting_down: bool,
    pub(super) last_spawn_error: Option<String>,
}

/// A pool's shutdown under way, which every caller of `shutdown` awaits.
pub(super) type ShutdownUnderWay = futures::future::Shared<BoxFuture<'static, ()>>;

pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) expected_names: Vec<String>,
    pub(super) runtime: tokio::runtime::Handle,
    /// The runtime the pool was started on, where answers are read: the callers usually run
    /// there, so an answer wakes its caller without a hop through the supervisor's thread. The
    /// supervisor's own when the pool was started on a current-thread runtime.
    pub(super) readers: tokio::runtime::Handle,
    /// Set when `readers` has shut down: answers are read on the supervisor's runtime from then.
    pub(super) readers_gone: AtomicBool,
    pub(super) state: Mutex<PoolState>,
    /// One place per task a worker may run or hold in its queue: a run waits here when all are
    /// full.
    pub(super) places: Arc<Semaphore>,
    pub(super) crashes: Mutex<CrashLog>,
    /// Woken when a worker becomes ready (or fails to start).
    pub(super) ready: Notify,
    pub(super) tracker: Tracker,
    pub(super) next_run: AtomicU64,
    pub(super) next_worker: AtomicU64,
    /// The slots' supervision, one task per slot for the life of the pool. Waited for, never
    /// taken: by the shutdown, and by the supervisor thread as it stops.
    pub(super) lifecycles: TaskTracker,
    /// Stops the supervisor thread, handing it the slots' supervision to wait for.
    pub(super) stop: Mutex<Option<oneshot::Sender<TaskTracker>>>,
    /// The shutdown, once begun: a task of the supervisor's that every call waits for.
    shutdown: Mutex<Option<ShutdownUnderWay>>,
    /// The earliest deadline a shutdown has asked for (`None`: none has one yet).
    pub(super) deadline: tokio::sync::watch::Sender<Option<Instant>>,
}

/// An installed worker with the receiving ends of its slot's channels.
pub(super) struct Live {
    pub(super) worker: Started,
    pub(super) kill: oneshot::Receiver<String>,
}

/// A worker that has announced itself, before its supervision starts.
pub(super) struct Started {
    pub(super) id: u64,
    pub(super) pid: u32,
    pub(super) child: Child,
    pub(super) input: Arc<WorkerInput>,
    pub(super) output: BufReader<pipe::Receiver>,
}

impl Shared {
    /// The state of a pool of `workers` slots, none filled yet, with `places` runs held at once.
    /// `runtimes`: the supervisor's, and the one answers are read on.
    pub(super) fn new(
        config: Config,
        registry: &NodeRegistry,
        workers: usize,
        places: usize,
        runtimes: [tokio::runtime::Handle; 2],
        stop: oneshot::Sender<TaskTracker>,
    ) -> Self {
        let [runtime, readers] = runtimes;
        Self {
            config,
            expected_names: registry.names().into_iter().map(String::from).collect(),
            runtime,
            readers,
            readers_gone: AtomicBool::new(false),
            state: Mutex::new(PoolState {
                slots: (0..workers).map(|_| None).collect(),
                ..PoolState::default()
            }),
            places: Arc::new(Semaphore::new(places.min(Semaphore::MAX_PERMITS))),
            crashes: Mutex::new(CrashLog::default()),
            ready: Notify::new(),
            tracker: Tracker::default(),
            next_run: AtomicU64::new(0),
            next_worker: AtomicU64::new(0),
            lifecycles: TaskTracker::new(),
            stop: Mutex::new(Some(stop)),
            shutdown: Mutex::new(None),
            deadline: tokio::sync::watch::Sender::new(None),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool's shutdown ([`shut_down`](super::pool::shut_down)), begun as a task of the
    /// supervisor's by the first call and waited for by every call. Once the supervisor's
    /// runtime is gone nothing runs: the pool has stopped. One that panicked is finished as a
    /// dropped pool is: its workers killed, its supervisor stopped.
    pub(super) fn shutdown_under_way(self: &Arc<Self>) -> ShutdownUnderWay {
        let mut shutdown = self.shutdown.lock().unwrap_or_else(|p| p.into_inner());
        let under_way = shutdown.get_or_insert_with(|| {
            let task = self.runtime.spawn(super::pool::shut_down(Arc::clone(self)));
            // Weak: the pool holds this future until it is dropped.
            let pool = Arc::downgrade(self);
            let done: BoxFuture<'static, ()> = Box::pin(async move {
                if let Err(e) = task.await
                    && e.is_panic()
                    && let Some(pool) = pool.upgrade()
                {
                    tracing::error!("process strategy: its shutdown panicked; killing its workers");
                    pool.release();
                }
            });
            done.shared()
        });
        under_way.clone()
    }

    pub(super) fn stop_supervisor(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // No slot is supervised anew once the pool stops: closed, it is waited for.
            self.lifecycles.close();
            let _ = stop.send(self.lifecycles.clone());
        }
    }

    /// The last handle is gone without a shutdown: refuse new runs, kill every worker (their
    /// runs fail as worker lost), and stop the supervisor once it has reaped them.
    pub(super) fn release(&self) {
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

    /// Completes once the pool stops (a shutdown's last stage, or the last handle gone).
    pub(super) async fn stopped(&self) {
        loop {
            // Whoever marks the pool stopping notifies `ready` after.
            let notified = self.ready.notified();
            if self.lock().shutting_down {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn crash_log(&self) -> MutexGuard<'_, CrashLog> {
        self.crashes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the live worker with id `worker_id`, if it is still live.
    pub(super) fn with_worker<R>(
        &self,
        worker_id: u64,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Option<R> {
        let mut state = self.lock();
        state
            .slots
            .iter_mut()
            .flatten()
            .find(|w| w.id == worker_id)
            .map(f)
    }

    pub(super) fn kill_all(&self, reason: &str) {
        let mut state = self.lock();
        for worker in state.slots.iter_mut().flatten() {
            worker.request_kill(reason.to_owned());
        }
    }

    pub(super) fn stats(&self) -> (Vec<WorkerStats>, u64) {
        let state = self.lock();
        let workers = state
            .slots
            .iter()
            .flatten()
            .map(|w| WorkerStats::new(w.id, Some(w.pid), w.pending.len() as u64, w.completed))
            .collect();
        (workers, state.restarts)
    }

    /// `request_id`'s run got an answer from its worker: its crashes are no longer in a row.
    pub(super) fn forget_crashes(&self, request_id: &RequestId) {
        let mut log = self.crash_log();
        if !log.counts.is_empty() {
            log.forget(request_id);
        }
    }
}
