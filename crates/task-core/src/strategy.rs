//! [`TaskExecutionStrategy`]: the extension point where work runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Completion, ErasedTask, Outcome, TaskError};

/// Where and how tasks run. Implement it in your own crate, depending on `task-core` alone, and
/// register it with a coordinator under a mode name.
///
/// A strategy turns every task it is given into exactly one [`Outcome`]: the node's value, or a
/// [`TaskError`](crate::TaskError) saying why there is none (the node failed or panicked, the
/// strategy is shut down, it cannot run that kind of task). It never panics on a task's behalf and
/// never leaves a returned future pending forever.
///
/// The trait is object safe: a coordinator holds `Arc<dyn TaskExecutionStrategy>`. Methods with
/// default bodies are optional hooks; new hooks will arrive with defaults, so implementations keep
/// compiling.
///
/// # Examples
///
/// A strategy that runs every task inline on the caller's task:
///
/// ```
/// use std::time::Duration;
/// use task_core::{BoxFuture, ErasedTask, Outcome, TaskExecutionStrategy};
///
/// #[derive(Debug)]
/// struct Inline;
///
/// impl TaskExecutionStrategy for Inline {
///     fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome> {
///         Box::pin(task.run_inline())
///     }
///     fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
///         Box::pin(async {})
///     }
/// }
/// ```
pub trait TaskExecutionStrategy: Send + Sync + 'static {
    /// Runs `task` to its outcome.
    ///
    /// After [`shutdown`](Self::shutdown) has begun, the outcome is an error for which
    /// [`TaskError::is_shutdown`](crate::TaskError::is_shutdown) holds.
    fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome>;

    /// Stops taking tasks and waits up to `grace` for the ones in flight. Idempotent: calling it
    /// again waits again, it does not fail.
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;

    /// A short name for logs and [`StrategyStats`].
    fn name(&self) -> &str {
        let full = std::any::type_name::<Self>();
        full.rsplit("::").next().unwrap_or(full)
    }

    /// Counters for a coordinator's system detail. The default reports nothing.
    fn stats(&self) -> StrategyStats {
        StrategyStats::default()
    }

    /// Whether [`launch`](Self::launch) takes `task`. The default is `false`: the coordinator
    /// then runs every task through [`execute`](Self::execute).
    fn can_launch(&self, task: &ErasedTask) -> bool {
        let _ = task;
        false
    }

    /// Starts `task` on its own and returns at once; the run delivers its outcome to
    /// `completion`. Called only for a task [`can_launch`](Self::can_launch) took.
    ///
    /// A launched request needs no future of the caller's to drive it: a strategy with its own
    /// place to run (a runtime's task, a pool's thread) answers from there, which saves a task,
    /// a future and a wake-up per request. The same rules hold as for `execute`: exactly one
    /// outcome (the [`Completion`] enforces it), a shutdown error after shutdown, a panic caught
    /// and delivered as a failure. Run the node inside [`Completion::in_scope`], and stop early
    /// when [`Completion::cancelled`] fires if the node can be stopped.
    ///
    /// The default delivers an unsupported error.
    fn launch(&self, task: ErasedTask, completion: Completion) {
        let _ = task;
        completion.complete(Err(TaskError::unsupported(
            "this strategy does not launch tasks",
        )));
    }
}

/// Counters a strategy reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StrategyStats {
    /// Tasks running now.
    pub in_flight: u64,
    /// Tasks that ended with a value.
    pub succeeded: u64,
    /// Tasks that ended with an error.
    pub failed: u64,
    /// Whether the strategy still takes tasks.
    pub accepting: bool,
    /// The strategy's workers, for strategies that run tasks in worker processes.
    pub workers: Vec<WorkerStats>,
    /// How many workers were replaced after ending (crash, kill, timeout, recycling).
    pub restarts: u64,
}

/// Counters of one worker of a worker-based strategy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WorkerStats {
    /// The strategy's id for the worker (new for each replacement).
    pub id: u64,
    /// The worker's process id, when it is a local process.
    pub pid: Option<u32>,
    /// Tasks the worker is running now.
    pub in_flight: u64,
    /// Tasks the worker has answered.
    pub completed: u64,
}

impl WorkerStats {
    /// Counters for one worker.
    pub fn new(id: u64, pid: Option<u32>, in_flight: u64, completed: u64) -> Self {
        Self {
            id,
            pid,
            in_flight,
            completed,
        }
    }
}

impl StrategyStats {
    /// Stats with the given counters.
    pub fn new(in_flight: u64, succeeded: u64, failed: u64, accepting: bool) -> Self {
        Self {
            in_flight,
            succeeded,
            failed,
            accepting,
            workers: Vec::new(),
            restarts: 0,
        }
    }

    /// The same stats with per-worker counters and the restart count.
    #[must_use]
    pub fn with_workers(mut self, workers: Vec<WorkerStats>, restarts: u64) -> Self {
        self.workers = workers;
        self.restarts = restarts;
        self
    }
}
