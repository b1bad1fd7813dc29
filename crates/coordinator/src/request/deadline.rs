//! [`Expiry`]: a request's deadline, on the runtime it was submitted on.

use std::sync::{Arc, Weak};

use task_core::TaskError;

use super::RequestCell;

/// The deadline of a request, waited for on the runtime it was submitted on. Dropped without
/// firing while the request is open (that runtime shut down), it ends the request cancelled:
/// nothing would keep its deadline any more. Dropped after the request ended (its timer
/// aborted), it does nothing.
pub(crate) struct Expiry(Option<Weak<RequestCell>>);

impl Expiry {
    pub(crate) fn new(cell: &Arc<RequestCell>) -> Self {
        Self(Some(Arc::downgrade(cell)))
    }

    /// Ends the request as timed out, if it is still open. One that was retried also says why
    /// its last failed attempt failed, cause by cause: no other outcome will.
    pub(crate) fn fire(mut self, timeout: std::time::Duration) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            let timed_out = |ending: &super::Ending| {
                let mut message =
                    format!("the request did not end within its timeout of {timeout:?}");
                if let Some((attempt, error)) = ending.retry.as_deref().and_then(last_failure) {
                    if error.is_timeout() {
                        // It says which attempt it was.
                        message.push_str(&format!(", after {error:#}"));
                    } else {
                        message.push_str(&format!(", after attempt {attempt} failed: {error:#}"));
                    }
                }
                Err(TaskError::timed_out(message))
            };
            cell.end_with(timed_out, true);
        }
    }
}

/// The last attempt that failed and was retried, and its error: the one whose backoff is under
/// way, or the one before the attempt under way.
fn last_failure(retry: &super::Retry) -> Option<(u32, &TaskError)> {
    match &retry.backoff {
        Some((_, error)) => Some((retry.attempt, error)),
        None => (retry.last_failure.as_ref()).map(|(attempt, error)| (*attempt, error)),
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            let lost = TaskError::cancelled(
                "the runtime the request was submitted on shut down before its deadline",
            );
            cell.stop(Err(lost), true);
        }
    }
}
