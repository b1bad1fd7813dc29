//! A request's tree: the children it adopts, which it hands up to the request above as it ends,
//! and the stop of everything below a request that is cancelled.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use task_core::TaskError;

use super::{Ending, RequestCell, lock};

impl RequestCell {
    /// Stops every request submitted from inside this one, and theirs in turn: each still open
    /// is marked cancelled (so its run never starts, or is told to stop) and its ending taken,
    /// to be finished (closed, announced, answered) by the caller.
    pub(super) fn stop_children(&self) -> Vec<(Arc<RequestCell>, Ending)> {
        let pending: Vec<Arc<RequestCell>> = lock(&self.children)
            .list
            .drain(..)
            .filter_map(|child| child.upgrade())
            .collect();
        Self::stop_tree(pending)
    }

    /// Stops the requests in `pending` and every request below them, as
    /// [`stop_children`](Self::stop_children) does.
    fn stop_tree(mut pending: Vec<Arc<RequestCell>>) -> Vec<(Arc<RequestCell>, Ending)> {
        let mut stopped = Vec::new();
        while let Some(cell) = pending.pop() {
            if cell.tree_cancelled.swap(true, Ordering::SeqCst) {
                continue;
            }
            cell.children_cancelled.notify_waiters();
            // A child that ended already keeps its outcome, and reads as cancelled only if it
            // was; its own children are cancelled all the same.
            let ending = {
                let mut slot = lock(&cell.ending);
                let ending = slot.take().map(Ending::taken);
                if ending.is_some() {
                    cell.cancelled.store(true, Ordering::SeqCst);
                }
                ending
            };
            if let Some(ending) = ending {
                cell.cancel_waker.wake();
                stopped.push((Arc::clone(&cell), ending));
            }
            pending.extend(
                lock(&cell.children)
                    .list
                    .drain(..)
                    .filter_map(|child| child.upgrade()),
            );
        }
        // Each was stopped before those below it: they are finished first.
        stopped.reverse();
        stopped
    }

    /// `taken` (the endings taken from open requests, all at once) ordered so that each request
    /// comes after those below it: deepest first in the tree of adopters, in their order at
    /// equal depth.
    pub(super) fn deepest_first(
        mut taken: Vec<(Ending, Arc<RequestCell>)>,
    ) -> Vec<(Ending, Arc<RequestCell>)> {
        let mut depths: HashMap<*const RequestCell, usize> = HashMap::new();
        let mut depth = |cell: &Arc<RequestCell>| {
            // Up to the top, or to a request whose depth is known, then down again.
            let (mut path, mut up, mut below_known) = (Vec::new(), Some(Arc::clone(cell)), 0);
            while let Some(at) = up {
                if let Some(&known) = depths.get(&Arc::as_ptr(&at)) {
                    below_known = known + 1;
                    break;
                }
                path.push(Arc::as_ptr(&at));
                up = at.adopter();
            }
            for (i, at) in path.iter().rev().enumerate() {
                depths.insert(*at, below_known + i);
            }
            depths[&Arc::as_ptr(cell)]
        };
        taken.sort_by_cached_key(|(_, cell)| std::cmp::Reverse(depth(cell)));
        taken
    }

    /// Records `child` as submitted from inside this request, to be cancelled with it. Returns
    /// whether this request is already cancelled: the caller then cancels the child (outside the
    /// table lock).
    pub(crate) fn adopt(&self, child: &Arc<RequestCell>) -> bool {
        // A task naming its own node as its parent finds its own request in the table: adopted
        // by itself, its adopter link would be a cycle (the walk up the adopters would never
        // end, and the cell would keep itself alive).
        if std::ptr::eq(self, Arc::as_ptr(child)) {
            return false;
        }
        let replaced = {
            let mut children = lock(&self.children);
            if let Some(handed_to) = children.handed_to.clone() {
                drop(children);
                return self.pass_up(child, &handed_to);
            }
            push_child(&mut children.list, Arc::downgrade(child));
            // The child keeps this request alive while it is open, so that this list (and
            // through it the child) stays reachable from the tree above even after this request
            // ended. Linked under the list's lock: a hand-up draining the list comes after, and
            // its link is the one that stays.
            self.me
                .upgrade()
                .and_then(|me| lock(&child.parent).replace(me))
        };
        // Dropped outside the locks.
        drop(replaced);
        // After the push: a cancellation either drains the child above or is seen here.
        self.cancels_children()
    }

