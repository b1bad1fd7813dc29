//! A request's tree of events: what happens in the request and in every request below it,
//! kept in order for its handle ([`SubmitOptions::with_tree_events`]).
//!
//! [`SubmitOptions::with_tree_events`]: crate::SubmitOptions::with_tree_events

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use task_core::{RequestId, TaskError, TaskInfo};

use super::{RequestCell, lock};
use crate::JobResult;

/// What happened in a request's tree, as
/// [`RequestHandle::next_tree_event`](crate::RequestHandle::next_tree_event) reads it.
///
/// For each request of the tree, in the order it happened: its [`Joined`](Self::Joined), then
/// the events its node broadcast, then its [`Ended`](Self::Ended), once its job is closed (and
/// its message announced), just before its caller is answered. A request's children join after
/// it; a child it awaited, and the children its end cancels (a cancellation, the shutdown
/// deadline, [`cancel_children_on_end`]), end before it.
///
/// [`cancel_children_on_end`]: crate::SubmitOptions::cancel_children_on_end
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TreeEvent {
    /// A request joined the tree (the request asking for the tree first, then each request
    /// submitted below it).
    #[non_exhaustive]
    Joined {
        /// Its id, its node's, its parent node's and its node's name.
        info: TaskInfo,
    },
    /// The node of `request_id` broadcast `event`.
    #[non_exhaustive]
    Event {
        /// The request whose node broadcast it.
        request_id: RequestId,
        /// The event, as broadcast.
        event: Arc<str>,
    },
    /// The request ended: its job's result and, unless it succeeded, why (as
    /// [`Job::result`](crate::Job::result) and [`Job::error`](crate::Job::error) say).
    #[non_exhaustive]
    Ended {
        /// The request that ended.
        request_id: RequestId,
        /// Its job's result.
        result: JobResult,
        /// Why it did not succeed: `Some` exactly when `result` is not a success.
        error: Option<TaskError>,
    },
}

/// The events of one tree, shared by its requests' cells and read by the handle of the request
/// that asked for them.
pub(crate) struct TreeEvents(Mutex<Tree>);

struct Tree {
    /// Kept until read; `None` once the handle is gone.
    unread: Option<VecDeque<TreeEvent>>,
    /// The requests of the tree that have not ended: the tree's events end with the last.
    open: usize,
    waker: Option<Waker>,
}

impl TreeEvents {
    /// The events of a tree of one request, open.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Tree {
            unread: Some(VecDeque::new()),
            open: 1,
            waker: None,
        })))
    }

    /// Counts one more open request in the tree; `false`, counting nothing, once every request
    /// of the tree ended or its reader is gone.
    fn join(&self) -> bool {
        let mut tree = lock(&self.0);
        let joins = tree.open > 0 && tree.unread.is_some();
        tree.open += usize::from(joins);
        joins
    }

    /// Keeps `event` for the reader (an ending one counts its request out). Returns the
    /// reader's waker when `wake`, to wake outside any lock; otherwise the reader is woken later
    /// ([`RequestCell::wake_trees`]).
    fn keep(&self, event: TreeEvent, wake: bool) -> Option<Waker> {
        let mut tree = lock(&self.0);
        if matches!(event, TreeEvent::Ended { .. }) {
            tree.open = tree.open.saturating_sub(1);
        }
        tree.unread.as_mut()?.push_back(event);
        // Left in place when not woken now: taken, it would be lost.
        if wake { tree.waker.take() } else { None }
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<TreeEvent>> {
        let mut tree = lock(&self.0);
        if let Some(event) = tree.unread.as_mut().and_then(VecDeque::pop_front) {
            return Poll::Ready(Some(event));
        }
        if tree.open == 0 || tree.unread.is_none() {
            return Poll::Ready(None);
        }
        match &mut tree.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl RequestCell {
    /// Joins the trees of events it belongs to, as it is recorded (under the table's lock,
    /// before anything can end it): its own, when its caller asked for one, and each still open
    /// that `parent` (the request adopting it) belongs to; each keeps its joining. Nothing to
    /// do, and nothing set, for a request in no tree. Its readers are woken after the table's
    /// lock, as it starts or is queued to wait for a place ([`wake_trees`](Self::wake_trees)).
    pub(crate) fn join_trees(&self, parent: Option<&RequestCell>, info: &TaskInfo) {
        let parent = parent.filter(|parent| !std::ptr::eq(*parent, self));
        let inherited = parent.and_then(|parent| parent.trees.get());
        if !self.tree_root && inherited.is_none() {
            return;
        }
        let own = self.tree_root.then(TreeEvents::new);
        let joined = inherited.into_iter().flatten().filter(|tree| tree.join());
        let trees: Vec<_> = own.into_iter().chain(joined.cloned()).collect();
        for tree in &trees {
            let info = info.clone();
            drop(tree.keep(TreeEvent::Joined { info }, false));
        }
        // Set once: a request is recorded once.
        let _ = self.trees.set(trees);
    }

    /// Wakes the readers of its trees (to its joining).
    pub(crate) fn wake_trees(&self) {
        for tree in self.trees.get().into_iter().flatten() {
            let waker = lock(&tree.0).waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    /// Keeps `event` in each tree it belongs to; returns their readers' wakers, to wake
    /// outside any lock.
    fn to_trees(&self, event: impl Fn() -> TreeEvent) -> Vec<Waker> {
        let trees = self.trees.get().into_iter().flatten();
        trees.filter_map(|tree| tree.keep(event(), true)).collect()
    }

    /// Keeps an event of its node in its trees (called under its `ending` lock: the returned
    /// wakers are woken after it).
    pub(super) fn tree_event(&self, info: &TaskInfo, event: &Arc<str>) -> Vec<Waker> {
        self.to_trees(|| TreeEvent::Event {
            request_id: info.request_id().clone(),
            event: Arc::clone(event),
        })
    }

    /// Its end, as its trees will be told of it once its job is closed, before its caller is
    /// answered ([`tree_ended`](Self::tree_ended)); `None` for a request in no tree.
    pub(crate) fn tree_end(
        &self,
        info: &TaskInfo,
        outcome: &task_core::Outcome,
    ) -> Option<TreeEvent> {
        self.trees.get()?;
        Some(TreeEvent::Ended {
            request_id: info.request_id().clone(),
            result: JobResult::of(outcome),
            error: outcome.as_ref().err().cloned(),
        })
    }

    /// Tells its trees that it ended.
    pub(crate) fn tree_ended(&self, end: TreeEvent) {
        self.to_trees(|| end.clone())
            .into_iter()
            .for_each(Waker::wake);
    }

    /// The tree of events its caller asked for: the first of its trees.
    fn own_tree(&self) -> Option<&TreeEvents> {
        let trees = self.trees.get().filter(|_| self.tree_root)?;
        trees.first().map(Arc::as_ref)
    }

    /// The next event of the tree its caller asked for; `None` once every request of the tree
    /// ended and every event was read, or at once when it asked for none.
    pub(crate) fn poll_tree_event(&self, cx: &mut Context<'_>) -> Poll<Option<TreeEvent>> {
        self.own_tree()
            .map_or(Poll::Ready(None), |tree| tree.poll(cx))
    }

    /// Stops keeping the events of the tree its caller asked for: its handle is gone.
    pub(super) fn forget_tree(&self) {
        if let Some(tree) = self.own_tree() {
            let mut tree = lock(&tree.0);
            tree.unread = None;
            tree.waker = None;
        }
    }
}
