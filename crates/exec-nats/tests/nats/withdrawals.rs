//! Withdrawing many runs at once: a shutdown that leaves many tasks queued.

use super::*;

/// A shutdown that finds many tasks still queued (no worker serves the mode) withdraws every one
/// of them within its tidying's 2 s, so a worker that comes later runs none: the deletions go many
/// at a time. Every answer from the server comes 20 ms late here: one at a time, about a hundred
/// would fit in the 2 s.
pub(crate) async fn a_shutdown_withdraws_every_queued_task_from_a_distant_server() {
    const QUEUED: u64 = 500;
    let config = config("withdraw-many");
    let proxy = Proxy::with_delay(&config.url, Duration::from_millis(20)).await;
    let distant = NatsConfig {
        url: proxy.url(),
        ..config.clone()
    };
    let strategy = NatsStrategy::builder()
        .config(distant)
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
