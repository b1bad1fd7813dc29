//! [`Completion`]: where a strategy delivers a task's outcome, and [`run`], which drives a
//! strategy's task without a coordinator.

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::context::{self, EventSink};
use crate::{BoxFuture, NodeId, Outcome, TaskError};

/// What a [`Completion`] reports to: implemented by the caller of
/// [`TaskExecutionStrategy::execute`](crate::TaskExecutionStrategy::execute) (a coordinator), not by strategies.
///
/// As an [`EventSink`] it takes the events the request's node
/// [broadcasts](crate::context::broadcast).
pub trait CompletionSink: EventSink {
    /// Takes the outcome of the run. Only the first call for a request counts; later ones (after
    /// a cancellation already ended it, say) are ignored.
    fn complete(&self, outcome: Outcome);

    /// Ready once the request has been cancelled; registers `cx`'s waker otherwise.
    fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Whether the request has been cancelled: its run is to stop.
    fn is_cancelled(&self) -> bool;

    /// Whether the request has its outcome already, without this run's: a [`Completion`] dropped
    /// undelivered then delivers nothing. The default is [`is_cancelled`](Self::is_cancelled);
    /// a sink whose run may be told to stop while its request goes on (a coordinator's attempt
    /// past its own timeout, followed by another) says `false` then, and takes the failure.
    fn has_outcome(&self) -> bool {
        self.is_cancelled()
    }

    /// Runs `f` inside the request's context (its tracing span, the node nested submissions get
    /// as their parent). Must call `f` exactly once.
    fn run_in_scope(&self, f: &mut dyn FnMut());

