//! The inline strategy registered with a coordinator under its own mode name. (The strategy on
//! its own, driven by `task_core::run`, is tested in `src/lib.rs`.)

use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, JobResult, RequestCompletionPublisher, SubmitOptions, Task,
};
use exec_inline::InlineStrategy;

fn started() -> (RequestCompletionPublisher, Coordinator) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .strategy(InlineStrategy::MODE, InlineStrategy::new())
        .build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator)
}

#[tokio::test]
async fn it_plugs_into_a_coordinator_under_its_own_mode_with_timeouts() {
    let (publisher, coordinator) = started();
    let task = Task::from_fn("a", "add", || async { Ok::<_, BoxError>(40 + 2) });
    assert_eq!(coordinator.submit(task, "inline").await.unwrap(), 42);
    // The coordinator's timeout applies to any strategy: the spawned future is dropped.
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
    // The spawned future is dropped at its next wake-up, and counted out then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while coordinator.system_detail().modes["inline"].in_flight > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a dropped future is counted out"
        );
        tokio::task::yield_now().await;
    }
    let detail = coordinator.system_detail();
    assert_eq!(detail.requests["inline"].succeeded, 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_of_body_run_in_their_requests_scope() {
    let (publisher, coordinator) = started();
    let blocking = Task::blocking("c", "where", || {
        Ok::<_, BoxError>(coordinator::current_node())
    });
    let node = blocking.node_id().clone();
    assert_eq!(
        coordinator.submit(blocking, "inline").await.unwrap(),
        Some(node),
        "a blocking body runs in place inside its request's scope"
    );
    let spawned = Task::from_fn("d", "where", || async {
        tokio::task::yield_now().await;
        Ok::<_, BoxError>(coordinator::current_node())
    });
    let node = spawned.node_id().clone();
    assert_eq!(
        coordinator.submit(spawned, "inline").await.unwrap(),
        Some(node),
        "every poll of an async body runs inside its request's scope"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
