//! The inline strategy on its own and registered with a coordinator under its own mode name.

use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, JobResult, RequestCompletionPublisher, SubmitOptions, Task,
};
use exec_inline::InlineStrategy;
use task_core::TaskExecutionStrategy;

#[tokio::test]
async fn values_errors_and_panics_become_outcomes() {
    let s = InlineStrategy::new();
    let ok = Task::from_fn("1", "ok", || async { Ok::<_, BoxError>(5) }).into_erased();
    assert_eq!(s.execute(ok).await.unwrap().downcast_ref::<i32>(), Some(&5));
    let blocking = Task::blocking("2", "b", || Ok::<_, BoxError>(6)).into_erased();
    assert_eq!(
        s.execute(blocking).await.unwrap().downcast_ref::<i32>(),
        Some(&6)
    );
    let failing: Task<()> = Task::from_fn("3", "f", || async { Err("no") });
    assert!(
        s.execute(failing.into_erased())
            .await
            .unwrap_err()
            .is_node_error()
    );
    let panicking = Task::blocking("4", "p", || -> Result<(), BoxError> { panic!("boom") });
    let error = s.execute(panicking.into_erased()).await.unwrap_err();
    assert!(
        error.is_panic() && error.message().contains("boom"),
        "{error}"
    );
    let stats = s.stats();
    assert_eq!((stats.succeeded, stats.failed, stats.in_flight), (2, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_tasks_and_waits_for_running_ones() {
    let s = InlineStrategy::new();
    let (release, hold) = tokio::sync::oneshot::channel::<()>();
    let (started, running_now) = tokio::sync::oneshot::channel::<()>();
    let running = Task::from_fn("1", "held", move || async move {
        let _ = started.send(());
        hold.await.ok();
        Ok::<_, BoxError>(1)
    });
    let s2 = s.clone();
    let run = tokio::spawn(async move { s2.execute(running.into_erased()).await });
    // Running, not merely counted: a task counted just before shutdown may still be refused.
    running_now.await.unwrap();
    let s3 = s.clone();
    let shutting = tokio::spawn(async move { s3.shutdown(Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !shutting.is_finished(),
        "shutdown waits for the running task"
    );
    let late = Task::from_fn("2", "late", || async { Ok::<_, BoxError>(2) });
    assert!(
        s.execute(late.into_erased())
            .await
            .unwrap_err()
            .is_shutdown()
    );
    release.send(()).unwrap();
    assert!(run.await.unwrap().is_ok());
    shutting.await.unwrap();
    assert!(!s.stats().accepting);
    // The grace period bounds the wait.
    let stuck = InlineStrategy::new();
    let s4 = stuck.clone();
    let (started, running_now) = tokio::sync::oneshot::channel::<()>();
    let _forever = tokio::spawn(async move {
        let t = Task::from_fn("3", "stuck", move || async move {
            let _ = started.send(());
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        s4.execute(t.into_erased()).await
    });
    running_now.await.unwrap();
    stuck.shutdown(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn it_plugs_into_a_coordinator_under_its_own_mode_with_timeouts() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .strategy(InlineStrategy::MODE, InlineStrategy::new())
        .build();
    coordinator.start(&publisher).unwrap();
    let task = Task::from_fn("a", "add", || async { Ok::<_, BoxError>(40 + 2) });
    assert_eq!(coordinator.submit(task, "inline").await.unwrap(), 42);
    // The coordinator's timeout applies to any strategy: the inline future is dropped.
    let slow = Task::from_fn("b", "slow", || async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(())
    });
    let error = coordinator
        .submit_with(
            slow,
            "inline",
            SubmitOptions::new().timeout(Duration::from_millis(20)),
        )
        .await
        .unwrap_err();
    assert!(error.is_timeout());
    assert_eq!(
        coordinator.job("b").unwrap().result(),
        Some(JobResult::TimedOut)
    );
    let detail = coordinator.system_detail();
    assert_eq!(
        detail.modes["inline"].in_flight, 0,
        "a dropped future is counted out"
    );
    assert_eq!(detail.requests["inline"].succeeded, 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
