//! Shared helpers for the coordinator's integration tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, RequestCompletionMessage, RequestCompletionPublisher, Task,
    TaskExecutionStrategy,
};
use task_core::{BoxFuture, ErasedTask, Outcome};

/// A started publisher and a coordinator with the async strategy, started on it.
pub fn started() -> (RequestCompletionPublisher, Coordinator) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().with_async().build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator)
}

/// Records every message the bus carries, for counting terminal messages per request.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<RequestCompletionMessage>>>);

impl Recorder {
    pub fn attach(publisher: &RequestCompletionPublisher) -> Self {
        let recorder = Self::default();
        let sink = Arc::clone(&recorder.0);
        publisher
            .subscribe(move |m| sink.lock().unwrap().push(m))
            .unwrap();
        recorder
    }

    pub fn messages(&self) -> Vec<RequestCompletionMessage> {
        self.0.lock().unwrap().clone()
    }

    /// Terminal messages per request id.
    pub fn terminal_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for m in self.0.lock().unwrap().iter().filter(|m| m.is_terminal()) {
            *counts
                .entry(m.request_id().unwrap().to_string())
                .or_insert(0) += 1;
        }
        counts
    }
}

/// A trivial async task returning `value`.
pub fn value_task(id: &str, value: u64) -> Task<u64> {
    Task::from_fn(id.to_string(), "value", move || async move {
        Ok::<_, BoxError>(value)
    })
}

/// A strategy that runs tasks inline and counts its shutdowns.
#[derive(Default)]
pub struct CountingInline {
    pub shutdowns: AtomicUsize,
    pub executed: AtomicUsize,
}

impl TaskExecutionStrategy for CountingInline {
    fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome> {
        self.executed.fetch_add(1, Ordering::SeqCst);
        Box::pin(task.run_inline())
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        self.shutdowns.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }

    fn name(&self) -> &str {
        "counting-inline"
    }
}
