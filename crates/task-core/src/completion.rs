//! [`Completion`]: where a strategy that runs a task on its own delivers the outcome.

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::{Outcome, TaskError};

/// What a [`Completion`] reports to: implemented by the caller of
/// [`TaskExecutionStrategy::launch`](crate::TaskExecutionStrategy::launch) (a coordinator), not
/// by strategies.
pub trait CompletionSink: Send + Sync + 'static {
    /// Takes the outcome of the run. Only the first call for a request counts; later ones (after
    /// a cancellation already ended it, say) are ignored.
    fn complete(&self, outcome: Outcome);

    /// Ready once the request has been cancelled; registers `cx`'s waker otherwise.
    fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Whether the request has been cancelled.
    fn is_cancelled(&self) -> bool;

    /// Runs `f` inside the request's context (its tracing span, the node nested submissions get
    /// as their parent). Must call `f` exactly once.
    fn run_in_scope(&self, f: &mut dyn FnMut());
}

/// The promise to deliver one request's outcome, handed to a strategy with
/// [`TaskExecutionStrategy::launch`](crate::TaskExecutionStrategy::launch).
///
/// Delivering it consumes it, so a run delivers at most one outcome. Dropping it undelivered
/// (the run was lost: its thread pool or runtime went away) delivers a failure, so a launched
/// request always ends.
///
/// Once the request is cancelled its outcome is already delivered (cancelled); the run may stop
/// early ([`cancelled`](Self::cancelled)), and what it delivers afterwards is ignored.
pub struct Completion {
    /// `None` once delivered.
    sink: Option<Arc<dyn CompletionSink>>,
}

impl Completion {
    /// A completion reporting to `sink`.
    pub fn new(sink: Arc<dyn CompletionSink>) -> Self {
        Self { sink: Some(sink) }
    }

    /// Delivers the run's outcome.
    pub fn complete(mut self, outcome: Outcome) {
        if let Some(sink) = self.sink.take() {
            sink.complete(outcome);
        }
    }

    /// Whether the request has been cancelled: the run may stop, its outcome will be ignored.
    pub fn is_cancelled(&self) -> bool {
        self.sink.as_ref().is_some_and(|sink| sink.is_cancelled())
    }

    /// Ready once the request has been cancelled.
    pub fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.sink {
            Some(sink) => sink.poll_cancelled(cx),
            None => Poll::Pending,
        }
    }

    /// Completes when the request is cancelled; never, otherwise.
    pub async fn cancelled(&self) {
        poll_fn(|cx| self.poll_cancelled(cx)).await;
    }

    /// Runs `f` inside the request's context: its tracing span, and its node as the parent of
    /// tasks submitted from `f`. Call it around every poll of the node's future, or once around
    /// a blocking body.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut f = Some(f);
        let mut result = None;
        if let Some(sink) = &self.sink {
            sink.run_in_scope(&mut || {
                if let Some(f) = f.take() {
                    result = Some(f());
                }
            });
        }
        match (result, f) {
            (Some(result), _) => result,
            // Delivered already, or a sink that did not call it: run it outside the scope.
            (None, Some(f)) => f(),
            // `f` ran but gave nothing back: impossible, `result` is set whenever `f` runs.
            (None, None) => unreachable_in_scope(),
        }
    }
}

/// `in_scope`'s closure always stores a result when it takes `f`.
#[cold]
fn unreachable_in_scope() -> ! {
    unreachable!("Completion::in_scope: the closure ran without a result")
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.complete(Err(TaskError::strategy(
                "the strategy dropped the task without an outcome",
            )));
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("delivered", &self.sink.is_none())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::Value;

    /// Records what it is told, and runs scopes with a marker set.
    #[derive(Default)]
    struct Sink {
        outcomes: Mutex<Vec<Outcome>>,
        cancelled: AtomicBool,
        in_scope: AtomicBool,
    }

    impl CompletionSink for Sink {
        fn complete(&self, outcome: Outcome) {
            self.outcomes.lock().unwrap().push(outcome);
        }
        fn poll_cancelled(&self, _cx: &mut Context<'_>) -> Poll<()> {
            if self.cancelled.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
        fn is_cancelled(&self) -> bool {
            self.cancelled.load(Ordering::SeqCst)
        }
        fn run_in_scope(&self, f: &mut dyn FnMut()) {
            self.in_scope.store(true, Ordering::SeqCst);
            f();
            self.in_scope.store(false, Ordering::SeqCst);
        }
    }

    #[test]
    fn delivering_consumes_it_and_reaches_the_sink_once() {
        let sink = Arc::new(Sink::default());
        let completion = Completion::new(sink.clone());
        assert!(format!("{completion:?}").contains("delivered: false"));
        completion.complete(Ok(Value::new(3_u8)));
        let outcomes = sink.outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 1, "dropping after delivery adds nothing");
        assert_eq!(outcomes[0].as_ref().unwrap().downcast_ref::<u8>(), Some(&3));
    }

    #[test]
    fn dropping_it_undelivered_delivers_a_strategy_failure() {
        let sink = Arc::new(Sink::default());
        drop(Completion::new(sink.clone()));
        let outcomes = sink.outcomes.lock().unwrap();
        assert_eq!(outcomes.len(), 1);
        let error = outcomes[0].as_ref().unwrap_err();
        assert!(error.is_strategy_error(), "{error}");
    }

    #[test]
    fn in_scope_runs_the_closure_once_inside_the_sinks_scope() {
        let sink = Arc::new(Sink::default());
        let completion = Completion::new(sink.clone());
        let seen = completion.in_scope(|| sink.in_scope.load(Ordering::SeqCst));
        assert!(seen, "run inside the scope");
        assert!(!sink.in_scope.load(Ordering::SeqCst));
        completion.complete(Ok(Value::new(())));
    }

    #[test]
    fn cancellation_is_read_from_the_sink() {
        let sink = Arc::new(Sink::default());
        let completion = Completion::new(sink.clone());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!completion.is_cancelled());
        assert!(completion.poll_cancelled(&mut cx).is_pending());
        sink.cancelled.store(true, Ordering::SeqCst);
        assert!(completion.is_cancelled());
        futures::executor::block_on(completion.cancelled());
    }
}
