//! A request's events: what its node broadcasts, handed to the bus and kept for its caller.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use task_core::context::EventSink;

use super::{RequestCell, lock};

impl RequestCell {
    /// The next event kept for the caller; `None` once the request was answered and every event
    /// read, or at once when the caller did not ask for events.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Option<Arc<str>>> {
        let mut answer = lock(&self.answer);
        let Some(events) = answer.events.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(event) = events.pop_front() {
            return Poll::Ready(Some(event));
        }
        if answer.answered {
            // Answered after its ending was taken: no event can follow.
            return Poll::Ready(None);
        }
        match &mut answer.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Stops keeping events, its own and its tree's, for the caller: its handle is gone.
    pub(crate) fn forget_events(&self) {
        if self.keeps_events {
            lock(&self.answer).events = None;
        }
        self.forget_tree();
    }
}

impl EventSink for RequestCell {
    fn broadcast(&self, event: Arc<str>) {
        // What announcing it lets go of is dropped at the end, after the locks are released and
        // the readers woken.
        let _later = pubsub::defer_drops();
        // Under the lock that ending takes: the event is handed on before the terminal message,
        // or, the request having ended, dropped.
        let guard = lock(&self.ending);
        let Some(ending) = guard.as_ref() else {
            return;
        };
        let waker = {
            let mut answer = lock(&self.answer);
            match answer.events.as_mut() {
                Some(events) => {
                    events.push_back(Arc::clone(&event));
                    answer.waker.take()
                }
                None => None,
            }
        };
        let tree_wakers = self.tree_event(&ending.info, &event);
        let inner = ending.inner.upgrade();
        if let Some(inner) = &inner {
            inner.announce_event(&ending.info, event);
        }
        // Released before waking the caller, and before the coordinator may be dropped (this
        // may hold the last handle to it).
        drop(guard);
        drop(inner);
        if let Some(waker) = waker {
            waker.wake();
        }
        tree_wakers.into_iter().for_each(Waker::wake);
    }
}
