//! [`RequestCell`]: the one shared record of an accepted request.
//!
//! It carries what the request's parties share: the cancellation flag (set by the caller's
//! handle, the parent's cancellation or shutdown, read by whatever runs the request), the children
//! to cancel with it, and the slot the caller's answer arrives in. A launched request (one its
//! strategy runs by itself, [`TaskExecutionStrategy::launch`](task_core::TaskExecutionStrategy))
//! also keeps here what publishing its outcome needs, taken exactly once by whichever comes first:
//! the run's outcome or a cancellation.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use pubsub::{RequestCompletionMessage, RequestFailure, RequestSuccess};
use task_core::{CompletionSink, NodeId, Outcome, TaskError, TaskInfo};
use tokio::sync::OwnedSemaphorePermit;

use crate::coordinator::{CURRENT_NODE, Inner, NodeScope};

/// Locks `mutex`; no code that can panic runs under these locks, so a poisoned one still holds
/// consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared record of one accepted request.
pub(crate) struct RequestCell {
    cancelled: AtomicBool,
    /// Whatever runs the request (its driver, or a launched run) waits here for cancellation.
    cancel_waker: AtomicWaker,
    /// Requests submitted from inside this one's node; cancelled with it.
    children: Mutex<Vec<Weak<RequestCell>>>,
    answer: Mutex<Answer>,
    /// A launched request's means to publish its outcome, until it is taken.
    launched: Mutex<Option<Launched>>,
    node_id: NodeId,
    span: tracing::Span,
    /// This cell, for the scope its node runs in.
    me: Weak<RequestCell>,
}

#[derive(Default)]
struct Answer {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    answered: bool,
}

