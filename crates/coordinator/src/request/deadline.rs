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

    /// Ends the request as timed out, if it is still open. One that waited out a backoff says
    /// why its last attempt failed: no other outcome will.
    pub(crate) fn fire(mut self, timeout: std::time::Duration) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            let timed_out = |ending: &super::Ending| {
                let mut message =
                    format!("the request did not end within its timeout of {timeout:?}");
                let retry = ending.retry.as_deref();
                if let Some((retry, (_, last))) =
                    retry.and_then(|retry| Some((retry, retry.backoff.as_ref()?)))
                {
                    let attempt = retry.attempt;
                    message.push_str(&format!(
                        " while it waited to retry; attempt {attempt} failed: {last}"
                    ));
                }
                Err(TaskError::timed_out(message))
            };
            cell.end_with(timed_out, true);
        }
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
