//! The thread that keeps `InlineStrategy::shutdown`'s grace period ends with the shutdown: it
//! does not sleep out the rest of the grace (forever, for `Duration::MAX`) once the tasks in
//! flight have ended. Alone in its own test binary, so that no other test's threads come and go
//! while it counts this process's threads (Linux: `/proc/self/task`).

#![cfg(target_os = "linux")]

use std::time::{Duration, Instant};

use exec_inline::InlineStrategy;
use futures::FutureExt;
use futures::executor::block_on;
use task_core::{BoxError, Task, TaskExecutionStrategy};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task lists this process's threads")
        .count()
}

#[test]
fn the_grace_thread_ends_when_the_shutdown_does() {
    let strategy = InlineStrategy::new();
    let (release, hold) = futures::channel::oneshot::channel::<()>();
    let held = Task::from_fn("1", "held", move || async move {
        hold.await.ok();
        Ok::<_, BoxError>(1)
    });
    let mut running = task_core::run(&strategy, held.into_erased());
    assert!((&mut running).now_or_never().is_none());
    let before = threads();
    let ended = |why: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads() > before {
            assert!(Instant::now() < deadline, "the grace thread outlives {why}");
            std::thread::yield_now();
        }
    };
    // A shutdown given up on (its future dropped, as an outer timeout does).
    let mut shutdown = strategy.shutdown(Duration::from_secs(3600));
    assert!(
        (&mut shutdown).now_or_never().is_none(),
        "shutdown waits for the task in flight"
    );
    assert_eq!(threads(), before + 1, "a thread keeps the grace period");
    drop(shutdown);
    ended("a shutdown that was dropped");
    // A shutdown that ends because the task in flight did, with a grace that never expires.
    let mut shutdown = strategy.shutdown(Duration::MAX);
    assert!((&mut shutdown).now_or_never().is_none());
    assert_eq!(threads(), before + 1);
    release.send(()).unwrap();
    assert!(block_on(running).is_ok());
    block_on(shutdown);
    assert_eq!(strategy.stats().in_flight, 0);
    ended("a shutdown that ended");
}
