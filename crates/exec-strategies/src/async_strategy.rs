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

use crate::tracker::{Admitted, Tracker};

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
        let admitted = Admitted {
            admission,
            completion,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            crate::drop_unstarted(task);
            return admitted.end(Err(TaskError::strategy(
                "the async strategy runs tasks on a tokio runtime, and none is running here",
            )));
        };
        // Only the body moves on: the task's description is the coordinator's.
        let (_info, body) = task.into_parts();
        match body {
            TaskBody::Async(body) => {
                runtime.spawn(run_async(body, admitted));
            }
            TaskBody::Blocking(body) => {
                runtime.spawn_blocking(move || run_blocking(body, admitted));
            }
            body => {
                crate::drop_unstarted(body);
                let unsupported = "the async strategy cannot run this kind of task";
                admitted.end(Err(TaskError::unsupported(unsupported)));
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
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn's state is larger: see below"
)]
fn run_async(body: AsyncBody, admitted: Admitted) -> impl Future<Output = ()> {
    // An `async` block rather than an `async fn`: an `async fn` keeps a second copy of each
    // argument in its state, and tokio's task cells grow in steps of 128 bytes.
    async move {
        let mut node = std::pin::pin!(Some(AssertUnwindSafe(body.into_future()).catch_unwind()));
        let run = std::future::poll_fn(|cx| {
            admitted
                .completion
                .in_scope(|| match node.as_mut().as_pin_mut() {
                    Some(node) => node.poll(cx),
                    None => Poll::Pending,
                })
        });
        let outcome = tokio::select! {
            biased;
            () = admitted.completion.cancelled() => None,
            result = run => Some(flatten_panic(result)),
        };
        let Some(outcome) = outcome else {
            // Dropped in its request's scope, as it ran: its `Drop` sees its node. The admission
            // then counts it stopped.
            return admitted.completion.in_scope(|| node.set(None));
        };
        admitted.end(outcome);
    }
}

/// A blocking node, on the runtime's blocking pool, in its request's scope (so the tasks it
/// submits are its children). Cancelled while it waited for a thread, it never starts.
fn run_blocking(body: BlockingBody, admitted: Admitted) {
    if admitted.completion.is_cancelled() {
        // Its node goes first, then the admission counts it stopped.
        return crate::drop_unstarted(body);
    }
    let outcome = admitted
        .completion
        .in_scope(|| flatten_panic(std::panic::catch_unwind(AssertUnwindSafe(|| body.run()))));
    admitted.end(outcome);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use task_core::context::EventSink;
    use task_core::{BoxError, BoxFuture, Completion, CompletionSink, Outcome, Task, TaskBody};

    use super::run_async;
    use crate::tracker::{Admitted, Tracker};

    struct Unread;

    impl EventSink for Unread {
        fn broadcast(&self, _: Arc<str>) {}
    }

    impl CompletionSink for Unread {
        fn complete(&self, _: Outcome) {}
        fn poll_cancelled(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
        fn is_cancelled(&self) -> bool {
            false
        }
        fn run_in_scope(&self, f: &mut dyn FnMut()) {
            f();
        }
        fn spawn(&self, _: BoxFuture<'static, ()>) {}
    }

    /// tokio keeps each task in a cell whose size is a multiple of 128 bytes: a header (32),
    /// the scheduler and the task's id (16), the future with its stage's tag, and a trailer
    /// (48). A node's future of 152 bytes or less fits a cell of 256; a larger one takes 384
    /// for every async request in flight.
    #[test]
    fn an_async_node_fits_a_task_cell_of_256_bytes() {
        let task = Task::from_fn("r", "n", || async { Ok::<_, BoxError>(1) });
        let (_info, TaskBody::Async(body)) = task.into_erased().into_parts() else {
            panic!("an async task has an async body");
        };
        let tracker = Arc::new(Tracker::default());
        let admission = tracker.admit_owned().expect("an open tracker admits");
        let completion = Completion::new(Arc::new(Unread));
        let node = run_async(
            body,
            Admitted {
                admission,
                completion,
            },
        );
        let size = size_of_val(&node);
        assert!(size <= 152, "the node's future is {size} bytes");
    }
}
