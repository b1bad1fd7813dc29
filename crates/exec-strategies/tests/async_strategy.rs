//! The async strategy: outcomes, panics, blocking nodes, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use exec_strategies::AsyncExecutionStrategy;
use task_core::{BoxError, StrategyStats, Task, TaskExecutionStrategy};
use tokio::sync::oneshot;

#[tokio::test]
async fn values_and_errors_become_outcomes() {
    let s = AsyncExecutionStrategy::new();
    let ok = Task::from_fn("1", "ok", || async { Ok::<_, BoxError>("fine") });
    let value = s.execute(ok.into_erased()).await.unwrap();
    assert_eq!(value.downcast_ref::<&str>(), Some(&"fine"));
    let bad: Task<()> = Task::from_fn("2", "bad", || async { Err("no luck") });
    let err = s.execute(bad.into_erased()).await.unwrap_err();
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
    let err = s.execute(boom.into_erased()).await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.message(), "node panicked: kaboom 7");
    let blocking_boom: Task<()> = Task::blocking("2", "boom", || -> Result<(), BoxError> {
        panic!("blocking kaboom")
    });
    let err = s.execute(blocking_boom.into_erased()).await.unwrap_err();
    assert!(err.is_panic());
    assert!(err.message().contains("blocking kaboom"));
    // The strategy and the runtime still run tasks.
    let after = Task::from_fn("3", "after", || async { Ok::<_, BoxError>(1) });
    assert!(s.execute(after.into_erased()).await.is_ok());
    assert_eq!(s.stats().failed, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_nodes_run_off_the_runtime_thread() {
    let s = AsyncExecutionStrategy::new();
    let caller = std::thread::current().id();
    let task = Task::blocking("1", "where", move || {
        Ok::<_, BoxError>(std::thread::current().id() != caller)
    });
    let value = s.execute(task.into_erased()).await.unwrap();
    assert_eq!(value.downcast_ref::<bool>(), Some(&true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_tasks_and_waits_for_running_ones() {
    let s = AsyncExecutionStrategy::new();
    let (release, released) = oneshot::channel::<()>();
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let running = Task::from_fn("1", "slow", move || async move {
        released.await.ok();
        flag.store(true, Ordering::SeqCst);
        Ok::<_, BoxError>(())
    });
    let s2 = s.clone();
    let in_flight = tokio::spawn(async move { s2.execute(running.into_erased()).await });
    while s.stats().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    let s3 = s.clone();
    let shutting = tokio::spawn(async move { s3.shutdown(Duration::from_secs(30)).await });
    while s.stats().accepting {
        tokio::task::yield_now().await;
    }
    let late = Task::from_fn("2", "late", || async { Ok::<_, BoxError>(()) });
    assert!(
        s.execute(late.into_erased())
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
    let stuck = Task::from_fn("1", "stuck", move || async move {
        never.await.ok();
        Ok::<_, BoxError>(())
    });
    let s2 = s.clone();
    let _task = tokio::spawn(async move { s2.execute(stuck.into_erased()).await });
    while s.stats().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    s.shutdown(Duration::from_millis(50)).await;
    assert_eq!(s.stats().in_flight, 1);
}
