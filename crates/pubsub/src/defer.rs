//! Dropping what a publish lets go of once the publisher's lock is released ([`defer_drops`]).
//!
//! A message may hold the last reference to a user's value (a shared output). When the ring
//! overwrites it for a subscriber that fell behind, it is dropped by the publish that overwrote
//! it, under the publisher's lock: a `Drop` run there would hold up every publisher, and one that
//! called the publisher would never return.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    /// Inside [`defer_drops`] on this thread: the messages let go of so far.
    static LATER: RefCell<Option<Vec<Box<dyn Any>>>> = const { RefCell::new(None) };
}

/// Runs `f`, then drops the messages the publishes inside it let go of (one the ring overwrote
/// for a subscriber that fell behind), each apart: a `Drop` that panics is logged, and the others
/// are still dropped. Inside another `defer_drops` on the same thread, the outermost drops them.
///
/// Every publish does this around its lock. Wrap more to keep such `Drop`s off a path: a
/// coordinator wraps the ending of a request, so that they run once its caller is answered.
///
/// ```
/// use std::sync::Arc;
///
/// let publisher = pubsub::Publisher::<Arc<String>>::with_capacity(1);
/// publisher.start()?;
/// let _laggard = publisher.subscribe_stream()?;
/// pubsub::defer_drops(|| -> Result<(), pubsub::PublishError<Arc<String>>> {
///     publisher.publish(Arc::new("first".into()))?;
///     // Overwrites the first, which the laggard never read: dropped once this closure returns.
///     publisher.publish(Arc::new("second".into()))
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn defer_drops<R>(f: impl FnOnce() -> R) -> R {
    let opened = LATER.try_with(|later| {
        let mut later = later.borrow_mut();
        later.is_none().then(|| *later = Some(Vec::new())).is_some()
    });
    if opened != Ok(true) {
        // An outer call drops them, or this thread's locals are being destroyed (a message is
        // then dropped as it is let go of).
        return f();
    }
    let _scope = Scope;
    f()
}

/// Ends the outermost [`defer_drops`] and drops what it kept, as `f` returns or unwinds.
struct Scope;

impl Drop for Scope {
    fn drop(&mut self) {
        let kept = LATER.try_with(|later| later.borrow_mut().take());
        for message in kept.ok().flatten().into_iter().flatten() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(message))) {
                let reason = task_core::panic_message(payload.as_ref());
                tracing::error!(%reason, "a message let go of by the bus panicked as it was dropped");
            }
        }
    }
}

/// Drops `message` now, or, inside [`defer_drops`], once it returns.
pub(crate) fn let_go<M: 'static>(message: M) {
    let now = LATER.try_with(|later| match later.borrow_mut().as_mut() {
        Some(later) => {
            later.push(Box::new(message));
            None
        }
        None => Some(message),
    });
    drop(now);
}
