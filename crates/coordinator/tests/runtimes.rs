//! The coordinator inside the runtimes applications build: paused clocks, runtimes of one
//! thread, several runtimes in one process, runtimes that go away while requests are open.

mod support;

use std::time::Duration;

use coordinator::{BoxError, ExecutionMode, JobResult, SubmitOptions, Task};
use support::started;

/// A node that sleeps `secs` on the tokio clock, then returns 7.
fn sleeper(id: &str, secs: u64) -> Task<u8> {
    Task::from_fn(id, "sleeper", move || async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        Ok::<_, BoxError>(7_u8)
    })
}

#[tokio::test(start_paused = true)]
async fn a_timeout_counts_on_the_paused_clock_after_it_moved_on() {
    let (publisher, coordinator) = started();
    // The paused clock moves a minute ahead of the wall clock at once.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let options = SubmitOptions::new().timeout(Duration::from_secs(5));
    let answer = coordinator
        .submit_with(sleeper("short", 1), ExecutionMode::ASYNC, options.clone())
        .await;
    assert_eq!(answer.unwrap(), 7, "a 1 s node well within its 5 s timeout");
    let late = coordinator
        .submit_with(sleeper("long", 10), ExecutionMode::ASYNC, options)
        .await;
    assert!(late.unwrap_err().is_timeout());
    assert_eq!(
        coordinator.job("long").unwrap().result(),
        Some(JobResult::TimedOut)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_grace_counts_on_the_paused_clock_after_it_moved_on() {
    let (publisher, coordinator) = started();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let running = coordinator
        .spawn(
            sleeper("running", 1),
            ExecutionMode::ASYNC,
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    coordinator
        .shutdown_with_grace(Duration::from_secs(5))
        .await;
    assert_eq!(running.await.unwrap(), 7, "it ends within the grace");
    assert_eq!(
        coordinator.job("running").unwrap().result(),
        Some(JobResult::Success)
    );
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_awaited_inside_a_node_waits_for_that_node_until_its_deadline() {
    let (publisher, coordinator) = started();
    let c = coordinator.clone();
    let stopper = Task::from_fn("stopper", "stopper", move || async move {
        c.shutdown_with_grace(Duration::from_millis(200)).await;
        Ok::<_, BoxError>(1_u8)
    });
    let began = std::time::Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        coordinator.submit(stopper, ExecutionMode::ASYNC),
    )
    .await
    .expect("the grace is a deadline");
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert!(
        answer.unwrap_err().is_cancelled(),
        "cancelled at its own deadline"
    );

    // Spawned from the node instead, shutdown waits for the node, which ends on its own.
    let (publisher2, coordinator) = started();
    let c = coordinator.clone();
    let (tx, shut) = tokio::sync::oneshot::channel();
    let stopper = Task::from_fn("stopper", "stopper", move || async move {
        let shutting = tokio::spawn(async move { c.shutdown_with_grace(Duration::MAX).await });
        let _ = tx.send(shutting);
        Ok::<_, BoxError>(1_u8)
    });
    assert_eq!(
        coordinator
            .submit(stopper, ExecutionMode::ASYNC)
            .await
            .unwrap(),
        1
    );
    tokio::time::timeout(Duration::from_secs(20), shut.await.unwrap())
        .await
        .expect("shutdown returns once the node has ended")
        .unwrap();
    assert!(!coordinator.is_accepting());
    publisher.shutdown().await;
    publisher2.shutdown().await;
}

/// Once the multi-thread runtime the coordinator was started on has shut down, a threaded node
/// (on a pool thread, which enters the runtime its request was submitted on) still submits a
/// child there, and the child runs.
#[test]
fn a_threaded_nodes_child_runs_on_its_parents_runtime_after_the_start_runtime_shut_down() {
    let start = tokio::runtime::Runtime::new().unwrap();
    let (publisher, coordinator) = start.block_on(async {
        support::started_threaded(coordinator::ThreadedExecutionStrategy::builder())
    });
    drop(start);
    let other = tokio::runtime::Runtime::new().unwrap();
    let inside = coordinator.clone();
    let parent = Task::blocking("parent", "parent", move || {
        let child = Task::from_fn("child", "child", || async { Ok::<_, BoxError>(1_u8) });
        Ok::<_, BoxError>(futures::executor::block_on(
            inside.submit(child, ExecutionMode::ASYNC),
        )?)
    });
    let answer = other.block_on(coordinator.submit(parent, ExecutionMode::THREADED));
    assert_eq!(answer.unwrap(), 1);
    other.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}
