//! An execution strategy in a crate of its own, depending on `task-core` alone: the worked
//! example of `docs/custom-strategy.md`.
//!
//! [`InlineStrategy`] runs each task on the task that awaits it (the coordinator's driver task
//! for that request): no spawn, no thread hop, no channel. That is the cheapest way to run tiny
//! async nodes; it is the wrong way to run long CPU-bound work, which would hold a runtime
//! worker thread (blocking nodes do run in place: use it for blocking work only when that work is
//! a few microseconds).
//!
//! # Examples
//!
//! ```
//! use coordinator::{BoxError, Coordinator, RequestCompletionPublisher, Task};
//! use exec_inline::InlineStrategy;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = RequestCompletionPublisher::new();
//! publisher.start()?;
//! let coordinator = Coordinator::builder()
//!     .strategy(InlineStrategy::MODE, InlineStrategy::new())
//!     .build();
//! coordinator.start(&publisher)?;
//!
//! let task = Task::from_fn("1", "add", || async { Ok::<_, BoxError>(2 + 2) });
//! assert_eq!(coordinator.submit(task, InlineStrategy::MODE).await?, 4);
//! # coordinator.shutdown().await;
//! # publisher.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;
use task_core::{
    BoxFuture, ErasedTask, ExecutionMode, Outcome, StrategyStats, TaskBody, TaskError,
    TaskExecutionStrategy,
};

/// Runs tasks inline on the caller's task. See the [crate docs](crate).
#[derive(Debug, Default, Clone)]
pub struct InlineStrategy {
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    closed: AtomicBool,
    in_flight: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Shutdown calls waiting for the last task in flight.
    idle_waiters: Mutex<Vec<oneshot::Sender<()>>>,
}

impl State {
    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Vec<oneshot::Sender<()>>> {
        self.idle_waiters.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a task out when dropped, even if its future is dropped half-way (timeout, cancel).
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            for waiter in self.0.lock_waiters().drain(..) {
                let _ = waiter.send(());
            }
        }
    }
}

impl InlineStrategy {
    /// The mode name this crate suggests registering the strategy under.
    pub const MODE: ExecutionMode = ExecutionMode::new_static("inline");

    /// A strategy that takes tasks until shut down.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TaskExecutionStrategy for InlineStrategy {
    fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let state = &*self.state;
            // Count first, then check, so shutdown either refuses a task or waits for it.
            state.in_flight.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let _in_flight = InFlight(state);
            if state.closed.load(Ordering::SeqCst) {
                return Err(TaskError::shutdown(self.name()));
            }
            let (_info, body) = task.into_parts();
            let outcome = match body {
                TaskBody::Async(body) => AssertUnwindSafe(body.into_future()).catch_unwind().await,
                TaskBody::Blocking(body) => {
                    std::panic::catch_unwind(AssertUnwindSafe(|| body.run()))
                }
                // `TaskBody` is non-exhaustive: a future kind of work this strategy does not know.
                _ => Ok(Err(TaskError::unsupported(
                    "the inline strategy cannot run this kind of task",
                ))),
            }
            // A panicking node is a failure, never a crash of the caller.
            .unwrap_or_else(|payload| Err(TaskError::panic(payload)));
            let counter = if outcome.is_ok() {
                &state.succeeded
            } else {
                &state.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            outcome
        })
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.state.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Box::pin(async move {
            let (sender, idle) = oneshot::channel();
            self.state.lock_waiters().push(sender);
            if self.state.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            // No runtime is assumed, so the grace period is kept by a short-lived thread.
            let (expire, expired) = oneshot::channel::<()>();
            std::thread::spawn(move || {
                std::thread::sleep(grace);
                let _ = expire.send(());
            });
            futures::future::select(idle, expired).await;
        })
    }

    fn name(&self) -> &str {
        "inline"
    }

    fn stats(&self) -> StrategyStats {
        let s = &self.state;
        StrategyStats::new(
            s.in_flight.load(Ordering::SeqCst),
            s.succeeded.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            !s.closed.load(Ordering::SeqCst),
        )
    }
}
