//! [`RequestCell`]: the one shared record of an accepted request, and the completion its
//! strategy delivers to.
//!
//! It carries what the request's parties share: the cancellation flag (set by the caller's
//! handle, the parent's cancellation, the deadline or shutdown, read by whatever runs the
//! request), the children to cancel with it, the slot the caller's answer arrives in, and, while
//! the request is open, what ending it needs ([`Ending`]). Whoever takes the ending first ends the
//! request: the run's outcome, a cancellation, the deadline or a completion fed to
//! [`Coordinator::handle_item`](crate::Coordinator::handle_item). That is what makes the outcome
//! one, whatever races.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use pubsub::{RequestCompletionMessage, RequestFailure, RequestSuccess};
use task_core::{BoxFuture, Completion, CompletionSink, ErasedTask, NodeId, Outcome, TaskInfo};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;

use crate::coordinator::{CURRENT_NODE, Inner, NodeScope, StrategyRef};
use crate::options::{RetryPolicy, timer};

/// Locks `mutex`; no code that can panic runs under these locks, so a poisoned one still holds
/// consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared record of one accepted request.
pub(crate) struct RequestCell {
    cancelled: AtomicBool,
    /// Whatever runs the request waits here for cancellation.
    cancel_waker: AtomicWaker,
    /// Requests submitted from inside this one's node; cancelled with it.
    children: Mutex<Vec<Weak<RequestCell>>>,
    answer: Mutex<Answer>,
    /// What ending the request needs; `None` once it ended.
    ending: Mutex<Option<Ending>>,
    node_id: NodeId,
    span: tracing::Span,
    /// This cell, for the scope its node runs in and the completions of its attempts.
    me: Weak<RequestCell>,
}

#[derive(Default)]
struct Answer {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    answered: bool,
}

/// What ending an open request needs.
pub(crate) struct Ending {
    pub(crate) inner: Arc<Inner>,
    pub(crate) info: TaskInfo,
    /// Its place under its mode's concurrency limit, released when it ends.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
    /// The timer of its deadline, stopped when it ends first.
    pub(crate) deadline: Option<AbortHandle>,
    /// Set for a request with a retry policy.
    pub(crate) retry: Option<Box<Retry>>,
}

/// The attempts of a request with a retry policy.
pub(crate) struct Retry {
    pub(crate) strategy: StrategyRef,
    pub(crate) policy: RetryPolicy,
    /// A fresh copy of the task for the next attempt; `None` when the task cannot be replayed.
    pub(crate) next: Option<ErasedTask>,
    /// The attempt under way, from 1.
    pub(crate) attempt: u32,
    /// The runtime the request was submitted on, where later attempts start.
    pub(crate) runtime: tokio::runtime::Handle,
    /// The backoff before the next attempt, while one is waited for.
    pub(crate) backoff: Option<AbortHandle>,
}

impl Ending {
    /// Ends the request with `outcome`: releases its place, stops its timers, closes its job,
    /// hands the message to the bus (unless the outcome came from the bus) and answers the caller.
    fn finish(self, outcome: Outcome, announce: bool) {
        let Ending {
            inner,
            info,
            permit,
            deadline,
            retry,
        } = self;
        drop(permit);
        if let Some(timer) = deadline {
            timer.abort();
        }
        if let Some(backoff) = retry.and_then(|retry| retry.backoff) {
            backoff.abort();
        }
        inner.apply(info, outcome, announce);
    }
}

impl RequestCell {
    pub(crate) fn new(node_id: NodeId, span: tracing::Span) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            cancelled: AtomicBool::new(false),
            cancel_waker: AtomicWaker::new(),
            children: Mutex::new(Vec::new()),
            answer: Mutex::new(Answer::default()),
            ending: Mutex::new(None),
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

    /// Makes the request open: until it ends, `ending` is what ending it needs.
    pub(crate) fn open(&self, ending: Ending) {
        *lock(&self.ending) = Some(ending);
    }

    /// Forgets what ending the request needed, for a request that was not accepted after all.
    pub(crate) fn close_unaccepted(&self) {
        drop(lock(&self.ending).take());
    }

    /// Sets the timer of the request's deadline, unless it ended already.
    pub(crate) fn set_deadline(&self, timer: AbortHandle) {
        match lock(&self.ending).as_mut() {
            Some(ending) => ending.deadline = Some(timer),
            None => timer.abort(),
        }
    }

    /// Cancels the request and, through them, its children: each one's run is told to stop and
    /// ends cancelled now. Cancelling twice does nothing more.
    ///
    /// Never call it under the coordinator's table lock: ending a request takes that lock.
    pub(crate) fn cancel(self: &Arc<Self>) {
        self.stop(None, true);
    }

