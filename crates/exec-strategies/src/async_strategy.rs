//! [`AsyncExecutionStrategy`]: tasks run on the tokio runtime.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use task_core::{
    AsyncBody, BlockingBody, BoxFuture, Completion, ErasedTask, Outcome, StrategyStats, TaskBody,
    TaskError, TaskExecutionStrategy,
};

use crate::tracker::OwnedAdmission;
use crate::tracker::Tracker;

/// Runs tasks on the tokio runtime: the strategy for I/O-bound work.
///
/// An async node runs as a tokio task of its own and delivers its outcome from there, so requests
/// run in parallel across the runtime's workers. A blocking node runs on the runtime's blocking
/// pool, never on a worker, inside its request's scope (the tasks it submits are its children).
///
/// A node's error becomes a failure outcome; so does a panic, carrying the panic message, and the
/// runtime, the strategy and every other task keep working. After
/// [`shutdown`](TaskExecutionStrategy::shutdown) new tasks fail with
/// [`TaskError::is_shutdown`]; shutdown waits up to its grace period for the tasks in flight and
/// can be called any number of times. That wait is a tokio timer: with tasks in flight, await
/// shutdown on a runtime with its time driver (`enable_time`), or it panics, as
/// `tokio::time::timeout` does.
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
/// let value = task_core::run(&strategy, task.into_erased()).await.unwrap();
/// assert_eq!(value.downcast_ref::<i32>(), Some(&4));
///
/// strategy.shutdown(Duration::from_secs(1)).await;
/// let late = Task::from_fn("2", "add", || async { Ok::<_, task_core::BoxError>(0) });
/// assert!(task_core::run(&strategy, late.into_erased()).await.unwrap_err().is_shutdown());
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
    fn execute(&self, task: ErasedTask, completion: Completion) {
        // Refused, the node goes before its completion, as every unstarted one.
        let Some(admission) = self.tracker.admit_owned() else {
            crate::drop_unstarted(task);
            return completion.complete(Err(TaskError::shutdown("async")));
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            crate::drop_unstarted(task);
            return completion.complete(Err(TaskError::strategy(
                "the async strategy runs tasks on a tokio runtime, and none is running here",
            )));
        };
        // Only the body moves on: the task's description is the coordinator's.
        let (_info, body) = task.into_parts();
        match body {
            TaskBody::Async(body) => {
                runtime.spawn(run_async(body, completion, admission));
            }
            TaskBody::Blocking(body) => {
                runtime.spawn_blocking(move || run_blocking(body, completion, admission));
            }
            body => {
                crate::drop_unstarted(body);
                let unsupported = "the async strategy cannot run this kind of task";
                completion.complete(Err(TaskError::unsupported(unsupported)));
            }
        }
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

    fn stats(&self) -> StrategyStats {
        self.tracker.stats()
    }
}

/// An async node, as a tokio task of its own: runs in its request's scope until it ends or the
/// request is cancelled (then the node is dropped; the request already has its outcome).
async fn run_async(body: AsyncBody, completion: Completion, admission: OwnedAdmission) {
    let mut node = std::pin::pin!(Some(AssertUnwindSafe(body.into_future()).catch_unwind()));
    let run = std::future::poll_fn(|cx| {
        completion.in_scope(|| match node.as_mut().as_pin_mut() {
            Some(node) => node.poll(cx),
            None => Poll::Pending,
        })
    });
    let outcome = tokio::select! {
        biased;
        () = completion.cancelled() => None,
        result = run => Some(flatten_panic(result)),
    };
    let Some(outcome) = outcome else {
        // Dropped in its request's scope, as it ran: its `Drop` sees its node. The admission
        // then counts it stopped.
        return completion.in_scope(|| node.set(None));
    };
    // Counted out before the caller hears: what it reads of the stats then is current.
    admission.record(&outcome);
    completion.complete(outcome);
}

/// A blocking node, on the runtime's blocking pool, in its request's scope (so the tasks it
/// submits are its children). Cancelled while it waited for a thread, it never starts.
fn run_blocking(body: BlockingBody, completion: Completion, admission: OwnedAdmission) {
    if completion.is_cancelled() {
        // Its node goes first, then the admission counts it stopped.
        return crate::drop_unstarted(body);
    }
    let outcome = completion
        .in_scope(|| flatten_panic(std::panic::catch_unwind(AssertUnwindSafe(|| body.run()))));
    admission.record(&outcome);
    completion.complete(outcome);
}
