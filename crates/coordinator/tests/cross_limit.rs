//! A threaded node holding the pool's one place waits for a request of another coordinator,
//! which waits for a threaded grandchild back in the first coordinator's pool.

#![cfg(feature = "threaded")]

mod support;

use std::time::Duration;

use coordinator::{BoxError, ExecutionMode, Task, ThreadedExecutionStrategy, block_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_through_another_coordinator_does_not_wait_for_its_own_place() {
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(4)
        .max_in_flight(1);
    let builder = coordinator::Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded.build().unwrap());
    let (px, x) = support::started_from(builder);
    let (py, y) = support::started();
    let (x2, y2) = (x.clone(), y.clone());
    let root = Task::blocking("root", "root", move || {
        let x3 = x2.clone();
        let middle = Task::from_fn("middle", "middle", move || async move {
            let leaf = Task::blocking("leaf", "leaf", || Ok::<_, BoxError>(40));
            Ok::<_, BoxError>(x3.submit(leaf, ExecutionMode::THREADED).await? + 1)
        });
        Ok::<_, BoxError>(block_on(y2.submit(middle, ExecutionMode::ASYNC))? + 1)
    });
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        x.submit(root, ExecutionMode::THREADED),
    )
    .await;
    let ok = matches!(answer, Ok(Ok(42)));
    tokio::time::timeout(Duration::from_secs(30), async {
        y.shutdown_with_grace(Duration::from_millis(100)).await;
        x.shutdown_with_grace(Duration::from_millis(100)).await;
    })
    .await
    .unwrap();
    px.shutdown().await;
    py.shutdown().await;
    assert!(ok, "deadlock: {answer:?}");
}
