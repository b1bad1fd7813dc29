//! A request that hands its work on to a successor (spawned, not awaited) and ends: the chain of
//! ended predecessors is not kept alive by the newest one.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coordinator::{BoxError, Coordinator, ExecutionMode, SubmitOptions, Task};

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// An output that counts how many of its kind are alive.
#[derive(Debug)]
struct Payload(#[allow(dead_code)] Vec<u8>);

impl Payload {
    fn new() -> Self {
        LIVE.fetch_add(1, Ordering::SeqCst);
        Self(vec![0; 1024])
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

fn step(
    c: Coordinator,
    i: usize,
    last: usize,
    hold: Arc<tokio::sync::Notify>,
    done: Arc<tokio::sync::Notify>,
) -> Task<Payload> {
    Task::from_fn(format!("step-{i}"), "step", move || async move {
        if i == last {
            done.notify_one();
            hold.notified().await;
        } else {
            let next = step(c.clone(), i + 1, last, hold, done);
            // Hands on to its successor and ends; nobody awaits the successor.
            drop(
                c.spawn(next, ExecutionMode::ASYNC, SubmitOptions::new())
                    .await?,
            );
        }
        Ok::<_, BoxError>(Payload::new())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_successors_does_not_keep_the_ended_ones_alive() {
    let (publisher, coordinator) = support::started();
    let last = 2_000;
    let (hold, done) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let first = step(
        coordinator.clone(),
        0,
        last,
        Arc::clone(&hold),
        Arc::clone(&done),
    );
    drop(
        coordinator
            .spawn(first, ExecutionMode::ASYNC, SubmitOptions::new())
            .await
            .unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(30), done.notified())
        .await
        .expect("the chain reaches its end");
    // Every step but the last has ended and nobody holds its handle.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while coordinator.counts().open > 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(coordinator.counts().open, 1);
    let live = LIVE.load(Ordering::SeqCst);
    hold.notify_one();
    tokio::time::timeout(Duration::from_secs(30), coordinator.shutdown())
        .await
        .unwrap();
    publisher.shutdown().await;
    assert!(
        live < 10,
        "{live} outputs of ended, unheld requests still alive"
    );
}