    /// Adopts `child` for a request that handed its children up already (to `handed_to`), as
    /// it ended: the child goes on up to where they went, or to where this request is linked
    /// now, and is cancelled if this request's tree was. Nothing above: it links nowhere.
    fn pass_up(&self, child: &Arc<RequestCell>, handed_to: &Weak<RequestCell>) -> bool {
        let cancelled = self.cancels_children();
        match self.adopter().or_else(|| handed_to.upgrade()) {
            Some(up) => up.adopt(child) || cancelled,
            None => {
                let mine =
                    lock(&child.parent).take_if(|adopter| std::ptr::eq(Arc::as_ptr(adopter), self));
                drop(mine);
                cancelled
            }
        }
    }

    /// Whether the children it adopts from now on are born cancelled: it was cancelled, its
    /// tree was, the attempt under way ran past its attempt timeout (what that attempt's node
    /// still submits is stopped with it), or it waits out a backoff after a failed attempt
    /// whose children it ends.
    pub(crate) fn cancels_children(&self) -> bool {
        self.run_cancelled()
            || self.tree_cancelled.load(Ordering::SeqCst)
            || self.between_attempts.load(Ordering::SeqCst)
    }

    /// After a failed attempt of a request that ends its children, before the next: ends the
    /// children that attempt left open, and has what its work still submits (or hands up)
    /// until the next attempt starts born cancelled.
    pub(super) fn end_attempt_children(&self) {
        self.between_attempts.store(true, Ordering::SeqCst);
        self.children_cancelled.notify_waiters();
        Self::finish_stopped(self.stop_children());
    }

    /// The next attempt starts: the children it submits are its own.
    pub(super) fn attempt_starts(&self) {
        self.between_attempts.store(false, Ordering::SeqCst);
    }

    /// Completes once [`cancels_children`](Self::cancels_children) holds.
    pub(crate) async fn children_cancelled(&self) {
        loop {
            let notified = self.children_cancelled.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check: a cancellation after it wakes this.
            notified.as_mut().enable();
            if self.cancels_children() {
                return;
            }
            notified.await;
        }
    }

    /// The open request that adopted this one, if any.
    pub(crate) fn adopter(&self) -> Option<Arc<RequestCell>> {
        lock(&self.parent).clone()
    }

    /// As this request ends: hands the children it leaves open to the request that adopted it
    /// (cancelling them if that one is cancelled meanwhile), then lets go of that request. With
    /// no such request, nothing above can cancel them any more. The children's links move before
    /// this one's goes, so a walk up the tree passing here finds the way on ([`Up`]).
    pub(super) fn hand_children_up(&self) {
        let parent = self.adopter();
        let children: Vec<Arc<RequestCell>> = {
            let mut children = lock(&self.children);
            // A child adopted from now on goes on up ([`adopt`](Self::adopt)): none is left in
            // a list nobody hands up any more, linked to a request whose own link goes.
            (children.handed_to)
                .get_or_insert_with(|| parent.as_ref().map_or_else(Weak::new, Arc::downgrade));
            (children.list.drain(..))
                .filter_map(|child| child.upgrade())
                .collect()
        };
        match &parent {
            Some(parent) => Self::hand_up(parent, children),
            None => {
                for child in children {
                    let mine = lock(&child.parent)
                        .take_if(|adopter| std::ptr::eq(Arc::as_ptr(adopter), self));
                    drop(mine);
                }
            }
        }
        // Dropped outside the lock.
        let gone = lock(&self.parent).take();
        drop((gone, parent));
    }

    /// Moves `children` (taken from an ended request's list) into `parent`'s list. One that
    /// `parent` adopts cancelled (it was cancelled, or its tree was, after its list was
    /// drained) is cancelled with its whole tree: ended already, it may still hold open
    /// children in its list (adopted late, or handed up to it as it ended), which
    /// `cancel_with_parent` would not reach (it does nothing to an ended request).
    fn hand_up(parent: &Arc<RequestCell>, children: Vec<Arc<RequestCell>>) {
        for child in children {
            if parent.adopt(&child) {
                child.cancel_tree_with_parent();
            }
        }
    }

    /// Cancels this request, open or ended, as its parent was, and every open request below
    /// it: all are stopped before any is finished (as [`end_with`](Self::end_with) does).
    fn cancel_tree_with_parent(self: &Arc<Self>) {
        Self::finish_stopped(Self::stop_tree(vec![Arc::clone(self)]));
    }

    /// Ends each request [`stop_tree`](Self::stop_tree) stopped, as cancelled with its parent
    /// (closed, announced, answered).
    pub(super) fn finish_stopped(stopped: Vec<(Arc<RequestCell>, Ending)>) {
        Self::finish_stopped_with(stopped, |ending| ending.cancelled(true));
    }

