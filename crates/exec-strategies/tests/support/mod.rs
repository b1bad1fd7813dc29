//! What several test binaries share: [`Probe`], the request's side of a run.

#![allow(dead_code)] // Each test binary uses a part.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use task_core::context::EventSink;
use task_core::{
    BoxFuture, Completion, CompletionSink, Outcome, StrategyStats, TaskExecutionStrategy,
};
use tokio::sync::oneshot;

/// A request's side of a run, as a coordinator's is: it takes the outcome and the events, can be
/// cancelled, and notes the strategy's counts as the run is over (its completion reports or
/// goes), which is when a coordinator frees the request's place under its limit for another.
pub(crate) struct Probe {
    stats: Box<dyn Fn() -> StrategyStats + Send + Sync>,
    outcome: Mutex<Option<oneshot::Sender<Outcome>>>,
    pub(crate) events: Mutex<Vec<Arc<str>>>,
    cancelled: AtomicBool,
    waker: AtomicWaker,
    at_run_over: Mutex<Option<StrategyStats>>,
}

impl Probe {
    /// A probe noting the counts `stats` reads, and where its outcome arrives.
    fn new(
        stats: impl Fn() -> StrategyStats + Send + Sync + 'static,
    ) -> (Arc<Self>, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let probe = Arc::new(Self {
            stats: Box::new(stats),
            outcome: Mutex::new(Some(tx)),
            events: Mutex::new(Vec::new()),
            cancelled: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            at_run_over: Mutex::new(None),
        });
        (probe, rx)
    }

    /// A probe noting `strategy`'s counts, and where its outcome arrives.
    pub(crate) fn of<S>(strategy: &S) -> (Arc<Self>, oneshot::Receiver<Outcome>)
    where
        S: TaskExecutionStrategy + Clone + 'static,
    {
        let strategy = strategy.clone();
        Self::new(move || strategy.stats())
    }

    /// A probe for a test that reads no counts.
    pub(crate) fn collect() -> (Arc<Self>, oneshot::Receiver<Outcome>) {
        Self::new(StrategyStats::default)
    }

    /// A completion reporting to this probe.
    pub(crate) fn completion(self: &Arc<Self>) -> Completion {
        Completion::new(Arc::clone(self) as _)
    }

    /// Cancels the request: the strategy is woken, as a coordinator wakes it.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// The counts noted as the run was over, if it is.
    pub(crate) fn noted(&self) -> Option<StrategyStats> {
        self.at_run_over.lock().unwrap().clone()
    }

    /// The counts noted as the run was over, once it is (within 10 s).
    pub(crate) async fn at_run_over(&self) -> StrategyStats {
        let noted = async {
            loop {
                if let Some(stats) = self.noted() {
                    return stats;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        (tokio::time::timeout(Duration::from_secs(10), noted).await).expect("the run is over")
    }
}

impl EventSink for Probe {
    fn broadcast(&self, event: Arc<str>) {
        self.events.lock().unwrap().push(event);
    }
}

impl CompletionSink for Probe {
    fn complete(&self, outcome: Outcome) {
        if let Some(tx) = self.outcome.lock().unwrap().take() {
            let _ = tx.send(outcome);
        }
    }
    fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    fn run_in_scope(&self, f: &mut dyn FnMut()) {
        f();
    }
    fn spawn(&self, future: BoxFuture<'static, ()>) {
        tokio::spawn(future);
    }
    fn run_over(&self) {
        *self.at_run_over.lock().unwrap() = Some((self.stats)());
    }
}
