//! [`run`]: a strategy driven on its own, without a coordinator.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::completion::{Completion, CompletionSink};
use crate::context::EventSink;
use crate::erased::ErasedTask;
use crate::node::{BoxFuture, Outcome};
use crate::strategy::TaskExecutionStrategy;

/// Runs `task` on `strategy` without a coordinator, resolving to its outcome: for testing a
/// strategy, or using one on its own.
///
/// What the strategy hands to [`Completion::spawn`] is driven by the returned future itself, on
/// the task that awaits it: a strategy whose work needs tokio (a runtime to spawn on, timers,
/// I/O) needs a tokio runtime there. Dropping the future before it resolves cancels the run.
///
/// # Examples
///
/// See [`TaskExecutionStrategy`].
pub fn run<S>(strategy: &S, task: ErasedTask) -> Running
where
    S: TaskExecutionStrategy + ?Sized,
{
    let sink = Arc::new(Standalone::default());
    strategy.execute(task, Completion::new(Arc::clone(&sink) as _));
    Running { sink }
}

/// The outcome of a task run by [`run`]. Dropping it before it resolves cancels the run.
#[must_use = "the outcome arrives only when awaited"]
pub struct Running {
    sink: Arc<Standalone>,
}

impl Running {
    /// The events the node [broadcast](crate::context::broadcast) so far and not taken yet, in
    /// the order sent: for testing that a strategy carries them.
    pub fn take_events(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.sink.lock().events)
    }
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

