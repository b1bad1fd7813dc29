//! A request's attempts after the first: whether its retry policy grants one, the backoff before
//! it, and the copy of the task it runs.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::{self, Either};
use task_core::{ErasedTask, Outcome, TaskError};
use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::completion::execute;
use super::{Ending, RequestCell, lock};
use crate::options::RetryPolicy;

/// The attempts of a request with a retry policy.
pub(crate) struct Retry {
    /// The request's mode, by its position in the coordinator: later attempts run on its
    /// strategy, which the request does not keep alive while it waits (the coordinator does).
    pub(crate) mode: usize,
    pub(crate) policy: RetryPolicy,
    /// A fresh copy of the task for the next attempt; `None` when the task cannot be replayed.
    pub(crate) next: Option<ErasedTask>,
    /// The attempt under way, from 1.
    pub(crate) attempt: u32,
    /// The runtime the request was submitted on, where later attempts start.
    pub(crate) runtime: tokio::runtime::Handle,
    /// While a backoff before the next attempt is waited out: what stops its timer (sent or
    /// dropped), and the error that ended the attempt before it (the request's outcome if no
    /// attempt follows).
    pub(crate) backoff: Option<(oneshot::Sender<()>, TaskError)>,
    /// The timer of the attempt under way's timeout, when the policy sets one.
    pub(crate) timer: Option<AbortHandle>,
    /// The error the attempt under way ends with, once it ran past its attempt timeout.
    pub(crate) expired: Option<TaskError>,
    /// The last attempt that failed and was retried, and its error, once the next one began:
    /// what a deadline that ends the request then says beside its own reason.
    pub(crate) last_failure: Option<(u32, TaskError)>,
}

