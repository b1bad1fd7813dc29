//! [`ProcessExecutionStrategy`]: the handle of a running pool.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use task_core::{
    BoxFuture, Completion, ErasedTask, StrategyStats, TaskError, TaskExecutionStrategy,
};

use super::shared::{REAP, Shared};

/// Runs tasks in a supervised pool of worker processes: crash isolation and separate memory.
///
/// Only [`PortableNode`](task_core::PortableNode)s cross the process boundary (submitted with
/// [`Task::portable`](task_core::Task::portable)); anything else fails with
/// [`TaskError::is_unsupported`]. The worker is your own program (the current executable by
/// default), which calls [`run_worker_if_requested`](super::run_worker_if_requested) first thing in
/// `main` with the registry of nodes it can run.
///
/// - A worker runs one task at a time ([`ProcessBuilder::tasks_per_worker`](super::ProcessBuilder::tasks_per_worker)) with a queue of
///   more behind it ([`ProcessBuilder::prefetch`](super::ProcessBuilder::prefetch)). When it crashes, is killed or exits, the task
///   it was running fails with [`TaskError::is_worker_lost`] and a message saying how it ended
///   (exit status or signal); the tasks in its queue run on another worker. It is replaced, and
///   the other workers are untouched.
/// - A request whose attempts crash their worker [`ProcessBuilder::poison_after`](super::ProcessBuilder::poison_after) times in a row
///   fails with [`TaskError::is_poison`], which no retry policy retries.
/// - A worker that breaks the protocol fails every task it holds and is replaced.
/// - Workers are killed by the kernel if the parent dies (Linux): no orphans.
/// - A task whose caller stops waiting (the coordinator's timeout or cancellation), or that runs
///   past [`ProcessBuilder::task_timeout`](super::ProcessBuilder::task_timeout), is cancelled in its worker; if it is still running
///   after [`ProcessBuilder::cancel_grace`](super::ProcessBuilder::cancel_grace) its worker is killed and replaced. A task whose caller
///   stopped waiting keeps its place in the pool, and its [`Completion`] (its request's place
///   under a coordinator's limit), until its worker has answered it or is gone, so a limit
///   counts the node until it has stopped; its caller is answered at once all the same.
/// - [`ProcessBuilder::recycle_after`](super::ProcessBuilder::recycle_after) replaces workers after a number of tasks.
/// - Shutdown refuses new tasks, lets those in flight finish up to its grace period, then stops
///   and reaps every worker: no zombies. It runs on the supervisor's thread from the moment
///   `shutdown` is called, whether or not its caller awaits it (dropping the pool's last handle
///   meanwhile still kills the workers at once). A shutdown called while another is under way
///   cuts its grace short when its own ends sooner (a second, impatient Ctrl-C), waits for it,
///   then returns. Dropping the last handle without a shutdown kills and reaps the workers and
///   stops the supervisor thread.
/// - The protocol runs on pipes of its own: a node's stdin is `/dev/null` and its stdout goes to
///   the parent's stderr.
///
/// Supervision runs on a thread of its own with its own small tokio runtime (with timers: the
/// shutdown's kill timer runs there), so the strategy works under any runtime of the caller's. The workers' answers are read on the runtime
/// [`ProcessBuilder::start`](super::ProcessBuilder::start) was awaited on, where the callers usually are, so an answer wakes
/// its caller without a hop through another thread. If that runtime shuts down while the pool
/// lives on, the workers are replaced (the tasks they hold fail as worker lost: with their
/// frames unread, which had started cannot be told, and none may run twice) and answers are read
/// on the supervisor's runtime from then on.
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
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            _owner: Arc::new(Owner {
                shared: Arc::clone(&shared),
            }),
            shared,
        }
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
            // The node goes before its completion.
            crate::drop_unstarted(task);
            completion.complete(Err(TaskError::shutdown("process")));
            return;
        }
        // The run owns its completion rather than being dropped with it as the request is
        // cancelled: a run its worker holds keeps it until the node has stopped.
        let shared = Arc::clone(&self.shared);
        completion.spawn_owning(|completion| shared.run(task, completion));
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.shared.tracker.close();
        // A grace too long to add to now never runs out; a shorter one than a shutdown under way
        // has shortens it.
        if let Some(deadline) = task_core::deadline_after(Instant::now(), grace) {
            self.shared.deadline.send_if_modified(|asked| {
                let sooner = asked.is_none_or(|asked| deadline < asked);
                if sooner {
                    *asked = Some(deadline);
                }
                sooner
            });
        }
        Box::pin(self.shared.shutdown_under_way())
    }

    fn name(&self) -> &str {
        "process"
    }

    fn stats(&self) -> StrategyStats {
        let (workers, restarts) = self.shared.stats();
        self.shared.tracker.stats().with_workers(workers, restarts)
    }
}

/// The pool's shutdown, run once, as a task of the supervisor's runtime (which has timers
/// whatever the caller's has): waits for the runs in flight until the deadline, closes the
/// workers' input so that they exit, kills those still there at the deadline, reaps them all
/// (none is left a zombie), then stops the supervisor.
pub(super) async fn shut_down(shared: Arc<Shared>) {
    let passed = deadline_passed(shared.deadline.subscribe(), Instant::now());
    let drained = tokio::select! {
        () = shared.tracker.wait() => true,
        () = passed => shared.tracker.in_flight() == 0,
    };
    if !drained {
        tracing::warn!(
            in_flight = shared.tracker.in_flight(),
            "process strategy: grace period over with tasks still running; killing workers"
        );
    }
    {
        let mut state = shared.lock();
        state.shutting_down = true;
        for worker in state.slots.iter_mut().flatten() {
            // Closing stdin lets the worker finish what it has and exit.
            if let Some(input) = worker.input.take() {
                input.close();
            }
        }
    }
    shared.ready.notify_waiters();
    shared.places.close();
    // Workers have until the deadline (at least a moment) to exit, then are killed.
    let all = shared.lifecycles.wait();
    let exit_by = Instant::now() + Duration::from_millis(200);
    let kill_at = deadline_passed(shared.deadline.subscribe(), exit_by);
    tokio::select! {
        () = all => {}
        () = kill_at => {
            shared.kill_all("the pool shut down");
            // A slot still starting a worker is out of the kill's reach: it is given as long
            // as the supervisor gives its slots when it stops.
            let _ = tokio::time::timeout(REAP, shared.lifecycles.wait()).await;
        }
    }
    shared.stop_supervisor();
}

/// Completes once the earliest deadline a shutdown has asked for (`asked`) has passed, and not
/// before `not_before`; never while no shutdown has a deadline. A shorter one asked meanwhile is
/// followed.
async fn deadline_passed(
    mut asked: tokio::sync::watch::Receiver<Option<Instant>>,
    not_before: Instant,
) {
    loop {
        let deadline = *asked.borrow_and_update();
        let passed = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.max(not_before).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = passed => return,
            changed = asked.changed() => {
                if changed.is_err() {
                    // The pool is gone: nothing is left to wait for.
                    return;
                }
            }
        }
    }
}
