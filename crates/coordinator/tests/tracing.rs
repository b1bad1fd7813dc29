//! Every request runs in a tracing span carrying its request id, node name and mode.

mod support;

use std::io;
use std::sync::{Arc, Mutex};

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use coordinator::{BoxError, RetryPolicy, SubmitOptions, Task};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_runs_in_a_span_with_its_ids() {
    let logs = Capture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .init();
    let (_publisher, coordinator) = support::started();
    let task = Task::from_fn("traced-1", "lookup", || async {
        tracing::info!("inside the node");
        Ok::<_, BoxError>(1)
    })
    .with_parent("the-parent".into());
    coordinator.submit(task, "async").await.unwrap();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("inside the node"))
        .unwrap_or_else(|| panic!("no event from inside the node in:\n{text}"));
    for field in [
        "request_id=traced-1",
        "node=lookup",
        "parent=\"the-parent\"",
        "mode=async",
    ] {
        assert!(line.contains(field), "`{field}` missing from: {line}");
    }
    // Per-request bookkeeping is at trace, so that debug stays readable under load.
    for event in ["job opened", "job closed"] {
        let line = text
            .lines()
            .find(|l| l.contains(event))
            .unwrap_or_else(|| panic!("no `{event}` in:\n{text}"));
        assert!(line.contains("TRACE"), "`{event}` not at trace: {line}");
    }

    // A retry says, at debug, which attempt failed, why, how long it waits, then that it starts.
    let tries = Arc::new(AtomicU32::new(0));
    let flaky = Task::replayable_fn("flaky-1", "flaky", move || {
        let tries = Arc::clone(&tries);
        async move {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 => Err::<u32, BoxError>("the disk was busy".into()),
                _ => Ok(2),
            }
        }
    });
    let backoff = Duration::from_millis(3);
    let policy = RetryPolicy::new(2)
        .backoff(backoff, backoff)
        .without_jitter();
    let options = SubmitOptions::new().retry(policy);
    assert_eq!(
        coordinator
            .submit_with(flaky, "async", options)
            .await
            .unwrap(),
        2
    );
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let failed = text.lines().find(|l| l.contains("the attempt failed"));
    let failed = failed.unwrap_or_else(|| panic!("no failed attempt in:\n{text}"));
    for field in [
        "DEBUG",
        "attempt=1",
        "the disk was busy",
        "backoff=3ms",
        "request_id=flaky-1",
    ] {
        assert!(failed.contains(field), "`{field}` missing from: {failed}");
    }
    let next = text
        .lines()
        .find(|l| l.contains("starting another attempt"));
    assert!(next.is_some_and(|l| l.contains("attempt=2")), "in:\n{text}");

    // The publisher shut down before the coordinator, its requests still running: the first
    // outcome it cannot announce is said at warn, naming its request; the later ones at trace.
    let (publisher, coordinator) = support::started();
    let _observer = publisher.subscribe_stream();
    let (release, gate) = tokio::sync::watch::channel(false);
    let mut handles = Vec::new();
    for id in ["unannounced-1", "unannounced-2"] {
        let mut gate = gate.clone();
        let task = Task::from_fn(id, "gated", move || async move {
            gate.wait_for(|open| *open).await?;
            Ok::<_, BoxError>(())
        });
        let options = SubmitOptions::new();
        handles.push(coordinator.spawn(task, "async", options).await.unwrap());
    }
    publisher.shutdown().await;
    release.send(true).unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warned: Vec<_> = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("outcome not announced"))
        .collect();
    assert_eq!(warned.len(), 1, "in:\n{text}");
    assert!(
        warned[0].contains("request_id=unannounced-"),
        "{}",
        warned[0]
    );
}
