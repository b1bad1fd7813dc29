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