impl RequestCell {
    pub(crate) fn new(node_id: NodeId, span: tracing::Span) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            cancelled: AtomicBool::new(false),
            cancel_waker: AtomicWaker::new(),
            children: Mutex::new(Vec::new()),
            answer: Mutex::new(Answer::default()),
            launched: Mutex::new(None),
            node_id,
            span,
            me: me.clone(),
        })
    }

    /// The scope its node runs in: nested submissions get it as parent and are cancelled with it.
    pub(crate) fn scope(&self) -> NodeScope {
        NodeScope {
            node: self.node_id.clone(),
            request: self.me.clone(),
        }
    }

    pub(crate) fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Ready once the request is cancelled. One waiter at a time: what runs the request.
    pub(crate) fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancelled() {
            return Poll::Ready(());
        }
        self.cancel_waker.register(cx.waker());
        // Set after the check above and before the registration: seen here.
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes once the request is cancelled.
    pub(crate) async fn cancelled(&self) {
        std::future::poll_fn(|cx| self.poll_cancelled(cx)).await;
    }

    /// Cancels the request and, through them, its children: each one's runner is woken, and a
    /// launched request publishes its cancelled outcome now. Cancelling twice does nothing more.
    ///
    /// Never call it under the coordinator's table lock: a launched request's fallback (the bus
    /// refused its outcome) closes the job itself, which takes that lock.
    pub(crate) fn cancel(self: &Arc<Self>) {
        let mut pending: Vec<Arc<RequestCell>> = Vec::new();
        let mut cell = Arc::clone(self);
        loop {
            if !cell.cancelled.swap(true, Ordering::SeqCst) {
                cell.cancel_waker.wake();
                let launched = lock(&cell.launched).take();
                if let Some(launched) = launched {
                    let cancelled = Err(launched.inner.cancelled());
                    launched.finish(cancelled);
                }
                pending.extend(
                    lock(&cell.children)
                        .drain(..)
                        .filter_map(|child| child.upgrade()),
                );
            }
            match pending.pop() {
                Some(next) => cell = next,
                None => break,
            }
        }
    }

    /// Records `child` as submitted from inside this request, to be cancelled with it. Returns
    /// whether this request is already cancelled: the caller then cancels the child (outside the
    /// table lock).
    pub(crate) fn adopt(&self, child: &Arc<RequestCell>) -> bool {
        {
            let mut children = lock(&self.children);
            if children.len() == children.capacity() {
                // Forget the children that ended before growing: the list stays proportional to
                // the children alive, however many this request submits over its life.
                children.retain(|c| c.strong_count() > 0);
            }
            children.push(Arc::downgrade(child));
        }
        // After the push: a cancellation either drains the child above or is seen here.
        self.is_cancelled()
    }

    /// Makes this a launched request: its outcome is published through `launched`.
    pub(crate) fn set_launched(&self, launched: Launched) {
        *lock(&self.launched) = Some(launched);
    }

    /// Hands the caller its outcome; only the first answer counts.
    pub(crate) fn answer(&self, outcome: Outcome) {
        self.answer_with(|| outcome);
    }

    /// Hands the caller the outcome `outcome` makes, unless it was answered already (then
    /// `outcome` is not called).
    pub(crate) fn answer_with(&self, outcome: impl FnOnce() -> Outcome) {
        let waker = {
            let mut answer = lock(&self.answer);
            if answer.answered {
                return;
            }
            answer.answered = true;
            answer.outcome = Some(outcome());
            answer.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The caller's outcome once answered; `None` if it was taken before.
    pub(crate) fn poll_answer(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let mut answer = lock(&self.answer);
        if answer.answered {
            return Poll::Ready(answer.outcome.take());
        }
        match &mut answer.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl CompletionSink for RequestCell {
    fn complete(&self, outcome: Outcome) {
        let Some(launched) = lock(&self.launched).take() else {
            // Already published: cancelled first, or a second outcome.
            return;
        };
        // A cancellation that raced the run's end wins, as it does for a driven request.
        let outcome = if self.is_cancelled() {
            Err(launched.inner.cancelled())
        } else {
            outcome
        };
        launched.finish(outcome);
    }

    fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        RequestCell::poll_cancelled(self, cx)
    }

    fn is_cancelled(&self) -> bool {
        RequestCell::is_cancelled(self)
    }

    fn run_in_scope(&self, f: &mut dyn FnMut()) {
        let _span = self.span.enter();
        CURRENT_NODE.sync_scope(self.scope(), f);
    }
}

/// What a launched request needs to publish its outcome. The bus and the runtime are the
/// coordinator's (shared, not cloned per request: their reference counts would bounce between
/// the submitting thread and the one the request finishes on).
pub(crate) struct Launched {
    pub(crate) inner: Arc<Inner>,
    pub(crate) info: TaskInfo,
    /// Its place under its mode's concurrency limit, released when it ends.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

impl Launched {
    /// Publishes the request's one terminal message; when the bus refuses it, closes the job
    /// directly, so the request ends either way.
    fn finish(self, outcome: Outcome) {
        let Launched {
            inner,
            info,
            permit,
        } = self;
        drop(permit);
        let Some(started) = inner.started.get() else {
            // Never: a request is launched only by a started coordinator.
            inner.complete(info.request_id(), outcome);
            return;
        };
        let message = message_of(info, outcome);
        // While earlier outcomes wait for room, this one queues behind them instead of
        // overtaking them.
        let message = if inner.overflow.waiting.load(Ordering::SeqCst) {
            message
        } else {
            match started.publisher.try_publish(message) {
                Ok(()) => return,
                Err(refused) if refused.is_full() => refused.into_inner(),
                Err(refused) => {
                    tracing::warn!(%refused, "outcome not published; closing the job directly");
                    close_unpublished(&inner, refused.into_inner());
                    return;
                }
            }
        };
        // The bus is a whole capacity ahead of its slowest subscriber: the outcome waits for room
        // in the coordinator's queue, published by one task (on this thread's runtime, else the
        // coordinator's), never on the thread that delivered it.
        let Some(runtime) = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| started.runtime.clone())
        else {
            tracing::warn!(%message, "no runtime to wait for room on the bus; closing the job directly");
            close_unpublished(&inner, message);
            return;
        };
        if inner.overflow.push(message) {
            let drain = Drain {
                inner: Arc::clone(&inner),
                batch: VecDeque::new(),
                done: false,
            };
            runtime.spawn(drain.run());
        }
    }
}

/// Outcomes of launched requests that found the bus full, published in the order they came by
/// one task: a burst of outcomes past the bus's capacity costs a queue entry each, not a task
/// each.
#[derive(Default)]
pub(crate) struct Overflow {
    /// Set while outcomes wait (read without the lock by every outcome published).
    waiting: AtomicBool,
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<RequestCompletionMessage>,
    /// Whether a task is publishing the queue.
    draining: bool,
}

impl Overflow {
    /// Queues `message`; true when no task publishes the queue yet (the caller starts one).
    fn push(&self, message: RequestCompletionMessage) -> bool {
        let mut queue = lock(&self.queue);
        queue.messages.push_back(message);
        self.waiting.store(true, Ordering::SeqCst);
        !std::mem::replace(&mut queue.draining, true)
    }

    /// Every waiting outcome, taken in one go; none when there is none, and then the publishing
    /// task stops.
    fn take_batch(&self) -> VecDeque<RequestCompletionMessage> {
        let mut queue = lock(&self.queue);
        if queue.messages.is_empty() {
            queue.draining = false;
            self.waiting.store(false, Ordering::SeqCst);
        }
        std::mem::take(&mut queue.messages)
    }

    /// Every waiting outcome, for a publishing task that is dropped before it is done.
    fn take_all(&self) -> VecDeque<RequestCompletionMessage> {
        let mut queue = lock(&self.queue);
        queue.draining = false;
        self.waiting.store(false, Ordering::SeqCst);
        std::mem::take(&mut queue.messages)
    }
}

/// The task that publishes the waiting outcomes, a batch (all that wait) at a time. Dropped
/// before it is done (its runtime shut down), it closes the job of every outcome it did not
/// publish directly, so no job stays open.
struct Drain {
    inner: Arc<Inner>,
    /// Outcomes taken from the queue and not yet published, in order; while one waits for room,
    /// a copy of it stays first.
    batch: VecDeque<RequestCompletionMessage>,
    /// Set once the queue is empty and nothing is left to close.
    done: bool,
}

impl Drain {
    async fn run(mut self) {
        let inner = Arc::clone(&self.inner);
        // Always set: outcomes are queued only by a started coordinator.
        let Some(started) = inner.started.get() else {
            return;
        };
        loop {
            self.batch = inner.overflow.take_batch();
            if self.batch.is_empty() {
                break;
            }
            while let Some(message) = self.batch.pop_front() {
                let refused = match started.publisher.try_publish(message) {
                    Ok(()) => continue,
                    Err(refused) if refused.is_full() => {
                        // Wait for room; the copy closes the job if this task is dropped
                        // meanwhile.
                        let message = refused.into_inner();
                        self.batch.push_front(message.clone());
                        let published = started.publisher.publish(message).await;
                        self.batch.pop_front();
                        match published {
                            Ok(()) => continue,
                            Err(refused) => refused,
                        }
                    }
                    Err(refused) => refused,
                };
                // Shut down meanwhile: close the job directly, as a refused outcome is.
                tracing::warn!(%refused, "outcome not published; closing the job directly");
                close_unpublished(&inner, refused.into_inner());
            }
        }
        self.done = true;
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        for message in std::mem::take(&mut self.batch) {
            close_unpublished(&self.inner, message);
        }
        for message in self.inner.overflow.take_all() {
            close_unpublished(&self.inner, message);
        }
    }
}

/// Closes the job of a terminal message that did not reach the bus, with its outcome.
fn close_unpublished(inner: &Inner, message: RequestCompletionMessage) {
    if let Some(request_id) = message.request_id().cloned() {
        inner.complete(&request_id, outcome_of(message));
    }
}

/// The terminal message of a request.
pub(crate) fn message_of(info: TaskInfo, outcome: Outcome) -> RequestCompletionMessage {
    match outcome {
        Ok(result) => RequestCompletionMessage::Success(RequestSuccess { info, result }),
        Err(error) => RequestCompletionMessage::Failure(RequestFailure { info, error }),
    }
}

/// The outcome a terminal message carries.
pub(crate) fn outcome_of(message: RequestCompletionMessage) -> Outcome {
    match message {
        RequestCompletionMessage::Success(m) => Ok(m.result),
        RequestCompletionMessage::Failure(m) => Err(m.error),
        // Never: only terminal messages are made here.
        _ => Err(TaskError::strategy("not a terminal message")),
    }
}
