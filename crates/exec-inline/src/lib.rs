//! An execution strategy in a crate of its own, depending on `task-core` (and `tokio-util`'s
//! `TaskTracker`, which needs no runtime): the worked example of `docs/custom-strategy.md`.
//!
//! [`InlineStrategy`] runs each task where it is handed over, with no queue, pool or runtime of
//! its own:
//!
//! - a **blocking** body runs in place, on the thread that calls
//!   [`execute`](TaskExecutionStrategy::execute) (a coordinator's, when it submits), and its
//!   outcome is delivered before `execute` returns;
//! - an **async** body goes to [`Completion::spawn`], which runs it on the coordinator's runtime
//!   with no extra hop: no channel, no thread of ours.
//!
//! That is the cheapest way to run tiny nodes. It is the wrong way to run long blocking work,
//! which would hold the caller's thread (a runtime worker thread) until it ends: use it for
//! blocking work only when that work takes a few microseconds.
//!
//! # Examples
//!
//! Registered with a coordinator under its own mode name:
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
//!
//! On its own, with [`task_core::run`] driving the task to its outcome:
//!
//! ```
//! use exec_inline::InlineStrategy;
//! use task_core::{BoxError, Task};
//!
//! let task = Task::blocking("1", "add", || Ok::<_, BoxError>(2 + 2));
//! let outcome = futures::executor::block_on(task_core::run(&InlineStrategy::new(), task.into_erased()));
//! assert_eq!(outcome.unwrap().downcast_ref::<i32>(), Some(&4));
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;
use task_core::{
    BoxFuture, Completion, ErasedTask, ExecutionMode, Outcome, StrategyStats, TaskBody, TaskError,
    TaskExecutionStrategy,
};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

/// Runs blocking tasks in place and async ones on the coordinator's runtime. See the
/// [crate docs](crate).
#[derive(Debug, Default, Clone)]
pub struct InlineStrategy {
    state: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    // The tasks in flight; closed by shutdown, which then waits for them.
    tasks: TaskTracker,
    succeeded: AtomicU64,
    failed: AtomicU64,
    // Runs let go of unfinished, as their requests were cancelled or timed out.
    stopped: AtomicU64,
}

/// A task counted in. Dropping it counts the task out, however the run ends: finished, or its
/// future dropped unfinished because the request was cancelled or timed out (counted stopped).
struct InFlight {
    state: Arc<State>,
    finished: bool,
    _token: TaskTrackerToken,
}

impl InFlight {
    // Counts a task in; `None` once the strategy is shut down.
    fn enter(state: &Arc<State>) -> Option<Self> {
        // Counted before the check, so shutdown either refuses a task or waits for it.
        let token = state.tasks.token();
        if state.tasks.is_closed() {
            return None; // dropping `token` counts the task out again
        }
        Some(InFlight {
            state: Arc::clone(state),
            finished: false,
            _token: token,
        })
    }

