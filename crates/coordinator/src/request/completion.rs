//! The completion a request's strategy delivers to: the run's outcome, then another attempt
//! or the request's end; and the request's terminal message.

use std::task::{Context, Poll};
use std::time::Duration;

use pubsub::{RequestCompletionMessage, RequestFailure, RequestSuccess};
use task_core::{BoxFuture, Completion, CompletionSink, ErasedTask, NodeId, Outcome, TaskInfo};
use tokio::sync::oneshot;

use super::{Ending, RequestCell, StrategyRef, Up, lock, scope};

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

/// What a run's outcome leads to, decided under the request's lock.
enum Next {
    /// The request ends with the outcome.
    End(Ending),
    /// Another attempt after the failed attempt with this number, after waiting this long on
    /// this runtime, unless the receiver fires first (the request ended meanwhile).
    Retry(u32, Duration, tokio::runtime::Handle, oneshot::Receiver<()>),
}

impl CompletionSink for RequestCell {
    fn complete(&self, outcome: Outcome) {
        let outcome = self.attempt_outcome(outcome);
        // Whether another attempt follows is the policy's call, which may run the user's
        // predicate: asked outside the lock, and a panic in it means no.
        let wait = match &outcome {
            Err(error) => self.retry_wait(error),
            Ok(_) => None,
        };
        // Declared before the lock, so that it is dropped after it (see `Ending::owner`).
        let mut owner = None;
        let next = {
            let mut slot = lock(&self.ending);
            if self.is_cancelled() {
                // Ended by its cancellation (or its deadline) already.
                return;
            }
            let Some(ending) = slot.as_mut() else {
                return;
            };
            if let (Some(wait), Err(error)) = (wait, &outcome)
                && let Some(coordinator) = owner.insert(ending.owner())
                && !coordinator.is_closing()
                && let Some(retry) = ending.retry.as_mut()
            {
                let (stop, stopped) = tokio::sync::oneshot::channel();
                retry.backoff = Some((stop, error.clone()));
                retry.attempt_over();
                Next::Retry(retry.attempt, wait, retry.runtime.clone(), stopped)
            } else {
                match slot.take().map(Ending::taken) {
                    Some(ending) => Next::End(ending),
                    None => return,
                }
            }
        };
        match next {
            Next::End(ending) => ending.finish(outcome, true, self),
            // Scheduled after the lock is let go: see `schedule_attempt`.
            Next::Retry(attempt, wait, runtime, stop) => {
                if let Err(error) = &outcome {
                    tracing::debug!(parent: &self.span, attempt, %error, backoff = ?wait,
                        "the attempt failed; another follows after the backoff");
                }
                if self.ends_children {
                    // No request the attempt started is left open: the next one may submit the
                    // same children, under the same ids.
                    self.end_attempt_children();
                }
                self.schedule_attempt(wait, &runtime, stop);
            }
        }
    }

    fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        RequestCell::poll_cancelled(self, cx)
    }

    fn is_cancelled(&self) -> bool {
        self.run_cancelled()
    }

    fn has_outcome(&self) -> bool {
        RequestCell::is_cancelled(self)
    }

    fn run_over(&self) {
        RequestCell::run_over(self);
    }

    fn run_in_scope(&self, f: &mut dyn FnMut()) {
        let _span = self.span.enter();
        // On a thread of a strategy's own, outside any runtime, the coordinator's is entered, so
        // that the node submits its children there as any node can.
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => None,
            // Upgraded under the lock, dropped after it (see `Ending::owner`).
            Err(_) => {
                let owner = lock(&self.ending).as_ref().and_then(Ending::owner);
                owner.and_then(|owner| owner.runtime())
            }
        };
        let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
        scope::in_request(self, f);
    }

    fn any_open_ancestor(&self, found: &mut dyn FnMut(&NodeId) -> bool) -> bool {
        // Up the requests that adopted this one, open ones, whichever coordinator each belongs
        // to: a tree may pass through another coordinator and come back. No lock is held while
        // `found` runs.
        let Some(me) = self.me.upgrade() else {
            return false;
        };
        let mut up = Up::from(me);
        while up.step() {
            if found(up.at.node_id()) {
                return true;
            }
        }
        false
    }

    fn spawn(&self, future: BoxFuture<'static, ()>) {
        let runtime = tokio::runtime::Handle::try_current().ok().or_else(|| {
            // Upgraded under the lock, dropped after it (see `Ending::owner`).
            let owner = lock(&self.ending).as_ref().and_then(Ending::owner);
            owner?.runtime()
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
