//! [`AsyncExecutionStrategy`]: tasks run on the tokio runtime.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use task_core::{
    BoxFuture, Completion, ErasedTask, Outcome, StrategyStats, TaskBody, TaskError,
    TaskExecutionStrategy,
};

use crate::tracker::Tracker;
use crate::tracker::owned::OwnedAdmission;

/// Runs tasks on the tokio runtime: the strategy for I/O-bound work.
///
/// An async node launched by a coordinator ([`launch`](TaskExecutionStrategy::launch)) runs as a
/// tokio task of its own and delivers its outcome from there; through
/// [`execute`](TaskExecutionStrategy::execute) it runs on the task that polls the returned future.
/// Either way requests run in parallel across the runtime's workers. A blocking node runs on the
/// runtime's blocking pool, never on a worker.
///
/// A node's error becomes a failure outcome; so does a panic, carrying the panic message, and the
/// runtime, the strategy and every other task keep working. After
/// [`shutdown`](TaskExecutionStrategy::shutdown) new tasks fail with
/// [`TaskError::is_shutdown`]; shutdown waits up to its grace period for the tasks in flight and
/// can be called any number of times.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use exec_strategies::AsyncExecutionStrategy;
/// use task_core::{Task, TaskExecutionStrategy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let strategy = AsyncExecutionStrategy::new();
/// let task = Task::from_fn("1", "add", || async { Ok::<_, task_core::BoxError>(2 + 2) });
/// let value = strategy.execute(task.into_erased()).await.unwrap();
/// assert_eq!(value.downcast_ref::<i32>(), Some(&4));
///
/// strategy.shutdown(Duration::from_secs(1)).await;
/// let late = Task::from_fn("2", "add", || async { Ok::<_, task_core::BoxError>(0) });
/// assert!(strategy.execute(late.into_erased()).await.unwrap_err().is_shutdown());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct AsyncExecutionStrategy {
    tracker: Arc<Tracker>,
}

impl AsyncExecutionStrategy {
    /// A strategy running on whichever tokio runtime polls its futures.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for AsyncExecutionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncExecutionStrategy")
            .field("stats", &self.tracker.stats())
            .finish()
    }
}

/// Turns a caught panic into a failure outcome.
pub(crate) fn flatten_panic(result: std::thread::Result<Outcome>) -> Outcome {
    result.unwrap_or_else(|payload| Err(TaskError::panic(payload)))
}

impl TaskExecutionStrategy for AsyncExecutionStrategy {
    fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let Some(_admission) = self.tracker.admit() else {
                return Err(TaskError::shutdown("async"));
            };
            let (_info, body) = task.into_parts();
            let outcome = match body {
                TaskBody::Async(body) => {
                    flatten_panic(AssertUnwindSafe(body.into_future()).catch_unwind().await)
                }
                TaskBody::Blocking(body) => run_blocking(body).await,
                _ => Err(TaskError::unsupported(
                    "the async strategy cannot run this kind of task",
                )),
            };
            self.tracker.record(&outcome);
            outcome
        })
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.tracker.close();
        Box::pin(async move {
            if !self.tracker.drain(grace).await {
                tracing::warn!(
                    in_flight = self.tracker.in_flight(),
                    "async strategy: grace period over with tasks still running"
                );
            }
        })
    }

    fn name(&self) -> &str {
        "async"
    }

    /// Async nodes: each runs as a tokio task of its own.
    fn can_launch(&self, task: &ErasedTask) -> bool {
        !task.is_blocking()
    }

    fn launch(&self, task: ErasedTask, completion: Completion) {
        let Some(admission) = self.tracker.admit_owned() else {
            return completion.complete(Err(TaskError::shutdown("async")));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Only the body moves into the task: its description is the coordinator's.
                let (_info, body) = task.into_parts();
                runtime.spawn(run_launched(body, completion, admission));
            }
            Err(_) => completion.complete(Err(TaskError::strategy(
                "the async strategy launches tasks on a tokio runtime, and none is running here",
            ))),
        }
    }

    fn stats(&self) -> StrategyStats {
        self.tracker.stats()
    }
}

/// A launched task: runs the node in its request's scope until it ends or the request is
/// cancelled (then the node is dropped; the request already has its outcome).
async fn run_launched(body: TaskBody, completion: Completion, admission: OwnedAdmission) {
    let outcome = match body {
        TaskBody::Async(body) => {
            let mut run = std::pin::pin!(AssertUnwindSafe(body.into_future()).catch_unwind());
            let run = std::future::poll_fn(|cx| completion.in_scope(|| run.as_mut().poll(cx)));
            tokio::select! {
                biased;
                () = completion.cancelled() => return,
                result = run => flatten_panic(result),
            }
        }
        TaskBody::Blocking(body) => run_blocking(body).await,
        _ => Err(TaskError::unsupported(
            "the async strategy cannot run this kind of task",
        )),
    };
    admission.tracker().record(&outcome);
    completion.complete(outcome);
}

async fn run_blocking(body: task_core::BlockingBody) -> Outcome {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err(TaskError::strategy(
            "a blocking node on the async strategy needs a tokio runtime",
        ));
    };
    let handle =
        runtime.spawn_blocking(move || std::panic::catch_unwind(AssertUnwindSafe(|| body.run())));
    match handle.await {
        Ok(result) => flatten_panic(result),
        Err(e) if e.is_panic() => Err(TaskError::panic(e.into_panic())),
        Err(_) => Err(TaskError::strategy(
            "the runtime shut down before the blocking node finished",
        )),
    }
}
