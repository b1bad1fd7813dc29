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
/// the events its node broadcast, then its [`Ended`](Self::Ended). A request's children join
/// after it, and those its end cancels end before it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TreeEvent {
    /// A request joined the tree (the request asking for the tree first, then each request
    /// submitted below it): its id, its node's, its parent node's and its node's name.
    Joined(TaskInfo),
    /// The node of `request_id` broadcast `event`.
    Event {
        /// The request whose node broadcast it.
        request_id: RequestId,
        /// The event, as broadcast.
        event: Arc<str>,
    },
    /// The request ended: its job's result and, unless it succeeded, why.
    Ended {
        /// The request that ended.
        request_id: RequestId,
        /// Its job's result.
        result: JobResult,
        /// Why it did not succeed; `None` when it did.
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

    /// Keeps `event` for the reader (an ending one counts its request out), without waking it.
    fn keep(&self, event: TreeEvent) {
        let mut tree = lock(&self.0);
        if matches!(event, TreeEvent::Ended { .. }) {
            tree.open = tree.open.saturating_sub(1);
        }
        if let Some(unread) = tree.unread.as_mut() {
            unread.push_back(event);
        }
    }

    /// Wakes the reader, if it waits.
    fn wake(&self) {
        let waker = lock(&self.0).waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
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
    /// do, and nothing set, for a request in no tree. Its readers are woken as it starts
    /// ([`wake_trees`](Self::wake_trees)), outside the lock.
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
            tree.keep(TreeEvent::Joined(info.clone()));
        }
        // Set once: a request is recorded once.
        let _ = self.trees.set(trees);
    }

    /// Wakes the readers of its trees to its joining: as it starts.
    pub(crate) fn wake_trees(&self) {
        self.trees
            .get()
            .into_iter()
            .flatten()
            .for_each(|tree| tree.wake());
    }

    /// Hands `event` to each tree it belongs to.
    fn to_trees(&self, event: impl Fn() -> TreeEvent) {
        for tree in self.trees.get().into_iter().flatten() {
            tree.keep(event());
            tree.wake();
        }
    }

    /// Hands an event of its node to its trees.
    pub(super) fn tree_event(&self, info: &TaskInfo, event: &Arc<str>) {
        self.to_trees(|| TreeEvent::Event {
            request_id: info.request_id().clone(),
            event: Arc::clone(event),
        });
    }

    /// Tells its trees that it ended with `outcome`.
    pub(super) fn tree_ended(&self, info: &TaskInfo, outcome: &task_core::Outcome) {
        self.to_trees(|| TreeEvent::Ended {
            request_id: info.request_id().clone(),
            result: JobResult::of(outcome),
            error: outcome.as_ref().err().cloned(),
        });
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
