//! The async strategy: outcomes, panics, blocking nodes, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use exec_strategies::AsyncExecutionStrategy;
use task_core::context::EventSink;
use task_core::{
    BoxError, Completion, CompletionSink, Outcome, StrategyStats, Task, TaskExecutionStrategy,
};
use tokio::sync::oneshot;

mod support;
use support::Probe;

#[tokio::test]
async fn values_and_errors_become_outcomes() {
    let s = AsyncExecutionStrategy::new();
    let ok = Task::from_fn("1", "ok", || async { Ok::<_, BoxError>("fine") });
    let value = task_core::run(&s, ok.into_erased()).await.unwrap();
    assert_eq!(value.downcast_ref::<&str>(), Some(&"fine"));
    let bad: Task<()> = Task::from_fn("2", "bad", || async { Err("no luck") });
    let err = task_core::run(&s, bad.into_erased()).await.unwrap_err();
    assert!(err.is_node_error());
    assert_eq!(err.message(), "no luck");
    assert_eq!(s.stats(), StrategyStats::new(0, 1, 1, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_failure_and_everything_keeps_working() {
    let s = AsyncExecutionStrategy::new();
    let boom: Task<()> = Task::from_fn("1", "boom", || async {
        panic!("kaboom {}", 7);
        #[allow(unreachable_code)]
        Ok::<_, BoxError>(())
    });
    let err = task_core::run(&s, boom.into_erased()).await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.message(), "node panicked: kaboom 7");
    let blocking_boom: Task<()> = Task::blocking("2", "boom", || -> Result<(), BoxError> {
        panic!("blocking kaboom")
    });
    let err = task_core::run(&s, blocking_boom.into_erased())
        .await
        .unwrap_err();
    assert!(err.is_panic());
    assert!(err.message().contains("blocking kaboom"));
    // The strategy and the runtime still run tasks.
    let after = Task::from_fn("3", "after", || async { Ok::<_, BoxError>(1) });
    assert!(task_core::run(&s, after.into_erased()).await.is_ok());
    assert_eq!(s.stats().failed, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_nodes_run_off_the_runtime_thread() {
    let s = AsyncExecutionStrategy::new();
    let caller = std::thread::current().id();
    let task = Task::blocking("1", "where", move || {
        Ok::<_, BoxError>(std::thread::current().id() != caller)
    });
    let value = task_core::run(&s, task.into_erased()).await.unwrap();
    assert_eq!(value.downcast_ref::<bool>(), Some(&true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_tasks_and_waits_for_running_ones() {
    let s = AsyncExecutionStrategy::new();
    let (release, released) = oneshot::channel::<()>();
    let (started, running_now) = oneshot::channel::<()>();
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let running = Task::from_fn("1", "slow", move || async move {
        let _ = started.send(());
        released.await.ok();
        flag.store(true, Ordering::SeqCst);
        Ok::<_, BoxError>(())
    });
    let s2 = s.clone();
    let in_flight = tokio::spawn(async move { task_core::run(&s2, running.into_erased()).await });
    // Running, not merely counted: a task counted just before shutdown may still be refused.
    running_now.await.unwrap();
    let s3 = s.clone();
    let shutting = tokio::spawn(async move { s3.shutdown(Duration::from_secs(30)).await });
    while s.stats().accepting {
        tokio::task::yield_now().await;
    }
    let late = Task::from_fn("2", "late", || async { Ok::<_, BoxError>(()) });
    assert!(
        task_core::run(&s, late.into_erased())
            .await
            .unwrap_err()
            .is_shutdown()
    );
    assert!(
        !shutting.is_finished(),
        "shutdown must wait for the running task"
    );
    release.send(()).unwrap();
    shutting.await.unwrap();
    assert!(finished.load(Ordering::SeqCst));
    assert!(in_flight.await.unwrap().is_ok());
    // Idempotent.
    s.shutdown(Duration::from_secs(1)).await;
    assert_eq!(s.stats(), StrategyStats::new(0, 1, 0, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_after_its_grace_period() {
    let s = AsyncExecutionStrategy::new();
    let (_keep, never) = oneshot::channel::<()>();
    let (started, running_now) = oneshot::channel::<()>();
    let stuck = Task::from_fn("1", "stuck", move || async move {
        let _ = started.send(());
        never.await.ok();
        Ok::<_, BoxError>(())
    });
    let s2 = s.clone();
    let _task = tokio::spawn(async move { task_core::run(&s2, stuck.into_erased()).await });
    // Running, not merely counted: a task counted just before shutdown may still be refused.
    running_now.await.unwrap();
    s.shutdown(Duration::from_millis(50)).await;
    assert_eq!(s.stats().in_flight, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_counts_its_grace_on_the_paused_clock() {
    // The paused clock moves a minute ahead of the wall clock at once.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let s = AsyncExecutionStrategy::new();
    let (started, running_now) = oneshot::channel::<()>();
    let short = Task::from_fn("1", "short", move || async move {
        let _ = started.send(());
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    });
    let s2 = s.clone();
    let run = tokio::spawn(async move { task_core::run(&s2, short.into_erased()).await });
    running_now.await.unwrap();
    // A grace of 5 s on that clock: the 1 s node ends within it.
    s.shutdown(Duration::from_secs(5)).await;
    assert_eq!(s.stats().in_flight, 0, "shutdown waited for the node");
    assert!(run.await.unwrap().is_ok());
}

#[tokio::test]
async fn outcomes_are_counted_and_tasks_after_shutdown_refused() {
    let strategy = AsyncExecutionStrategy::new();
    let ok = Task::from_fn("1", "ok", || async { Ok::<_, BoxError>(5_u32) }).into_erased();
    let bad = Task::from_fn("2", "bad", || async { Err::<u32, _>("no") }).into_erased();
    let panics = Task::from_fn("3", "panics", || async {
        panic!("boom");
        #[allow(unreachable_code)]
        Ok::<u32, BoxError>(0)
    })
    .into_erased();
    let mut outcomes = Vec::new();
    for task in [ok, bad, panics] {
        let (sink, rx) = Probe::collect();
        strategy.execute(task, Completion::new(sink));
        outcomes.push(rx.await.unwrap());
    }
    assert_eq!(
        outcomes[0].as_ref().unwrap().downcast_ref::<u32>(),
        Some(&5)
    );
    assert!(outcomes[1].as_ref().unwrap_err().is_node_error());
    assert!(outcomes[2].as_ref().unwrap_err().is_panic());
    let stats = strategy.stats();
    assert_eq!((stats.succeeded, stats.failed, stats.in_flight), (1, 2, 0));

    strategy.shutdown(Duration::from_secs(1)).await;
    let (sink, rx) = Probe::collect();
    let late = Task::from_fn("4", "late", || async { Ok::<_, BoxError>(0_u32) }).into_erased();
    strategy.execute(late, Completion::new(sink));
    assert!(rx.await.unwrap().unwrap_err().is_shutdown());
}

#[tokio::test]
async fn a_blocking_node_runs_in_its_requests_scope() {
    /// Records whether `f` ran inside the sink's scope.
    struct Scoped {
        inner: Arc<Probe>,
    }
    thread_local! {
        static IN_SCOPE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    impl EventSink for Scoped {
        fn broadcast(&self, event: Arc<str>) {
            self.inner.broadcast(event);
        }
    }
    impl CompletionSink for Scoped {
        fn complete(&self, outcome: Outcome) {
            self.inner.complete(outcome);
        }
        fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
            self.inner.poll_cancelled(cx)
        }
        fn is_cancelled(&self) -> bool {
            self.inner.is_cancelled()
        }
        fn run_in_scope(&self, f: &mut dyn FnMut()) {
            IN_SCOPE.with(|c| c.set(true));
            f();
            IN_SCOPE.with(|c| c.set(false));
        }
        fn spawn(&self, future: task_core::BoxFuture<'static, ()>) {
            tokio::spawn(future);
        }
    }
    let strategy = AsyncExecutionStrategy::new();
    let (inner, rx) = Probe::collect();
    let task = Task::blocking("b", "scoped", || {
        task_core::context::broadcast("from the blocking node")?;
        Ok::<_, BoxError>(IN_SCOPE.with(|c| c.get()))
    });
    let collected = Arc::clone(&inner);
    strategy.execute(
        task.into_erased(),
        Completion::new(Arc::new(Scoped { inner })),
    );
    let in_scope = rx.await.unwrap().unwrap();
    assert_eq!(in_scope.downcast_ref::<bool>(), Some(&true));
    let events = collected.events.lock().unwrap().clone();
    assert_eq!(events, [Arc::from("from the blocking node")]);
}

#[tokio::test]
async fn a_cancelled_run_drops_the_node_and_shutdown_does_not_wait_for_it() {
    let strategy = AsyncExecutionStrategy::new();
    let dropped = Arc::new(AtomicBool::new(false));
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let flag = Flag(dropped.clone());
    let sleeper = Task::from_fn("s", "sleeper", move || async move {
        let _flag = flag;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(())
    })
    .into_erased();
    let (sink, mut rx) = Probe::collect();
    strategy.execute(sleeper, Completion::new(sink.clone()));
    tokio::task::yield_now().await;
    assert!(!dropped.load(Ordering::SeqCst));
    sink.cancel();
    // The run stops: the node is dropped, and nothing is delivered (a cancelled request has its
    // outcome already).
    while !dropped.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    while strategy.stats().in_flight > 0 {
        tokio::task::yield_now().await;
    }
    assert!(
        rx.try_recv().is_err(),
        "nothing delivered after cancellation"
    );
    strategy.shutdown(Duration::from_secs(1)).await;
    let stats = strategy.stats();
    assert_eq!((stats.in_flight, stats.failed, stats.stopped), (0, 0, 1));
}

#[test]
fn a_run_dropped_with_its_runtime_is_counted_stopped() {
    let strategy = AsyncExecutionStrategy::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (sink, _outcome) = Probe::collect();
    rt.block_on(async {
        let sleeper = Task::from_fn("s", "sleeper", || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        });
        strategy.execute(sleeper.into_erased(), Completion::new(sink.clone()));
        tokio::task::yield_now().await;
    });
    // Its run goes with the runtime, unfinished.
    drop(rt);
    let stats = strategy.stats();
    let counted = (
        stats.in_flight,
        stats.succeeded,
        stats.failed,
        stats.stopped,
    );
    assert_eq!(counted, (0, 0, 0, 1));
}

/// A node dropped because its request was cancelled is counted out (stopped, no longer in
/// flight) before its run is over: whatever hears of that (a request waiting for the place it
/// frees) reads current counts.
#[tokio::test]
async fn a_cancelled_node_is_counted_out_before_its_run_is_over() {
    let strategy = AsyncExecutionStrategy::new();
    let (probe, _outcome) = Probe::of(&strategy);
    let (started, running) = oneshot::channel();
    let node = Task::from_fn("1", "waits", move || async move {
        let _ = started.send(());
        std::future::pending::<Result<u32, BoxError>>().await
    });
    strategy.execute(node.into_erased(), probe.completion());
    running.await.unwrap();
    probe.cancel();
    let seen = probe.at_run_over().await;
    assert_eq!((seen.in_flight, seen.stopped), (0, 1), "{seen:?}");
}

/// So is a blocking node its runtime, shut down, drops without running it.
#[test]
fn a_blocking_node_dropped_unrun_is_counted_out_before_its_run_is_over() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let handle = runtime.handle().clone();
    drop(runtime);
    let _entered = handle.enter();
    let strategy = AsyncExecutionStrategy::new();
    let (probe, _outcome) = Probe::of(&strategy);
    let node = Task::blocking("1", "never runs", || Ok::<_, BoxError>(1_u32));
    strategy.execute(node.into_erased(), probe.completion());
    let seen = probe.noted();
    let seen = seen.expect("a runtime shut down drops a blocking task at once");
    assert_eq!((seen.in_flight, seen.stopped), (0, 1), "{seen:?}");
}

/// A task the strategy takes but cannot run (no runtime is running here) is counted out, as
/// failed, before its caller hears.
#[test]
fn a_task_taken_outside_a_runtime_is_counted_out_before_its_caller_hears() {
    let strategy = AsyncExecutionStrategy::new();
    let (probe, _outcome) = Probe::of(&strategy);
    let node = Task::from_fn("1", "nowhere", || async { Ok::<_, BoxError>(1_u32) });
    strategy.execute(node.into_erased(), probe.completion());
    let seen = probe.noted().expect("the caller hears at once");
    assert_eq!((seen.in_flight, seen.failed), (0, 1), "{seen:?}");
}
