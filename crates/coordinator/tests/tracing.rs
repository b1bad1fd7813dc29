//! Every request runs in a tracing span carrying its request id, node name and mode.

mod support;

use std::io;
use std::sync::{Arc, Mutex};

use coordinator::{BoxError, Task};

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
}
