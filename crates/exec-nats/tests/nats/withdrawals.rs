//! Withdrawing many runs at once: a shutdown that leaves thousands of tasks queued.

use super::*;

/// A shutdown that finds thousands of tasks still queued (no worker serves the mode) withdraws
/// every one of them within its tidying's 2 s, so a worker that comes later runs none.
pub(crate) async fn a_shutdown_withdraws_thousands_of_queued_tasks() {
    const QUEUED: u64 = 3_000;
    let config = config("withdraw-many");
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .unwrap();
    let runs: Vec<_> = (0..QUEUED)
        .map(|i| {
            let task = Task::portable(format!("q{i}"), Echo(i)).into_erased();
            tokio::spawn(task_core::run(&strategy, task))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tasks_in_stream(&config).await < QUEUED {
        assert!(Instant::now() < deadline, "the tasks were never all stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    task_core::TaskExecutionStrategy::shutdown(&strategy, Duration::ZERO).await;
    let took = started.elapsed();
    for run in runs {
        assert!(run.await.unwrap().unwrap_err().is_shutdown());
    }
    let left = tasks_in_stream(&config).await;
    cleanup(&config).await;
    assert_eq!(
        left, 0,
        "{left} of {QUEUED} queued tasks were left for a worker that comes later (shutdown took {took:?})"
    );
}