impl Retry {
    /// The attempt under way is over: its timer stops.
    pub(crate) fn attempt_over(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Drop for Retry {
    fn drop(&mut self) {
        self.attempt_over();
    }
}

impl RequestCell {
    /// Starts the timer of the attempt under way, if the request's retry policy sets an attempt
    /// timeout: past it, [`expire_attempt`](Self::expire_attempt).
    pub(crate) fn time_attempt(&self) {
        let (runtime, timeout, attempt) = {
            let slot = lock(&self.ending);
            let Some(retry) = slot.as_ref().and_then(|ending| ending.retry.as_ref()) else {
                return;
            };
            let Some(timeout) = retry.policy.get_attempt_timeout() else {
                return;
            };
            (retry.runtime.clone(), timeout, retry.attempt)
        };
        // A timeout too long to add to now never fires.
        let Some(at) = crate::inner::deadline_after(timeout) else {
            return;
        };
        let guard = AttemptTimer(Some(self.me.clone()), attempt);
        // Spawned outside the lock: on a runtime that shut down, the future (and the guard,
        // which takes the lock) is dropped right here.
        let timer = runtime.spawn(async move {
            tokio::time::sleep_until(at).await;
            guard.fire(timeout);
        });
        let mut slot = lock(&self.ending);
        match slot.as_mut().and_then(|ending| ending.retry.as_mut()) {
            Some(retry) if retry.attempt == attempt => {
                retry.attempt_over();
                retry.timer = Some(timer.abort_handle());
            }
            _ => timer.abort(),
        }
    }

    /// Whether attempt `attempt` is under way: the request is open, not waiting out a backoff,
    /// and the attempt's run is out.
    fn attempt_under_way(&self, attempt: u32) -> bool {
        let slot = lock(&self.ending);
        let retry = slot.as_ref().and_then(|ending| ending.retry.as_ref());
        retry.is_some_and(|retry| retry.attempt == attempt && retry.backoff.is_none())
            && lock(&self.run).out
    }

    /// Attempt `attempt` ran past its attempt timeout: if its run is still out, it is told
    /// to stop (as a cancellation tells it) and the requests it submitted are cancelled. The
    /// request stays open: once the run has stopped, the attempt fails as timed out, and the
    /// retry policy decides whether another follows.
    fn expire_attempt(self: &Arc<Self>, attempt: u32, timeout: Duration) {
        {
            let mut slot = lock(&self.ending);
            let Some(retry) = slot.as_mut().and_then(|ending| ending.retry.as_mut()) else {
                return;
            };
            // Its run delivered (or was dropped) before this: the attempt ends with what it
            // delivered, which `complete` is applying (the policy may still be deciding), and
            // the children it left keep running as a failed attempt's do.
            let run_over = !lock(&self.run).out;
            if retry.attempt != attempt || retry.backoff.is_some() || run_over {
                return;
            }
            retry.timer = None;
            retry.expired = Some(TaskError::timed_out(format!(
                "attempt {attempt} did not end within its attempt timeout of {timeout:?}"
            )));
            self.attempt_expired.store(true, Ordering::SeqCst);
        }
        tracing::debug!(parent: &self.span, attempt, ?timeout,
            "the attempt ran past its attempt timeout; it is told to stop");
        self.cancel_waker.wake();
        // Children waiting for a place are born cancelled now.
        self.children_cancelled.notify_waiters();
        Self::finish_stopped(self.stop_children());
    }

    /// The outcome an attempt's run delivered, as the attempt ends with it: a failure of an
    /// attempt that ran past its attempt timeout (the stop it was told) is that timeout.
    pub(super) fn attempt_outcome(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Err(error) if self.attempt_expired() => {
                let slot = lock(&self.ending);
                let retry = slot.as_ref().and_then(|ending| ending.retry.as_ref());
                Err(retry
                    .and_then(|retry| retry.expired.clone())
                    .unwrap_or(error))
            }
            outcome => outcome,
        }
    }

    /// The backoff before another attempt after `error`, if the request's retry policy grants
    /// one (and the task can be replayed, and shutdown has not begun).
    pub(super) fn retry_wait(&self, error: &TaskError) -> Option<std::time::Duration> {
        let (policy, attempt, owner) = {
            let slot = lock(&self.ending);
            let ending = slot.as_ref()?;
            let retry = ending.retry.as_ref()?;
            // Not replayable: no attempt can follow.
            retry.next.as_ref()?;
            (retry.policy.clone(), retry.attempt, ending.inner.clone())
        };
        // Read outside the lock (see `Ending::owner`); `complete` reads it again under it.
        if owner.upgrade().is_none_or(|owner| owner.is_closing()) {
            return None;
        }
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            policy
                .should_retry(attempt, error)
                .then(|| policy.backoff_after(attempt))
        }));
        decided.unwrap_or_else(|payload| {
            let reason = task_core::panic_message(payload.as_ref());
            tracing::warn!(parent: &self.span, %reason, "the retry policy's predicate panicked; not retrying");
            None
        })
    }

    /// Waits `wait` on `runtime` (whose time driver admission checked), then starts the next
    /// attempt there, unless `stop` fires first. If `runtime` is gone, the request ends with its
    /// last attempt's error. Called without the `ending` lock: a task spawned on a runtime that
    /// shut down is dropped at once, and its [`NextAttempt`] ends the request.
    pub(crate) fn schedule_attempt(
        &self,
        wait: std::time::Duration,
        runtime: &tokio::runtime::Handle,
        stop: oneshot::Receiver<()>,
    ) {
        let attempt = NextAttempt(Some(self.me.clone()));
        runtime.spawn(async move {
            // Saturates: a backoff too long for a timer waits forever (until the request is
            // cancelled, times out or is shut down).
            let sleep = std::pin::pin!(async {
                match crate::inner::deadline_after(wait) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => future::pending().await,
                }
            });
            if let Either::Left(_) = future::select(sleep, stop).await {
                attempt.start();
            }
        });
    }

    /// Ends a request that waits out a backoff before its next attempt with the error of its
    /// last attempt: after shutdown began, no attempt follows. Does nothing to a request that is
    /// running or has ended.
    pub(crate) fn end_backoff(&self) {
        let ending = {
            let mut slot = lock(&self.ending);
            let waiting = slot
                .as_ref()
                .and_then(|ending| ending.retry.as_ref())
                .is_some_and(|retry| retry.backoff.is_some());
            if !waiting {
                return;
            }
            slot.take().map(Ending::taken)
        };
        if let Some(mut ending) = ending {
            let last = ending.retry.as_mut().and_then(|retry| retry.backoff.take());
            if let Some((_stop, error)) = last {
                ending.finish(Err(error), true, self);
            }
        }
    }

    /// Starts the next attempt of a request waiting out its backoff, unless it ended meanwhile.
    ///
    /// The copy of the task for the attempt after this one is the user's code (a node's `Clone`,
    /// a portable node's decoding), so it is made outside the lock: the request stays in its
    /// backoff meanwhile, where a cancellation, its deadline or shutdown can still end it.
    fn next_attempt(&self) {
        let mut slot = lock(&self.ending);
        let Some(ending) = slot.as_mut().filter(|_| !self.is_cancelled()) else {
            return;
        };
        let (inner, request_id) = (ending.owner(), ending.info.request_id().clone());
        let taken = match (&inner, ending.retry.as_mut()) {
            (Some(inner), Some(retry)) if !inner.is_closing() => {
                retry.next.take().map(|task| (task, retry.mode))
            }
            _ => None,
        };
        drop(slot);
        // Shutdown began during the backoff, or the coordinator is gone: no more attempts.
        let (Some(inner), Some((task, mode))) = (inner, taken) else {
            return self.end_backoff();
        };
        let replayed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.replay()));
        let mut slot = lock(&self.ending);
        let closing = inner.is_closing();
        let attempt = match (replayed, slot.as_mut().and_then(|e| e.retry.as_mut())) {
            // Ended meanwhile: nothing more to do. The copy goes after the lock (it may hold the
            // coordinator's last handle, whose drop ends what is open).
            (_, None) => {
                drop(slot);
                return;
            }
            (Ok(following), Some(retry)) if !closing => {
                retry.next = following;
                let failed = retry
                    .backoff
                    .take()
                    .map(|(_, error)| (retry.attempt, error));
                retry.last_failure = failed.or(retry.last_failure.take());
                retry.expired = None;
                self.attempt_expired.store(false, Ordering::SeqCst);
                self.attempt_starts();
                retry.attempt += 1;
                retry.attempt
            }
            // Shutdown began while the copy was made: the request ends with its last error.
            (Ok(_), Some(_)) => {
                drop(slot);
                return self.end_backoff();
            }
            (Err(payload), Some(_)) => {
                let ending = slot.take().map(Ending::taken);
                drop(slot);
                if let Some(ending) = ending {
                    ending.finish(Err(TaskError::panic(payload)), true, self);
                }
                return;
            }
        };
        drop(slot);
        inner.record_attempt(&request_id, self);
        // On the event, not the span: a recorded span field would print once per attempt.
        tracing::debug!(parent: &self.span, attempt, "starting another attempt");
        if let Some(completion) = self.completion() {
            self.time_attempt();
            execute(&inner.strategy(mode), task, completion);
        }
    }
}

/// The timer of one attempt of a request, on the runtime the request was submitted on. Dropped
/// without firing while that attempt is under way (that runtime shut down), it ends the request
/// cancelled, as the request's deadline does: nothing would stop the attempt any more. Dropped
/// once the attempt is over (its timer aborted), it does nothing.
struct AttemptTimer(Option<Weak<RequestCell>>, u32);

impl AttemptTimer {
    fn fire(mut self, timeout: Duration) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            cell.expire_attempt(self.1, timeout);
        }
    }
}

impl Drop for AttemptTimer {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade())
            && cell.attempt_under_way(self.1)
        {
            let lost = TaskError::cancelled(
                "the runtime the request was submitted on shut down before its attempt timeout",
            );
            cell.stop(Err(lost), true);
        }
    }
}

/// The next attempt of a request, on its way to the runtime it was submitted on. Dropped without
/// starting (that runtime shut down), it ends the request with its last attempt's error.
struct NextAttempt(Option<Weak<RequestCell>>);

impl NextAttempt {
    fn start(mut self) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            cell.next_attempt();
        }
    }
}

impl Drop for NextAttempt {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            cell.end_backoff();
        }
    }
}