    // The outcome of a run that ended, counted. A panicking node is a failure, never a crash.
    fn finish(mut self, run: std::thread::Result<Outcome>) -> Outcome {
        self.finished = true;
        let outcome = run.unwrap_or_else(|payload| Err(TaskError::panic(payload)));
        let counter = if outcome.is_ok() {
            &self.state.succeeded
        } else {
            &self.state.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }
}

impl Drop for InFlight {
    // Dropped unfinished: the future went with its request, cancelled or timed out (even
    // before its first poll).
    fn drop(&mut self) {
        if !self.finished {
            self.state.stopped.fetch_add(1, Ordering::Relaxed);
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
    fn execute(&self, task: ErasedTask, completion: Completion) {
        // Cancelled before it started: its outcome is given already, and it never runs. The
        // node goes before the completion, so that nothing of it outlives the request's end.
        if completion.is_cancelled() {
            return drop(task);
        }
        let Some(in_flight) = InFlight::enter(&self.state) else {
            drop(task);
            return completion.complete(Err(TaskError::shutdown(self.name())));
        };
        let (_info, body) = task.into_parts();
        match body {
            // In place, on the calling thread, inside the request's scope.
            TaskBody::Blocking(body) => {
                let run = completion.in_scope(|| catch_unwind(AssertUnwindSafe(|| body.run())));
                completion.complete(in_flight.finish(run));
            }
            // On the coordinator's runtime, each poll in the request's scope; the guard goes
            // with the future, dropped with it if the request is cancelled.
            TaskBody::Async(body) => completion.spawn(async move {
                let run = AssertUnwindSafe(body.into_future()).catch_unwind().await;
                in_flight.finish(run)
            }),
            // `TaskBody` is non-exhaustive: a future kind of work this strategy does not know.
            unknown => {
                drop(unknown);
                let unsupported =
                    TaskError::unsupported("the inline strategy cannot run this kind of task");
                completion.complete(in_flight.finish(Ok(Err(unsupported))));
            }
        }
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.state.tasks.close();
        Box::pin(async move {
            if self.state.tasks.is_empty() {
                return;
            }
            // No runtime is assumed, so the grace period is kept by a thread, which ends with
            // this future: dropping `_ended` (done, or given up on) wakes it early.
            let (expire, expired) = oneshot::channel::<()>();
            let (_ended, ended) = mpsc::channel::<()>();
            std::thread::spawn(move || {
                if let Err(RecvTimeoutError::Timeout) = ended.recv_timeout(grace) {
                    let _ = expire.send(());
                }
            });
            let idle = std::pin::pin!(self.state.tasks.wait());
            futures::future::select(idle, expired).await;
        })
    }

    fn name(&self) -> &str {
        "inline"
    }

    fn stats(&self) -> StrategyStats {
        let s = &self.state;
        StrategyStats::new(
            s.tasks.len() as u64,
            s.succeeded.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
            !s.tasks.is_closed(),
        )
        .with_stopped(s.stopped.load(Ordering::Relaxed))
    }
}

/// The strategy on its own, without a coordinator: [`task_core::run`] drives each task to its
/// outcome (and what the strategy hands to `Completion::spawn` with it), on any executor.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::thread;
    use std::time::{Duration, Instant};

    use futures::FutureExt;
    use futures::executor::block_on;
    use task_core::{BoxError, Task, TaskExecutionStrategy};

    use super::InlineStrategy;

    #[test]
    fn values_errors_and_panics_become_outcomes() {
        let s = InlineStrategy::new();
        let ok = Task::from_fn("1", "ok", || async { Ok::<_, BoxError>(5) });
        let outcome = block_on(task_core::run(&s, ok.into_erased()));
        assert_eq!(outcome.unwrap().downcast_ref::<i32>(), Some(&5));
        let blocking = Task::blocking("2", "b", || Ok::<_, BoxError>(6));
        let outcome = block_on(task_core::run(&s, blocking.into_erased()));
        assert_eq!(outcome.unwrap().downcast_ref::<i32>(), Some(&6));
        let failing: Task<()> = Task::from_fn("3", "f", || async { Err("no") });
        let error = block_on(task_core::run(&s, failing.into_erased())).unwrap_err();
        assert!(error.is_node_error(), "{error}");
        let panicking = Task::blocking("4", "p", || -> Result<(), BoxError> { panic!("boom") });
        let error = block_on(task_core::run(&s, panicking.into_erased())).unwrap_err();
        assert!(
            error.is_panic() && error.message().contains("boom"),
            "{error}"
        );
        let panicking = Task::from_fn("5", "p", || async {
            if true {
                panic!("async boom");
            }
            Ok::<_, BoxError>(())
        });
        let error = block_on(task_core::run(&s, panicking.into_erased())).unwrap_err();
        assert!(
            error.is_panic() && error.message().contains("async boom"),
            "{error}"
        );
        let stats = s.stats();
        assert_eq!((stats.succeeded, stats.failed, stats.in_flight), (2, 3, 0));
        assert!(stats.accepting);
    }

    #[test]
    fn a_blocking_body_runs_in_place_before_execute_returns() {
        let s = InlineStrategy::new();
        let ran_on = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::clone(&ran_on);
        let task = Task::blocking("1", "where", move || {
            *seen.lock().unwrap() = Some(thread::current().id());
            Ok::<_, BoxError>(())
        });
        let running = task_core::run(&s, task.into_erased());
        // Not polled yet: the body ran inside `execute`, on this thread, and is counted out.
        assert_eq!(*ran_on.lock().unwrap(), Some(thread::current().id()));
        assert_eq!(s.stats().in_flight, 0);
        assert!(block_on(running).is_ok());
    }

    /// A request cancelled before `execute` is called (its caller gave up in between) is
    /// answered already: its body never runs, nothing more is delivered, and the body is gone
    /// before the completion says the run is over.
    #[test]
    fn a_request_cancelled_before_it_starts_never_runs() {
        /// Whether anything was delivered, and whether the body was gone at `run_over`.
        struct Cancelled {
            delivered: AtomicBool,
            body_gone: Arc<AtomicBool>,
            gone_at_run_over: std::sync::Mutex<Option<bool>>,
        }
        impl task_core::context::EventSink for Cancelled {
            fn broadcast(&self, _: Arc<str>) {}
        }
        impl task_core::CompletionSink for Cancelled {
            fn complete(&self, _: task_core::Outcome) {
                self.delivered.store(true, Ordering::SeqCst);
            }
            fn poll_cancelled(&self, _: &mut std::task::Context<'_>) -> std::task::Poll<()> {
                std::task::Poll::Ready(())
            }
            fn is_cancelled(&self) -> bool {
                true
            }
            fn run_over(&self) {
                let gone = self.body_gone.load(Ordering::SeqCst);
                *self.gone_at_run_over.lock().unwrap() = Some(gone);
            }
            fn run_in_scope(&self, f: &mut dyn FnMut()) {
                f();
            }
            fn spawn(&self, future: task_core::BoxFuture<'static, ()>) {
                block_on(future);
            }
        }
        let s = InlineStrategy::new();
        for blocking in [true, false] {
            let body_gone = Arc::new(AtomicBool::new(false));
            let sink = Arc::new(Cancelled {
                delivered: AtomicBool::new(false),
                body_gone: Arc::clone(&body_gone),
                gone_at_run_over: Default::default(),
            });
            let (ran, held) = (Arc::new(AtomicBool::new(false)), SetOnDrop(body_gone));
            let seen = Arc::clone(&ran);
            let body = move || {
                let _held = &held;
                seen.store(true, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            };
            let task = if blocking {
                Task::blocking("1", "late", body).into_erased()
            } else {
                Task::from_fn("1", "late", move || async move { body() }).into_erased()
            };
            s.execute(task, task_core::Completion::new(Arc::clone(&sink) as _));
            assert!(!ran.load(Ordering::SeqCst), "blocking: {blocking}");
            assert!(!sink.delivered.load(Ordering::SeqCst), "nothing delivered");
            let gone = *sink.gone_at_run_over.lock().unwrap();
            assert_eq!(gone, Some(true), "the body went before the run was over");
        }
        let stats = s.stats();
        assert_eq!((stats.succeeded, stats.failed, stats.in_flight), (0, 0, 0));
    }

    /// Sets its flag when dropped: shows a node's future was dropped.
    struct SetOnDrop(Arc<AtomicBool>);

    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_cancelled_async_run_is_dropped_unfinished_and_counted_out() {
        let s = InlineStrategy::new();
        let dropped = Arc::new(AtomicBool::new(false));
        let finished = Arc::new(AtomicBool::new(false));
        let (on_drop, done) = (Arc::clone(&dropped), Arc::clone(&finished));
        let task = Task::from_fn("1", "forever", move || async move {
            let _guard = SetOnDrop(on_drop);
            std::future::pending::<()>().await;
            done.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        });
        let mut running = task_core::run(&s, task.into_erased());
        assert!((&mut running).now_or_never().is_none());
        assert_eq!(s.stats().in_flight, 1);
        assert!(!dropped.load(Ordering::SeqCst));
        // Dropping `run`'s future cancels the request, as a coordinator's timeout does.
        drop(running);
        assert!(
            dropped.load(Ordering::SeqCst),
            "the node's future is dropped"
        );
        assert!(!finished.load(Ordering::SeqCst));
        assert_eq!(s.stats().in_flight, 0);
        let stats = s.stats();
        assert_eq!(
            (stats.succeeded, stats.failed, stats.stopped),
            (0, 0, 1),
            "a cancelled run is counted stopped"
        );
    }

    #[test]
    fn shutdown_refuses_new_tasks_and_waits_for_running_ones() {
        let s = InlineStrategy::new();
        let (release, hold) = futures::channel::oneshot::channel::<()>();
        let held = Task::from_fn("1", "held", move || async move {
            hold.await.ok();
            Ok::<_, BoxError>(1)
        });
        let mut running = task_core::run(&s, held.into_erased());
        assert!((&mut running).now_or_never().is_none());
        let s2 = s.clone();
        let shutting = thread::spawn(move || block_on(s2.shutdown(Duration::from_secs(30))));
        while s.stats().accepting {
            thread::yield_now();
        }
        thread::sleep(Duration::from_millis(20));
        assert!(
            !shutting.is_finished(),
            "shutdown waits for the running task"
        );
        let late = Task::from_fn("2", "late", || async { Ok::<_, BoxError>(2) });
        let error = block_on(task_core::run(&s, late.into_erased())).unwrap_err();
        assert!(error.is_shutdown(), "{error}");
        assert_eq!(s.stats().in_flight, 1, "a refused task is counted out");
        release.send(()).unwrap();
        assert!(block_on(running).is_ok(), "the running task finished");
        shutting.join().unwrap();
        assert!(!s.stats().accepting);
        // Calling it again waits again; it does not fail.
        block_on(s.shutdown(Duration::from_secs(1)));
    }

    #[test]
    fn the_grace_period_bounds_the_wait() {
        let stuck = InlineStrategy::new();
        let task = Task::from_fn("1", "stuck", || async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        let mut running = task_core::run(&stuck, task.into_erased());
        assert!((&mut running).now_or_never().is_none());
        let start = Instant::now();
        block_on(stuck.shutdown(Duration::from_millis(20)));
        assert!(start.elapsed() < Duration::from_secs(10));
        assert_eq!(
            stuck.stats().in_flight,
            1,
            "still running when the grace ended"
        );
        drop(running);
        assert_eq!(stuck.stats().in_flight, 0);
    }
}