impl Future for Running {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let sink = &self.sink;
        loop {
            // A spawned future runs here, outside the lock (it delivers into it).
            let driven = sink.lock().driven.take();
            let polled = driven.is_some();
            if let Some(mut driven) = driven
                && driven.as_mut().poll(cx).is_pending()
            {
                sink.lock().driven = Some(driven);
            }
            let mut state = sink.lock();
            if let Some(outcome) = state.outcome.take() {
                return Poll::Ready(outcome);
            }
            if !polled && state.driven.is_some() {
                // Spawned since the look above: poll it now.
                continue;
            }
            state.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let (waker, driven) = {
            let mut state = self.sink.lock();
            if state.outcome.is_some() || state.delivered {
                return;
            }
            self.sink.cancelled.store(true, Ordering::SeqCst);
            (state.cancel_waker.take(), state.driven.take())
        };
        drop(driven);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The sink of a task run by [`run`].
#[derive(Default)]
struct Standalone {
    cancelled: AtomicBool,
    state: Mutex<StandaloneState>,
}

#[derive(Default)]
struct StandaloneState {
    outcome: Option<Outcome>,
    /// Set once an outcome arrived (taken or not).
    delivered: bool,
    waker: Option<Waker>,
    cancel_waker: Option<Waker>,
    driven: Option<BoxFuture<'static, ()>>,
    /// Broadcast before the outcome, not taken yet.
    events: Vec<Arc<str>>,
}

impl Standalone {
    fn lock(&self) -> MutexGuard<'_, StandaloneState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EventSink for Standalone {
    fn broadcast(&self, event: Arc<str>) {
        let mut state = self.lock();
        if !state.delivered {
            state.events.push(event);
        }
    }
}

impl CompletionSink for Standalone {
    fn complete(&self, outcome: Outcome) {
        let waker = {
            let mut state = self.lock();
            if state.delivered {
                return;
            }
            state.delivered = true;
            state.outcome = Some(outcome);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancelled() {
            return Poll::Ready(());
        }
        self.lock().cancel_waker = Some(cx.waker().clone());
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn run_in_scope(&self, f: &mut dyn FnMut()) {
        f();
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        let waker = {
            let mut state = self.lock();
            if self.is_cancelled() {
                return;
            }
            state.driven = Some(future);
            state.waker.take()
        };
        // The task awaiting `Running` polls it.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use std::sync::atomic::{AtomicBool, Ordering};

    use std::panic::AssertUnwindSafe;

    use super::*;
    use crate::Value;

    /// Records what it is told, and runs scopes with a marker set.
    #[derive(Default)]
    struct Sink {
        outcomes: Mutex<Vec<Outcome>>,
        events: Mutex<Vec<Arc<str>>>,
        cancelled: AtomicBool,
        in_scope: AtomicBool,
    }

    impl EventSink for Sink {
        fn broadcast(&self, event: Arc<str>) {
            self.events.lock().unwrap().push(event);
        }
    }

    impl CompletionSink for Sink {
        fn complete(&self, outcome: Outcome) {
            self.outcomes.lock().unwrap().push(outcome);
        }
        fn poll_cancelled(&self, _cx: &mut Context<'_>) -> Poll<()> {
            if self.cancelled.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled.load(Ordering::SeqCst)
        }
        fn run_in_scope(&self, f: &mut dyn FnMut()) {
            self.in_scope.store(true, Ordering::SeqCst);
            f();
            self.in_scope.store(false, Ordering::SeqCst);
        }
        fn spawn(&self, future: BoxFuture<'static, ()>) {
            futures::executor::block_on(future);
        }
    }

    #[test]
    fn delivering_consumes_it_and_reaches_the_sink_once() {
        let sink = Arc::new(Sink::default());
        let completion = Completion::new(sink.clone());
        assert!(format!("{completion:?}").contains("delivered: false"));
        completion.complete(Ok(Value::new(3_u8)));
        let outcomes = sink.outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 1, "dropping after delivery adds nothing");
        assert_eq!(outcomes[0].as_ref().unwrap().downcast_ref::<u8>(), Some(&3));
    }

    #[test]
    fn dropping_it_undelivered_delivers_a_strategy_failure() {
        let sink = Arc::new(Sink::default());
        drop(Completion::new(sink.clone()));
        let outcomes = sink.outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 1);
        let error = outcomes[0].as_ref().unwrap_err();
        assert!(error.is_strategy_error(), "{error}");
    }

    #[test]
    fn in_scope_runs_the_closure_once_inside_the_sinks_scope() {
        let sink = Arc::new(Sink::default());
        let completion = Completion::new(sink.clone());
        let seen = completion.in_scope(|| sink.in_scope.load(Ordering::SeqCst));
        assert!(seen, "run inside the scope");
        assert!(!sink.in_scope.load(Ordering::SeqCst));
        completion.complete(Ok(Value::new(())));
    }

    #[test]
    fn broadcast_reaches_the_sink_of_the_scope_it_runs_in_and_nowhere_else() {
        use crate::context::{self, broadcast};
        let (outer, inner) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
        let (first, second) = (
            Completion::new(outer.clone()),
            Completion::new(inner.clone()),
        );
        assert!(broadcast("before").is_err(), "no node runs here yet");
        first.in_scope(|| {
            broadcast("a").unwrap();
            // A pool thread may run another node inside the first one's scope.
            second.in_scope(|| broadcast("b").unwrap());
            broadcast("c").unwrap();
        });
        let panicked = std::panic::catch_unwind(AssertUnwindSafe(|| {
            second.in_scope(|| -> () { panic!("node code panics") })
        }));
        assert!(panicked.is_err());
        assert!(
            broadcast("after").is_err(),
            "the scope ends even on a panic"
        );
        // Kept, and used outside any scope: how a strategy forwards events from elsewhere.
        let (forward, current) = (
            first.events().unwrap(),
            first.in_scope(context::current_events),
        );
        assert!(context::current_events().is_none());
        forward.send("forwarded");
        current.unwrap().send("current");
        let events = |sink: &Sink| sink.events.lock().unwrap().clone();
        assert_eq!(
            events(&outer),
            ["a", "c", "forwarded", "current"].map(Arc::from)
        );
        assert_eq!(events(&inner), [Arc::from("b")]);
        first.complete(Ok(Value::new(())));
        second.complete(Ok(Value::new(())));
    }

    /// A run told to stop whose request goes on (a coordinator's attempt past its own timeout,
    /// followed by another): its future is dropped before the completion tells the sink the run
    /// is over and delivers the failure, so nothing of the node (its `Drop`) runs beside what the
    /// sink starts next, nor past the place under a limit that the run's end frees.
    #[test]
    fn a_spawned_run_told_to_stop_drops_its_future_before_it_reports() {
        struct StopOnly {
            node_dropped: Arc<AtomicBool>,
            /// Whether the node's future was gone at `run_over`, and at `complete`.
            seen: Mutex<Vec<(&'static str, bool)>>,
        }
        impl EventSink for StopOnly {
            fn broadcast(&self, _event: Arc<str>) {}
        }
        impl CompletionSink for StopOnly {
            fn complete(&self, _outcome: Outcome) {
                let gone = self.node_dropped.load(Ordering::SeqCst);
                self.seen.lock().unwrap().push(("complete", gone));
            }
            fn poll_cancelled(&self, _cx: &mut Context<'_>) -> Poll<()> {
                Poll::Ready(())
            }
            fn is_cancelled(&self) -> bool {
                true
            }
            fn has_outcome(&self) -> bool {
                false
            }
            fn run_over(&self) {
                let gone = self.node_dropped.load(Ordering::SeqCst);
                self.seen.lock().unwrap().push(("run_over", gone));
            }
            fn run_in_scope(&self, f: &mut dyn FnMut()) {
                f();
            }
            fn spawn(&self, future: BoxFuture<'static, ()>) {
                futures::executor::block_on(future);
            }
        }
        struct Node(Arc<AtomicBool>);
        impl Drop for Node {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let node_dropped = Arc::new(AtomicBool::new(false));
        let sink = Arc::new(StopOnly {
            node_dropped: Arc::clone(&node_dropped),
            seen: Mutex::default(),
        });
        let node = Node(node_dropped);
        Completion::new(sink.clone()).spawn(async move {
            let _node = node;
            std::future::pending::<Outcome>().await
        });
        let seen = sink.seen.lock().unwrap().clone();
        assert_eq!(seen, [("run_over", true), ("complete", true)]);
    }

    #[test]
    fn an_owning_run_is_driven_past_its_requests_end_and_a_panic_in_it_drops_its_completion() {
        // Cancelled already: a run that `spawn` drives would be dropped unpolled.
        let sink = Arc::new(Sink::default());
        sink.cancelled.store(true, Ordering::SeqCst);
        let ran = Arc::new(AtomicBool::new(false));
        let seen = ran.clone();
        Completion::new(sink.clone()).spawn_owning(|completion| async move {
            assert!(completion.is_cancelled());
            seen.store(true, Ordering::SeqCst);
        });
        assert!(ran.load(Ordering::SeqCst), "the run saw its request's end");
        assert!(sink.outcomes.lock().unwrap().is_empty(), "it was answered");
        // A run that panics reaches neither the sink's driver nor its caller.
        let sink = Arc::new(Sink::default());
        Completion::new(sink.clone()).spawn_owning(|completion| async move {
            let _kept = completion;
            panic!("the strategy's run panics")
        });
        let outcomes = sink.outcomes.lock().unwrap();
        assert!(outcomes[0].as_ref().unwrap_err().is_strategy_error());
    }

    #[test]
    fn cancellation_is_read_from_the_sink() {
        let sink = Arc::new(Sink::default());
        let completion = Completion::new(sink.clone());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!completion.is_cancelled());
        assert!(completion.poll_cancelled(&mut cx).is_pending());
        sink.cancelled.store(true, Ordering::SeqCst);
        assert!(completion.is_cancelled());
        futures::executor::block_on(completion.cancelled());
    }

    /// Runs each task the way it is told to: in place, or as a spawned future.
    struct Strategy {
        spawn: bool,
        started: Arc<AtomicBool>,
    }

    impl TaskExecutionStrategy for Strategy {
        fn execute(&self, task: ErasedTask, completion: Completion) {
            self.started.store(true, Ordering::SeqCst);
            if self.spawn {
                completion.spawn(task.run_inline());
            } else {
                let outcome = futures::executor::block_on(task.run_inline());
                completion.complete(outcome);
            }
        }
        fn shutdown(&self, _grace: std::time::Duration) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn strategy(spawn: bool) -> Strategy {
        Strategy {
            spawn,
            started: Arc::default(),
        }
    }

    #[test]
    fn run_resolves_to_what_the_strategy_delivers_in_place_or_spawned() {
        for spawn in [false, true] {
            let task = crate::Task::from_fn("1", "add", || async { Ok::<_, crate::BoxError>(4) });
            let outcome = futures::executor::block_on(run(&strategy(spawn), task.into_erased()));
            assert_eq!(
                outcome.unwrap().downcast_ref::<i32>(),
                Some(&4),
                "spawn: {spawn}"
            );
        }
    }

    #[test]
    fn a_spawned_future_that_panics_delivers_a_panic_failure() {
        let task = crate::Task::from_fn("1", "boom", || async {
            if true {
                panic!("the node broke");
            }
            Ok::<_, crate::BoxError>(())
        });
        let outcome = futures::executor::block_on(run(&strategy(true), task.into_erased()));
        let error = outcome.unwrap_err();
        assert!(error.is_panic(), "{error}");
        assert!(error.message().contains("the node broke"), "{error}");
    }

    #[test]
    fn dropping_the_run_cancels_a_spawned_future_unfinished() {
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let task = crate::Task::from_fn("1", "never", move || async move {
            std::future::pending::<()>().await;
            flag.store(true, Ordering::SeqCst);
            Ok::<_, crate::BoxError>(())
        });
        let s = strategy(true);
        let mut running = run(&s, task.into_erased());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut running).poll(&mut cx).is_pending());
        let sink = Arc::clone(&running.sink);
        drop(running);
        assert!(sink.is_cancelled());
        assert!(
            sink.lock().driven.is_none(),
            "the spawned future is dropped"
        );
        assert!(!finished.load(Ordering::SeqCst));
    }
}