    /// As [`finish_stopped`](Self::finish_stopped), each with the error `why` makes of it.
    pub(super) fn finish_stopped_with(
        stopped: Vec<(Arc<RequestCell>, Ending)>,
        why: impl Fn(&Ending) -> TaskError,
    ) {
        for (cell, ending) in stopped {
            let cancelled = Err(why(&ending));
            ending.finish(cancelled, true, &cell);
        }
    }

    /// Stops the open requests below one that ends with its children
    /// ([`SubmitOptions::cancel_children_on_end`](crate::SubmitOptions::cancel_children_on_end)),
    /// or whose last attempt ran past its attempt timeout (its children were stopped as it
    /// expired; this stops those that came before its end was decided), for the caller to finish
    /// before this one's end is applied; a child adopted from now on is born cancelled. Nothing
    /// for any other request.
    pub(super) fn stop_children_at_end(&self) -> Vec<(Arc<RequestCell>, Ending)> {
        if !self.ends_children && !self.attempt_expired() {
            return Vec::new();
        }
        self.tree_cancelled.store(true, Ordering::SeqCst);
        self.children_cancelled.notify_waiters();
        self.stop_children()
    }
}

/// A walk up the open requests above one, each step to the request that adopted the last. A
/// request ending as the walk reaches it hands its children up before it lets go of its own
/// link: the walk then goes on from the request below it, which was handed up past it.
pub(crate) struct Up {
    below: Option<Arc<RequestCell>>,
    /// Where the walk is.
    pub(crate) at: Arc<RequestCell>,
}

impl Up {
    /// A walk from `start`.
    pub(crate) fn from(start: Arc<RequestCell>) -> Self {
        Self {
            below: None,
            at: start,
        }
    }

    /// Steps up; `false` at the top.
    pub(crate) fn step(&mut self) -> bool {
        if let Some(up) = self.at.adopter() {
            self.below = Some(std::mem::replace(&mut self.at, up));
            return true;
        }
        let handed_past = self.below.as_ref().and_then(|below| below.adopter());
        match handed_past.filter(|up| !Arc::ptr_eq(up, &self.at)) {
            Some(up) => {
                self.at = up;
                true
            }
            None => false,
        }
    }
}

impl Drop for RequestCell {
    fn drop(&mut self) {
        // Lets a chain of ancestors that only this request kept go one by one, not in a
        // recursion as deep as the tree.
        let mut parent = owned(&mut self.parent).take();
        while let Some(cell) = parent {
            parent = Arc::try_unwrap(cell)
                .ok()
                .and_then(|mut cell| owned(&mut cell.parent).take());
        }
    }
}

/// The value of a mutex held uniquely (no lock taken); a poisoned one still holds consistent
/// data, as [`lock`] says.
fn owned<T>(mutex: &mut Mutex<T>) -> &mut T {
    mutex.get_mut().unwrap_or_else(|p| p.into_inner())
}

