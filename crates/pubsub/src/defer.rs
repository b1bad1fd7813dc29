//! Dropping what a publish lets go of once the publisher's lock is released ([`defer_drops`]).
//!
//! A message may hold the last reference to a user's value (a shared output). When the ring
//! overwrites it for a subscriber that fell behind, it is dropped by the publish that overwrote
//! it, under the publisher's lock: a `Drop` run there would hold up every publisher, and one that
//! called the publisher would never return.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

thread_local! {
    /// How many [`DeferredDrops`] live on this thread, and whether [`LATER`] holds a message.
    static DEPTH: Cell<(usize, bool)> = const { Cell::new((0, false)) };
    /// The messages let go of while one does; its room stays between guards, up to
    /// [`KEPT_ROOM`] slots.
    static LATER: RefCell<Vec<Arc<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// The most room for kept messages that stays with a thread between guards.
const KEPT_ROOM: usize = 64;

/// Until the guard it returns is dropped, the messages that publishes on this thread let go of
/// (one the ring overwrote for a subscriber that fell behind) are kept; the guard then drops them,
/// each apart: a `Drop` that panics is logged, and the others are still dropped. Inside another
/// guard on the same thread, the outermost one drops them.
///
/// Every publish holds one around its lock. Hold one longer to keep such `Drop`s off a path: a
/// coordinator holds one while it ends a request, so that they run once its caller is answered.
///
/// ```
/// use std::sync::Arc;
///
/// let publisher = pubsub::Publisher::<Arc<String>>::with_capacity(1);
/// publisher.start()?;
/// let _laggard = publisher.subscribe_stream()?;
/// let later = pubsub::defer_drops();
/// publisher.publish(Arc::new("first".into()))?;
/// // Overwrites the first, which the laggard never read: dropped with `later`.
/// publisher.publish(Arc::new("second".into()))?;
/// drop(later);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn defer_drops() -> DeferredDrops {
    DEPTH.with(|depth| {
        let (guards, kept) = depth.get();
        depth.set((guards + 1, kept));
    });
    DeferredDrops {
        _this_thread: PhantomData,
    }
}

/// Drops, when dropped, the messages let go of on its thread since it was made
/// ([`defer_drops`]).
#[must_use = "the messages are dropped when the guard is"]
#[derive(Debug)]
pub struct DeferredDrops {
    /// The count is the thread's own.
    _this_thread: PhantomData<*const ()>,
}

impl Drop for DeferredDrops {
    fn drop(&mut self) {
        let outermost_kept = DEPTH.with(|depth| {
            let (guards, kept) = depth.get();
            // The outermost guard takes what is kept.
            depth.set((guards - 1, kept && guards > 1));
            kept && guards == 1
        });
        if !outermost_kept {
            return;
        }
        // Taken out first: a `Drop` below may publish, and keep what it lets go of.
        let kept = LATER.try_with(|later| std::mem::take(&mut *later.borrow_mut()));
        let mut kept = kept.unwrap_or_default();
        for message in kept.drain(..) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| drop(message))) {
                let reason = task_core::panic_message(payload.as_ref());
                tracing::error!(%reason, "a message let go of by the bus panicked as it was dropped");
            }
        }
        // Its room goes back for the next publish, which would otherwise allocate it again;
        // not the room a long guard's burst took, which would stay with the thread for good.
        if kept.capacity() <= KEPT_ROOM {
            let _ = LATER.try_with(|later| {
                let mut later = later.borrow_mut();
                if later.is_empty() {
                    *later = kept;
                }
            });
        }
    }
}

/// Drops `message` now, or, while a [`DeferredDrops`] lives on this thread, with it.
pub(crate) fn let_go<M: 'static>(message: M) {
    if deferring() {
        keep(Arc::new(message));
    }
}

/// [`let_go`] for a message the ring shares: kept as it is, without another allocation.
pub(crate) fn let_go_shared<M: 'static>(message: Arc<M>) {
    if deferring() {
        keep(message);
    }
}

/// Whether a [`DeferredDrops`] lives on this thread.
fn deferring() -> bool {
    DEPTH.with(Cell::get).0 > 0
}

fn keep(message: Arc<dyn Any>) {
    // Err: this thread's locals are being destroyed; the message went with the closure.
    let _ = LATER.try_with(|later| later.borrow_mut().push(message));
    DEPTH.with(|depth| depth.set((depth.get().0, true)));
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// The room one long guard's burst took goes with it, not with the thread; a publish's own
    /// room stays for the next.
    #[test]
    fn the_room_kept_between_guards_stays_small() {
        let publisher = crate::Publisher::<Arc<u64>>::with_capacity(1);
        publisher.start().unwrap();
        let _laggard = publisher.subscribe_stream().unwrap();
        {
            let _later = super::defer_drops();
            for i in 0..10_000 {
                publisher.publish(Arc::new(i)).unwrap();
            }
        }
        publisher.publish(Arc::new(0)).unwrap();
        let room = super::LATER.with(|later| later.borrow().capacity());
        assert!(
            (1..=super::KEPT_ROOM).contains(&room),
            "{room} slots kept on this thread"
        );
    }
}
