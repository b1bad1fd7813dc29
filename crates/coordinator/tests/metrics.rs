//! The `metrics` feature: what a recorder receives matches what the coordinator reports.
//! (One test: the recorder is global to the process.)

use std::collections::HashMap;
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, RetryPolicy, SubmitOptions,
    Task,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// `name{label=value,...}` for each recorded metric, with its value.
fn recorded(snapshot: metrics_util::debugging::Snapshot) -> HashMap<String, DebugValue> {
    snapshot
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(all: &HashMap<String, DebugValue>, key: &str) -> u64 {
    match all.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{key}: {other:?} in {:?}", all.keys()),
    }
}

fn samples(all: &HashMap<String, DebugValue>, key: &str) -> Vec<f64> {
    match all.get(key) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
        other => panic!("{key}: {other:?} in {:?}", all.keys()),
    }
}

fn sleeper(id: &str, ms: u64) -> Task<u64> {
    Task::from_fn(id, "sleep", move || async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(ms)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_sees_each_modes_requests_as_the_coordinator_counts_them() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    // Installed before the coordinator is built: its handles are registered then.
    let coordinator = Coordinator::builder()
        .with_async()
        .limit(ExecutionMode::ASYNC, 1)
        .build();
    coordinator.start(&publisher).unwrap();
    let mode = ExecutionMode::ASYNC;
    // Three at once under a limit of 1: two wait for a place.
    let (a, b, c) = tokio::join!(
        coordinator.submit(sleeper("a", 30), mode.clone()),
        coordinator.submit(sleeper("b", 30), mode.clone()),
        coordinator.submit(sleeper("c", 30), mode.clone()),
    );
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (30, 30, 30));
    let failing = Task::from_fn("f", "fail", || async { Err::<u64, BoxError>("no".into()) });
    assert!(coordinator.submit(failing, mode.clone()).await.is_err());
    let slow = coordinator
        .submit_with(
            sleeper("t", 10_000),
            mode.clone(),
            SubmitOptions::new().timeout(Duration::from_millis(20)),
        )
        .await;
    assert!(slow.unwrap_err().is_timeout());
    // Fails twice, then succeeds: two retries.
    let tries = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flaky = Task::replayable_fn("r", "flaky", move || {
        let tries = tries.clone();
        async move {
            match tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => Err::<u64, BoxError>("not yet".into()),
                _ => Ok(7),
            }
        }
    });
    let retried = SubmitOptions::new()
        .retry(RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(1)));
    assert_eq!(
        coordinator
            .submit_with(flaky, mode.clone(), retried)
            .await
            .unwrap(),
        7
    );

    let all = recorded(snapshotter.snapshot());
    let requests = coordinator.system_detail().requests["async"];
    let ended = |outcome: &str| {
        counter(
            &all,
            &format!("coordinator_requests_total{{mode=async,outcome={outcome}}}"),
        )
    };
    assert_eq!(ended("succeeded"), requests.succeeded);
    assert_eq!(ended("failed"), requests.failed);
    assert_eq!(ended("timed_out"), requests.timed_out);
    assert_eq!(
        (ended("succeeded"), ended("failed"), ended("timed_out")),
        (4, 1, 1)
    );
    assert_eq!(
        counter(&all, "coordinator_requests_submitted_total{mode=async}"),
        6
    );
    assert_eq!(
        counter(&all, "coordinator_request_retries_total{mode=async}"),
        2
    );
    match all.get("coordinator_requests_in_flight{mode=async}") {
        Some(DebugValue::Gauge(value)) => assert_eq!(value.into_inner(), 0.0),
        other => panic!("in flight: {other:?}"),
    }
    let ran = samples(
        &all,
        "coordinator_request_duration_seconds{mode=async,outcome=succeeded}",
    );
    assert_eq!(ran.len(), 4);
    assert!(
        ran.iter().filter(|&&s| s >= 0.03).count() >= 3,
        "three slept 30 ms: {ran:?}"
    );
    // One place for six requests: every admission is measured, and the two that waited for
    // the first sleeper waited for it to end.
    let waited = samples(&all, "coordinator_admission_wait_seconds{mode=async}");
    assert_eq!(waited.len(), 6, "{waited:?}");
    assert!(
        waited.iter().filter(|&&s| s >= 0.025).count() >= 2,
        "{waited:?}"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
