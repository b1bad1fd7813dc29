//! [`TaskExecutionStrategy`]: the extension point where work runs.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Completion, ErasedTask};

/// The instant `after` from `now`, for a timer such as a shutdown's grace or a request's
/// deadline; `None`, a timer that never runs out, when it lies beyond what an [`Instant`] holds,
/// or so near that end that tokio's timers, which round a deadline up to its next millisecond,
/// would overflow (and panic) on it.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let now = Instant::now();
/// assert_eq!(task_core::deadline_after(now, Duration::from_secs(1)), Some(now + Duration::from_secs(1)));
/// assert_eq!(task_core::deadline_after(now, Duration::MAX), None);
/// ```
pub fn deadline_after(now: Instant, after: Duration) -> Option<Instant> {
    now.checked_add(after.saturating_add(Duration::from_millis(1)))?;
    now.checked_add(after)
}

/// The longest span handed to a timer that adds it to the time it starts (tokio's `sleep` and
/// `timeout`, hyper's header timeout), which could overflow, and panic, on a longer one: a
/// century, which never runs out in practice. Longer spans are cut to it.
pub const LONGEST_TIMER: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Where and how tasks run. Implement it in your own crate, depending on `task-core` alone, and
/// register it with a coordinator under a mode name.
///
/// One method runs work: [`execute`](Self::execute) starts a task and returns at once; the run
/// hands its [`Outcome`](crate::Outcome) to the [`Completion`] it was given, from wherever it ran
/// (a runtime's task, a pool's thread, a reader of worker answers). The completion is the
/// coordinator's: delivering it closes the job, answers the caller and announces the outcome,
/// exactly once.
///
/// The trait is object safe: a coordinator holds `Arc<dyn TaskExecutionStrategy>`. Methods with
/// default bodies are optional hooks; new hooks will arrive with defaults, so implementations keep
/// compiling.
///
/// # Examples
///
/// A strategy that runs every task as one future on the coordinator's runtime:
///
/// ```
/// use std::time::Duration;
/// use task_core::{BoxFuture, Completion, ErasedTask, TaskExecutionStrategy};
///
/// #[derive(Debug)]
/// struct OnTheRuntime;
///
/// impl TaskExecutionStrategy for OnTheRuntime {
///     fn execute(&self, task: ErasedTask, completion: Completion) {
///         completion.spawn(task.run_inline());
///     }
///     fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
///         Box::pin(async {})
///     }
/// }
///
/// // Without a coordinator, `task_core::run` drives a strategy's task to its outcome.
/// let task = task_core::Task::from_fn("1", "add", || async { Ok::<_, task_core::BoxError>(2 + 2) });
/// let outcome = futures::executor::block_on(task_core::run(&OnTheRuntime, task.into_erased()));
/// assert_eq!(outcome.unwrap().downcast_ref::<i32>(), Some(&4));
/// ```
pub trait TaskExecutionStrategy: Send + Sync + 'static {
    /// Starts `task` and returns at once; the run delivers its outcome to `completion`.
    ///
    /// What the coordinator relies on:
    ///
    /// - **Exactly one outcome**: [`Completion::complete`] consumes the completion; dropping it
    ///   undelivered (the run was lost: its pool or runtime went away) delivers a failure.
    /// - **A panic is a failure, never a crash**: catch the node's panic and deliver
    ///   [`TaskError::panic`](crate::TaskError::panic) (the future handed to
    ///   [`Completion::spawn`] has it done for it).
    /// - **Cancellation does not wait for the run**: a cancelled or timed-out request is answered
    ///   at once and what the run delivers afterwards is ignored. Stop early when
    ///   [`Completion::cancelled`] fires if the work can be stopped, and never start a task that
    ///   is cancelled while it waits in a queue.
    /// - **Scope**: run the node inside [`Completion::in_scope`], so tasks it submits get it as
    ///   their parent and are cancelled with it.
    /// - **After [`shutdown`](Self::shutdown) has begun**, deliver an error for which
    ///   [`TaskError::is_shutdown`](crate::TaskError::is_shutdown) holds.
    fn execute(&self, task: ErasedTask, completion: Completion);

    /// Stops taking tasks and waits up to `grace` for the ones in flight, then returns: a
    /// coordinator's shutdown waits for this future, however long it takes. Idempotent: calling
    /// it again waits again, it does not fail.
    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()>;

    /// A short name for logs and [`StrategyStats`]. The default is the type's name without its
    /// module path, its generic arguments kept whole.
    fn name(&self) -> &str {
        crate::node::short_type_name::<Self>()
    }

    /// Counters for a coordinator's system detail. The default counts nothing and says the
    /// strategy takes tasks (a coordinator's own state says when it stops taking them).
    fn stats(&self) -> StrategyStats {
        StrategyStats::new(0, 0, 0, true)
    }
}

/// Counters a strategy reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StrategyStats {
    /// Tasks taken and not ended: running, or waiting in the strategy for a place to run (under
    /// the threaded strategy's `max_in_flight`, or for a worker of a process pool).
    pub in_flight: u64,
    /// Tasks that ended with a value.
    pub succeeded: u64,
    /// Tasks that ended with an error.
    pub failed: u64,
    /// Tasks let go of, unfinished, because their request was cancelled or timed out (or their
    /// attempt passed its timeout), or dropped with the runtime that ran them: dropped, never
    /// started, or cancelled in their worker. With them, `in_flight + succeeded + failed +
    /// stopped` counts every task the strategy took: one it refused (it was shut down), or was
    /// handed already cancelled, never started and is in none of them.
    pub stopped: u64,
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
    /// Tasks the worker holds now, running or queued in it. A task let go of while the worker
    /// holds it stays counted here until the worker has answered it or is gone, while the
    /// strategy's [`StrategyStats::in_flight`] counts it out at once (as `stopped` when its
    /// request was cancelled or passed its deadline, as `failed` when the pool's own task
    /// timeout failed it): for that moment the workers' counts add up to more.
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
            stopped: 0,
            accepting,
            workers: Vec::new(),
            restarts: 0,
        }
    }

    /// The same stats with `stopped` tasks ([`StrategyStats::stopped`]).
    #[must_use]
    pub fn with_stopped(mut self, stopped: u64) -> Self {
        self.stopped = stopped;
        self
    }

    /// The same stats with per-worker counters and the restart count.
    #[must_use]
    pub fn with_workers(mut self, workers: Vec<WorkerStats>, restarts: u64) -> Self {
        self.workers = workers;
        self.restarts = restarts;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;

    /// A strategy wrapping another, as a tracing or metrics layer does.
    struct Traced<S>(S);

    impl<S: Send + Sync + 'static> TaskExecutionStrategy for Traced<S> {
        fn execute(&self, _task: ErasedTask, completion: Completion) {
            completion.complete(Err(crate::TaskError::strategy("not run")));
        }

        fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[test]
    fn the_default_name_keeps_a_generic_strategy_whole() {
        let traced = Traced(Plain);
        let name = TaskExecutionStrategy::name(&traced);
        assert!(
            name.starts_with("Traced<") && name.ends_with("Plain>"),
            "{name}"
        );
    }
}