    /// Runs `future` to its end where the caller of `execute` runs its own work (a coordinator:
    /// its tokio runtime). Dropping it unpolled is allowed: it then delivers a failure.
    fn spawn(&self, future: BoxFuture<'static, ()>);

    /// The run a [`Completion`] was handed to is over: it delivered (this comes first), or the
    /// completion was dropped, its run stopped or lost. Once per completion. A coordinator
    /// keeps a request's place under its mode's limit until then, so that the limit counts the
    /// nodes still running, a cancelled one too. The default does nothing.
    fn run_over(&self) {}

    /// Calls `found` with the node of each open request above this one, nearest first (the node
    /// it was submitted from, that node's own parent, and so on, through requests of every
    /// mode), until `found` returns `true`; returns whether it did. The default knows no
    /// ancestors.
    fn any_open_ancestor(&self, found: &mut dyn FnMut(&NodeId) -> bool) -> bool {
        let _ = found;
        false
    }
}

/// The promise to deliver one request's outcome, handed to a strategy with
/// [`TaskExecutionStrategy::execute`](crate::TaskExecutionStrategy::execute).
///
/// Delivering it consumes it, so a run delivers at most one outcome. Dropping it undelivered
/// (the run was lost: its thread pool or runtime went away) delivers a failure, so a request
/// always ends.
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
            sink.run_over();
            sink.complete(outcome);
        }
    }

    /// The request's event sink, to forward events its node
    /// [broadcast](crate::context::broadcast) where the completion's scope does not reach (a
    /// worker process, a remote worker); `None` once delivered. Forward them in the order the
    /// node sent them, before the outcome: events after it are dropped.
    pub fn events(&self) -> Option<context::Events> {
        let sink: std::sync::Arc<dyn EventSink> = self.sink.clone()?;
        Some(context::Events(sink))
    }

    /// Whether the run is to stop: its request was cancelled (what it delivers then is ignored),
    /// or, under a coordinator, its attempt ran past its attempt timeout (what it delivers then
    /// ends the attempt: a failure reads as the timeout).
    pub fn is_cancelled(&self) -> bool {
        self.sink.as_ref().is_some_and(|sink| sink.is_cancelled())
    }

    /// Whether `found` holds for the node of an open request above this one: its parent, the
    /// parent's parent, and so on, through requests of every mode, as far as the sink knows
    /// them (a coordinator: the open requests above this one, its own or another
    /// coordinator's). A strategy with a limit of its own asks it to spare a task whose
    /// ancestor holds a place, which the task must not wait for.
    pub fn any_open_ancestor(&self, mut found: impl FnMut(&NodeId) -> bool) -> bool {
        self.sink
            .as_ref()
            .is_some_and(|sink| sink.any_open_ancestor(&mut found))
    }

    /// Ready once the request has been cancelled. One waiter at a time: the run (a later poll
    /// from another task replaces the earlier one's waker).
    pub fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        match &self.sink {
            Some(sink) => sink.poll_cancelled(cx),
            None => Poll::Pending,
        }
    }

    /// Completes when the request is cancelled; never, otherwise. As for
    /// [`poll_cancelled`](Self::poll_cancelled), one task waits at a time.
    pub async fn cancelled(&self) {
        poll_fn(|cx| self.poll_cancelled(cx)).await;
    }

    /// Delivers the outcome `future` resolves to, driving it where the caller of `execute` runs
    /// its own work (a coordinator: the tokio runtime current where `execute` was called, else
    /// the one the coordinator was started on): the way for a strategy whose work is a future (a
    /// request to a remote service, an async node) to run it without a runtime of its own.
    ///
    /// Every poll runs inside the request's scope ([`in_scope`](Self::in_scope)); a panic is
    /// caught and delivered as a failure; once the request is cancelled the future is dropped at
    /// its next wake-up, unfinished.
    pub fn spawn(self, future: impl Future<Output = Outcome> + Send + 'static) {
        let Some(sink) = self.sink.clone() else {
            return;
        };
        sink.spawn(Box::pin(Driven {
            future: Box::pin(future),
            completion: Some(self),
        }));
    }

    /// Drives the future `run` makes of this completion where [`spawn`](Self::spawn) drives its
    /// own, and leaves the completion to it: the future delivers the outcome itself, and is not
    /// dropped when the request is cancelled. For a run that must outlive its request's end: a
    /// strategy keeps the completion (and so the request's place under a coordinator's limit)
    /// until the work it handed elsewhere has stopped, watching [`cancelled`](Self::cancelled)
    /// itself. Unlike `spawn`'s, the future is not polled inside the request's scope: run the
    /// node's own code in [`in_scope`](Self::in_scope). A panic in the future drops it, and the
    /// completion with it (a failure).
    pub fn spawn_owning<F>(self, run: impl FnOnce(Self) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(sink) = self.sink.clone() else {
            return;
        };
        sink.spawn(Box::pin(Owning(Some(Box::pin(run(self))))));
    }

    /// Runs `f` inside the request's context: its tracing span, its node as the parent of tasks
    /// submitted from `f`, and the sink of the events `f` [broadcasts](crate::context::broadcast).
    /// The coordinator's sink also enters its tokio runtime when `f` runs outside any (on a
    /// strategy's own thread), so that `f` can submit tasks.
    /// Call it around every poll of the node's future, or once around a blocking body.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        context::within_completion(|| self.in_sinks_scope(f))
    }

    fn in_sinks_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut f = Some(f);
        let mut result = None;
        if let Some(sink) = &self.sink {
            let events: std::sync::Arc<dyn EventSink> = sink.clone();
            context::with_events(events, || {
                sink.run_in_scope(&mut || {
                    if let Some(f) = f.take() {
                        result = Some(f());
                    }
                });
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
        let Some(sink) = self.sink.take() else {
            return;
        };
        sink.run_over();
        // A cancelled request has its outcome already: nothing to deliver.
        if !sink.has_outcome() {
            // Dropped while unwinding: the strategy (or whatever held the run) panicked.
            let why = if std::thread::panicking() {
                "the strategy panicked before the task's outcome was delivered (its panic \
                 message went to the panic hook)"
            } else {
                "the strategy dropped the task without an outcome"
            };
            sink.complete(Err(TaskError::strategy(why)));
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

/// A future that owns its completion ([`Completion::spawn_owning`]): polled under
/// `catch_unwind`, dropped (its completion with it) if it panics.
struct Owning(Option<BoxFuture<'static, ()>>);

impl Future for Owning {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(future) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) | Err(_) => {
                self.0 = None;
                Poll::Ready(())
            }
        }
    }
}

/// The future [`Completion::spawn`] hands the sink: the strategy's future, polled in the
/// request's scope until it ends or the request is cancelled.
struct Driven {
    /// Dropped before the completion reports (delivers, or is dropped): the run is over only
    /// once nothing of the node is left, so what the sink starts next (another attempt, a
    /// waiting task given the place it frees) never runs beside the node's `Drop`.
    future: BoxFuture<'static, Outcome>,
    /// `None` once delivered.
    completion: Option<Completion>,
}

impl Driven {
    /// Drops the strategy's future (in its place, one that never resolves and holds nothing),
    /// then `completion`, delivering `outcome` if there is one. Unfinished (no outcome), the
    /// future is dropped in the request's scope, as it was polled.
    fn stop(&mut self, completion: Completion, outcome: Option<Outcome>) {
        // A panic in the node's `Drop` unwinds through here as it did through the sink's driver
        // before: the completion, dropped as it unwinds, delivers a failure.
        let pending: BoxFuture<'static, Outcome> = Box::pin(std::future::pending());
        let future = std::mem::replace(&mut self.future, pending);
        match outcome {
            Some(_) => drop(future),
            None => completion.in_scope(|| drop(future)),
        }
        match outcome {
            Some(outcome) => completion.complete(outcome),
            None => drop(completion),
        }
    }
}

impl Future for Driven {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(completion) = &this.completion else {
            return Poll::Ready(());
        };
        if completion.poll_cancelled(cx).is_ready() {
            // Answered already (or to fail as its sink decides): the completion is dropped
            // without a delivery, once the future is.
            if let Some(completion) = this.completion.take() {
                this.stop(completion, None);
            }
            return Poll::Ready(());
        }
        let future = &mut this.future;
        let polled = catch_unwind(AssertUnwindSafe(|| {
            completion.in_scope(|| future.as_mut().poll(cx))
        }));
        let outcome = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(outcome)) => outcome,
            Err(payload) => Err(TaskError::panic(payload)),
        };
        if let Some(completion) = this.completion.take() {
            this.stop(completion, Some(outcome));
        }
        Poll::Ready(())
    }
}