/// Pushes `child`, first forgetting the children that ended when the list is full, so that it
/// stays proportional to the children alive however many a request submits over its life. A
/// sweep that leaves the list over half full doubles its room: the next sweep is then as many
/// pushes away as there are children alive, so sweeping costs O(1) per child. Returns whether it
/// swept.
fn push_child<T>(children: &mut Vec<Weak<T>>, child: Weak<T>) -> bool {
    let full = children.len() == children.capacity();
    if full {
        children.retain(|c| c.strong_count() > 0);
        if children.len() * 2 > children.capacity() {
            children.reserve(children.len());
        }
    }
    children.push(child);
    full
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Weak};

    use task_core::{NodeId, RequestId, TaskInfo};

    use super::{Up, push_child};
    use crate::inner::Inner;
    use crate::request::{Ending, Owner, RequestCell, lock};

    fn cell(name: &str) -> Arc<RequestCell> {
        RequestCell::new(NodeId::new(name), tracing::Span::none(), Default::default())
    }

    /// An open request, of a coordinator already gone (it is answered directly as it ends).
    fn open(name: &str) -> Arc<RequestCell> {
        let cell = cell(name);
        cell.open(Ending {
            inner: Weak::<Inner>::new() as Weak<dyn Owner>,
            info: TaskInfo::new(RequestId::new(name), NodeId::new(name), None, "t"),
            permit: None,
            deadline: None,
            retry: None,
            held: None,
        });
        cell
    }

    fn is_open(cell: &RequestCell) -> bool {
        lock(&cell.ending).is_some()
    }

    /// `q`, a child of `g`, ends as `g` is cancelled: `q` drains its list (`p`, ended, which
    /// holds an open child `c`), `g`'s cancellation then drains `g`'s list (`q`, whose own is
    /// empty now), and `q` hands `p` up to `g`, which reads as cancelled. `c` is cancelled.
    #[test]
    fn an_ended_child_handed_up_to_a_cancelled_request_has_its_open_children_cancelled() {
        let (g, q, p, c) = (open("g"), open("q"), cell("p"), open("c"));
        assert!(!g.adopt(&q));
        assert!(!q.adopt(&p));
        // `p` ended (never opened here) and then adopted `c` (late, or handed up to it).
        assert!(!p.adopt(&c));
        // `q` ends: the first half of `hand_children_up`.
        *lock(&q.ending) = None;
        let parent = lock(&q.parent).take().unwrap();
        let children: Vec<_> = lock(&q.children)
            .list
            .drain(..)
            .filter_map(|c| c.upgrade())
            .collect();
        // `g` is cancelled meanwhile.
        g.cancel();
        assert!(!is_open(&g));
        // The second half.
        RequestCell::hand_up(&parent, children);
        assert!(
            !is_open(&c),
            "c is open, and in no list a cancellation drains"
        );
    }

    /// A walk up from `c` reaches `e` (`c`'s adopter); `e` then ends and hands `c` up to `p`
    /// before the walk steps on: the walk goes on to `p`, past `e`, which no longer links up.
    /// Without an open request above, the walk ends there.
    #[test]
    fn a_walk_up_goes_past_a_request_that_ends_under_it() {
        for with_top in [true, false] {
            let (p, e, c) = (open("p"), open("e"), open("c"));
            if with_top {
                assert!(!p.adopt(&e));
            }
            assert!(!e.adopt(&c));
            let mut up = Up::from(Arc::clone(&c));
            assert!(up.step() && Arc::ptr_eq(&up.at, &e));
            *lock(&e.ending) = None;
            e.hand_children_up();
            assert!(e.adopter().is_none());
            assert_eq!(up.step(), with_top, "with a request above: {with_top}");
            if with_top {
                assert!(Arc::ptr_eq(&up.at, &p));
                assert!(!up.step(), "p is the top");
            }
        }
    }

    /// `e` and its adopter `p` end at once, `e` having read `p` as its adopter: `p` hands its
    /// children (`e`) up to `g` and lets go of its link; `e` then hands `c` to `p`. `c` goes on
    /// to `g`: a walk up from `c` reaches `g` (a place `g` holds), and an ended `p` is not kept.
    #[test]
    fn a_child_handed_to_a_request_that_handed_its_own_up_goes_on_up() {
        let (g, p, e, c) = (open("g"), open("p"), open("e"), open("c"));
        assert!(!g.adopt(&p) && !p.adopt(&e) && !e.adopt(&c));
        // `e` ends: the first half of `hand_children_up`.
        *lock(&e.ending) = None;
        let adopter = e.adopter().unwrap();
        let children: Vec<_> = lock(&e.children)
            .list
            .drain(..)
            .filter_map(|c| c.upgrade())
            .collect();
        // `p` ends meanwhile, all of it.
        *lock(&p.ending) = None;
        p.hand_children_up();
        // The second half.
        RequestCell::hand_up(&adopter, children);
        drop(lock(&e.parent).take());
        drop(adopter);
        let mut up = Up::from(Arc::clone(&c));
        assert!(up.step(), "c links up");
        assert!(
            Arc::ptr_eq(&up.at, &g),
            "c's walk stops at {}",
            up.at.node_id()
        );
        let ended = Arc::downgrade(&p);
        drop((p, up));
        assert!(ended.upgrade().is_none(), "the ended p is kept alive");
        drop(g);
    }

    /// A parent keeping 1,000 children alive, the oldest ending as each new one comes: its list
    /// is swept rarely, and stays proportional to the children alive.
    #[test]
    fn a_parent_with_a_sliding_window_of_children_sweeps_its_list_rarely() {
        let (mut children, mut alive, mut sweeps) = (Vec::new(), VecDeque::new(), 0);
        for _ in 0..100_000 {
            let child = Arc::new(());
            sweeps += usize::from(push_child(&mut children, Arc::downgrade(&child)));
            alive.push_back(child);
            if alive.len() > 1_000 {
                alive.pop_front();
            }
        }
        assert!(sweeps <= 200, "{sweeps} sweeps for 100,000 children");
        assert!(children.len() <= 4_000, "{} kept", children.len());
    }
}