    /// Ends the request with `outcome` (a timeout, or a completion from the bus) and cancels its
    /// run and its children. `announce` says whether the bus hears of it.
    pub(crate) fn stop(self: &Arc<Self>, outcome: Option<Outcome>, announce: bool) {
        let mut pending: Vec<Arc<RequestCell>> = Vec::new();
        let mut cell = Arc::clone(self);
        let mut outcome = outcome;
        let mut announce = announce;
        loop {
            if !cell.cancelled.swap(true, Ordering::SeqCst) {
                cell.cancel_waker.wake();
                let ending = lock(&cell.ending).take();
                if let Some(ending) = ending {
                    let outcome = outcome
                        .take()
                        .unwrap_or_else(|| Err(ending.inner.cancelled()));
                    ending.finish(outcome, announce);
                }
                pending.extend(
                    lock(&cell.children)
                        .drain(..)
                        .filter_map(|child| child.upgrade()),
                );
            }
            // Children end cancelled, announced.
            outcome = None;
            announce = true;
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

    /// A completion for one attempt of this request.
    pub(crate) fn completion(&self) -> Option<Completion> {
        let me: Arc<dyn CompletionSink> = self.me.upgrade()?;
        Some(Completion::new(me))
    }

    /// Starts the next attempt of a request waiting out its backoff, unless it ended meanwhile.
    fn next_attempt(&self) {
        let (strategy, task, runtime, inner, request_id, attempt) = {
            let mut ending = lock(&self.ending);
            let Some(ending) = ending.as_mut().filter(|_| !self.is_cancelled()) else {
                return;
            };
            let Some(retry) = ending.retry.as_mut() else {
                return;
            };
            let Some(task) = retry.next.take() else {
                return;
            };
            retry.backoff = None;
            retry.next = task.replay();
            retry.attempt += 1;
            (
                Arc::clone(&retry.strategy),
                task,
                retry.runtime.clone(),
                Arc::clone(&ending.inner),
                ending.info.request_id().clone(),
                retry.attempt,
            )
        };
        inner.record_attempt(&request_id);
        self.span.record("attempt", attempt);
        tracing::debug!(parent: &self.span, attempt, "starting another attempt");
        let Some(completion) = self.completion() else {
            return;
        };
        let _runtime = runtime.enter();
        execute(&strategy, task, completion);
    }
}

/// Hands `task` to `strategy`. A strategy that panics here has dropped the completion, which
/// ended the request as failed; the panic goes no further than a log line.
pub(crate) fn execute(strategy: &StrategyRef, task: ErasedTask, completion: Completion) {
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        strategy.execute(task, completion);
    }));
    if let Err(payload) = started {
        let reason = task_core::panic_message(payload.as_ref());
        tracing::error!(strategy = strategy.name(), %reason, "the strategy panicked in execute");
    }
}

impl CompletionSink for RequestCell {
    fn complete(&self, outcome: Outcome) {
        let ending = {
            let mut slot = lock(&self.ending);
            if self.is_cancelled() {
                // Ended by its cancellation (or its deadline) already.
                return;
            }
            let Some(ending) = slot.as_mut() else {
                return;
            };
            if let (Err(error), Some(retry)) = (&outcome, ending.retry.as_mut())
                && retry.next.is_some()
                && retry.policy.should_retry(retry.attempt, error)
            {
                let wait = retry.policy.backoff_after(retry.attempt);
                tracing::debug!(parent: &self.span, attempt = retry.attempt, %error, ?wait, "attempt failed; retrying");
                match timer() {
                    Ok(timer) => {
                        let me = self.me.clone();
                        let backoff = timer.spawn(async move {
                            // Saturates: a backoff too long to add to now waits forever (until
                            // the request is cancelled, times out or is shut down).
                            tokio::time::sleep(wait).await;
                            if let Some(cell) = me.upgrade() {
                                cell.next_attempt();
                            }
                        });
                        retry.backoff = Some(backoff.abort_handle());
                        return;
                    }
                    Err(timer_error) => {
                        tracing::warn!(%timer_error, "no timer for the backoff; not retrying");
                    }
                }
            }
            slot.take()
        };
        if let Some(ending) = ending {
            ending.finish(outcome, true);
        }
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

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        let runtime = tokio::runtime::Handle::try_current().ok().or_else(|| {
            lock(&self.ending)
                .as_ref()
                .and_then(|ending| ending.inner.runtime())
        });
        match runtime {
            Some(runtime) => drop(runtime.spawn(future)),
            // Dropped, the future's completion ends the request as failed.
            None => drop(future),
        }
    }
}

/// The terminal message of a request.
pub(crate) fn message_of(info: TaskInfo, outcome: Outcome) -> RequestCompletionMessage {
    match outcome {
        Ok(result) => RequestCompletionMessage::Success(RequestSuccess { info, result }),
        Err(error) => RequestCompletionMessage::Failure(RequestFailure { info, error }),
    }
}
