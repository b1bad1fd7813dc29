//! The `metrics` feature: what a recorder receives matches what the coordinator reports (one
//! test installs the process's global recorder), and a slow recorder loses no outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use metrics::{Key, KeyName, Metadata, SharedString, Unit};

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
    // One running: in flight. (A snapshot resets what it reads: counters and gauges count from
    // zero again after it, so the readings are added up below.)
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = release.clone();
    let first = Task::from_fn("i", "sleep", move || async move {
        held.acquire().await?.forget();
        Ok::<_, BoxError>(30_u64)
    });
    let running = coordinator
        .spawn(first, mode.clone(), SubmitOptions::new())
        .await
        .unwrap();
    let mid = recorded(snapshotter.snapshot());
    let in_flight = "coordinator_requests_in_flight{mode=async}";
    let gauge = |all: &HashMap<String, DebugValue>| match all.get(in_flight) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("in flight: {other:?}"),
    };
    assert_eq!(gauge(&mid), 1.0, "one request in flight");
    // It runs 30 ms, as the three sleepers below.
    tokio::time::sleep(Duration::from_millis(30)).await;
    release.add_permits(1);
    assert_eq!(running.await.unwrap(), 30);
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
    // A batch of two behind a request holding the one place: both wait in its queue.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let holder = Task::from_fn("h", "held", move || async move {
        held.acquire().await?.forget();
        Ok::<u64, BoxError>(0)
    });
    let holder = coordinator
        .spawn(holder, mode.clone(), SubmitOptions::new())
        .await
        .unwrap();
    let batch = [sleeper("b1", 1), sleeper("b2", 1)];
    let batch = coordinator
        .submit_many(batch, mode.clone(), SubmitOptions::new())
        .unwrap();
    let queued = recorded(snapshotter.snapshot());
    let waiting = "coordinator_requests_waiting{mode=async}";
    let waiting = |all: &HashMap<String, DebugValue>| match all.get(waiting) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("waiting: {other:?}"),
    };
    let in_flight = gauge(&mid) + gauge(&queued);
    assert_eq!((in_flight, waiting(&queued)), (3.0, 2.0));
    gate.add_permits(1);
    assert_eq!(holder.await.unwrap(), 0);
    assert!(batch.all().await.into_iter().all(|output| output.is_ok()));

    let all = recorded(snapshotter.snapshot());
    let none = gauge(&mid) + gauge(&queued) + gauge(&all);
    assert_eq!(none, 0.0, "none in flight at the end");
    assert_eq!(
        waiting(&queued) + waiting(&all),
        0.0,
        "none waiting at the end"
    );
    let counter = |key: &str| counter(&mid, key) + counter(&queued, key) + counter(&all, key);
    let requests = coordinator.system_detail().requests["async"];
    let ended = |result: &str| {
        counter(&format!(
            "coordinator_requests_total{{mode=async,result={result}}}"
        ))
    };
    assert_eq!(ended("success"), requests.succeeded);
    assert_eq!(ended("failure"), requests.failed);
    assert_eq!(ended("timed_out"), requests.timed_out);
    assert_eq!(
        (ended("success"), ended("failure"), ended("timed_out")),
        (8, 1, 1)
    );
    assert_eq!(
        counter("coordinator_requests_accepted_total{mode=async}"),
        10
    );
    assert_eq!(counter("coordinator_request_retries_total{mode=async}"), 2);
    let ran = [&mid, &queued, &all].map(|snapshot| {
        samples(
            snapshot,
            "coordinator_request_duration_seconds{mode=async,result=success}",
        )
    });
    let ran = ran.concat();
    assert_eq!(ran.len(), 8);
    assert!(
        ran.iter().filter(|&&s| s >= 0.03).count() >= 4,
        "four slept 30 ms: {ran:?}"
    );
    // One place for ten requests: every admission is measured (a batch's waiting tasks as they
    // start), and the two that waited for the first of the three sleepers waited for it to end.
    let waited = [&mid, &queued, &all]
        .map(|snapshot| samples(snapshot, "coordinator_admission_wait_seconds{mode=async}"));
    let waited = waited.concat();
    assert_eq!(waited.len(), 10, "{waited:?}");
    assert!(
        waited.iter().filter(|&&s| s >= 0.025).count() >= 2,
        "{waited:?}"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A recorder whose counters, once armed, take 300 ms to count (or panic): the application's
/// code, which runs where a request's end is applied, between its job's closing and its
/// announcing.
#[derive(Clone)]
struct FaultyCounters {
    armed: Arc<AtomicBool>,
    panics: bool,
}

impl metrics::CounterFn for FaultyCounters {
    fn increment(&self, _: u64) {
        if self.armed.load(SeqCst) {
            assert!(!self.panics, "the recorder broke");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn absolute(&self, _: u64) {}
}

impl metrics::Recorder for FaultyCounters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(Arc::new(self.clone()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A started publisher, a coordinator on `recorder`, and every message the bus carries.
type Messages = Arc<std::sync::Mutex<Vec<coordinator::RequestCompletionMessage>>>;

fn started_on(recorder: &FaultyCounters) -> (RequestCompletionPublisher, Coordinator, Messages) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator =
        metrics::with_local_recorder(recorder, || Coordinator::builder().with_async().build());
    coordinator.start(&publisher).unwrap();
    let seen = Messages::default();
    let sink = Arc::clone(&seen);
    publisher
        .subscribe_with(coordinator::Buffer::Unbounded, move |message| {
            sink.lock().unwrap().push(message.unwrap());
        })
        .unwrap();
    (publisher, coordinator, seen)
}

fn terminal(seen: &Messages) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|m| m.is_terminal())
        .count()
}

/// A request cancelled on a thread of its own ends there: its job closes, then the recorder
/// counts it (slowly), then its message goes to the bus. Shutdown, which found no job open, still
/// returns only after that message went, so the bus's shutdown after it delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_once_every_outcome_is_announced_however_slow_the_recorder() {
    let recorder = FaultyCounters {
        armed: Arc::default(),
        panics: false,
    };
    let (publisher, coordinator, seen) = started_on(&recorder);
    let task = Task::from_fn("cancelled", "waits", || async {
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    });
    let handle = coordinator
        .spawn(task, ExecutionMode::ASYNC, SubmitOptions::new())
        .await
        .unwrap();
    recorder.armed.store(true, SeqCst);
    let canceller = std::thread::spawn(move || {
        handle.cancel();
        handle
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while coordinator.counts().open > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(coordinator.counts().cancelled, 1, "the job closed");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let handle = canceller.join().unwrap();
    assert!(handle.await.unwrap_err().is_cancelled());
    assert_eq!(terminal(&seen), 1, "the outcome reached the bus");
}

/// A recorder that panics as a request ends takes nothing from it: its caller gets its value,
/// the bus its message, and shutdown returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_that_panics_takes_nothing_from_a_request() {
    let recorder = FaultyCounters {
        armed: Arc::default(),
        panics: true,
    };
    let (publisher, coordinator, seen) = started_on(&recorder);
    recorder.armed.store(true, SeqCst);
    let value = coordinator
        .submit(sleeper("ends", 1), ExecutionMode::ASYNC)
        .await;
    assert_eq!(value.unwrap(), 1);
    let shutdown = coordinator.shutdown_with_grace(Duration::MAX);
    let shutdown = tokio::time::timeout(Duration::from_secs(5), shutdown).await;
    assert!(shutdown.is_ok(), "shutdown returned");
    publisher.shutdown().await;
    assert_eq!(terminal(&seen), 1, "the outcome reached the bus");
    assert_eq!(coordinator.counts().succeeded, 1);
}
