//! The links from a request to the request that adopted it never form a cycle.

#![cfg(feature = "threaded")]

mod support;

use std::time::Duration;

use coordinator::{BoxError, ExecutionMode, NodeId, Task, ThreadedExecutionStrategy};

/// A task that names its own node as its parent (user-chosen ids) is not adopted by its own
/// request: the walk up the adopters (threaded max_in_flight) ends, and the request is freed.
#[test]
fn a_task_naming_its_own_node_as_parent_is_not_its_own_adopter() {
    let (tx, rx) = std::sync::mpsc::channel();
    // On a thread of its own: a walk that never ends spins there, not in the test's thread.
    std::thread::spawn(move || {
        let runtime = support::runtime(2);
        runtime.block_on(async move {
            let threaded = ThreadedExecutionStrategy::builder()
                .threads(2)
                .max_in_flight(1);
            let (publisher, c) = support::started_threaded(threaded);
            let x = NodeId::new("x");
            let task = Task::blocking("self-parent", "self-parent", || Ok::<_, BoxError>(1))
                .with_node_id(x.clone())
                .with_parent(x);
            let answer = c.submit(task, ExecutionMode::THREADED).await;
            c.shutdown_with_grace(Duration::from_millis(100)).await;
            publisher.shutdown().await;
            let _ = tx.send(answer.map_err(|e| e.to_string()));
        });
    });
    let answer = rx.recv_timeout(Duration::from_secs(10));
    assert!(
        matches!(answer, Ok(Ok(1))),
        "the submission never came back: {answer:?}"
    );
}
