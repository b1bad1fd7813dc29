//! [`RequestCell`]: the one shared record of an accepted request, and the completion its
//! strategy delivers to.
//!
//! It carries what the request's parties share: the cancellation flag (set by the caller's
//! handle, the parent's cancellation, the deadline or shutdown, read by whatever runs the
//! request), the children to cancel with it, the slot the caller's answer arrives in, and, while
//! the request is open, what ending it needs ([`Ending`]). Whoever takes the ending first ends the
//! request: the run's outcome, a cancellation, the deadline or a completion fed to
//! [`Coordinator::handle_item`](crate::Coordinator::handle_item). That is what makes the outcome
//! one, whatever races.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use task_core::TaskExecutionStrategy;
use task_core::{Completion, CompletionSink, NodeId, Outcome, TaskError, TaskInfo};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;

use crate::options::Output;

mod completion;
mod events;
mod retry;

pub(crate) use retry::Retry;

pub(crate) use completion::{execute, message_of};

tokio::task_local! {
    /// The node running on the current tokio task, and its request.
    pub(crate) static CURRENT_NODE: NodeScope;
}

/// What a running node's nested submissions need: its id (their parent) and its request, which
/// cancels them with it, even once its own job has closed.
#[derive(Clone)]
pub(crate) struct NodeScope {
    pub(crate) node: NodeId,
    pub(crate) request: Weak<RequestCell>,
}

/// The node running on the current tokio task or thread, if any.
///
/// Tasks submitted from inside a running node get that node as their parent automatically; this
/// is how nested calls are recorded. Async nodes are tracked per tokio task; nodes that a strategy
/// runs on a thread of its own are tracked through [`task_core::context`], which comes first: a
/// pool thread waiting for a child may run another node inside the first one's scope.
pub fn current_node() -> Option<NodeId> {
    task_core::context::current_node()
        .or_else(|| CURRENT_NODE.try_with(|scope| scope.node.clone()).ok())
}

/// A place under a mode's concurrency limit: held by a request, and shared with its children in
/// the same mode; freed when the last of them ends.
pub(crate) type Place = Arc<OwnedSemaphorePermit>;

/// A strategy as a coordinator holds it: shared, so one strategy may serve several modes.
pub type StrategyRef = Arc<dyn TaskExecutionStrategy>;

/// The coordinator a request belongs to, as its request sees it.
pub(crate) trait Owner: Send + Sync {
    /// Applies the request's outcome: closes its job, announces it and answers its caller.
    fn apply(&self, info: TaskInfo, outcome: Outcome, announce: bool, place: Option<Place>);
    /// Whether shutdown has begun.
    fn is_closing(&self) -> bool;
    /// Whether the shutdown deadline passed: what is still open then is cancelled.
    fn is_past_deadline(&self) -> bool;
    /// The strategy of the mode at `index`.
    fn strategy(&self, index: usize) -> StrategyRef;
    /// Counts one more attempt of the request in its job.
    fn record_attempt(&self, request_id: &str);
    /// The runtime the coordinator was started on, if any.
    fn runtime(&self) -> Option<tokio::runtime::Handle>;
    /// Hands an event of the request's node to the bus (never waiting for a subscriber).
    fn announce_event(&self, info: &TaskInfo, event: Arc<str>);
}

/// Locks `mutex`; no code that can panic runs under these locks, so a poisoned one still holds
/// consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared record of one accepted request.
pub(crate) struct RequestCell {
    cancelled: AtomicBool,
    /// Set once it was cancelled with its parent, ended or not: the children it submits from
    /// then on are born cancelled.
    tree_cancelled: AtomicBool,
    /// The output its typed caller takes; one taken moved goes to the bus as its text, not the
    /// value.
    output: Option<Output>,
    /// Whatever runs the request waits here for cancellation.
    cancel_waker: AtomicWaker,
    /// Requests submitted from inside this one's node; cancelled with it.
    children: Mutex<Vec<Weak<RequestCell>>>,
    /// The open request that adopted this one as its child, kept while this one is open: its
    /// list holds this one weakly. When this one ends it hands the children it leaves open up
    /// to that request ([`hand_children_up`](Self::hand_children_up)) and lets it go, so a
    /// cancellation of the tree above still reaches them, and a chain of requests that each
    /// ended (one handing its work on to the next) is not kept alive by its newest one.
    parent: Mutex<Option<Arc<RequestCell>>>,
    answer: Mutex<Answer>,
    /// What ending the request needs; `None` once it ended.
    ending: Mutex<Option<Ending>>,
    node_id: NodeId,
    span: tracing::Span,
    /// This cell, for the scope its node runs in and the completions of its attempts.
    me: Weak<RequestCell>,
}

#[derive(Default)]
struct Answer {
    outcome: Option<Outcome>,
    waker: Option<Waker>,
    answered: bool,
    /// The node's events not read yet, when the caller asked for them.
    events: Option<VecDeque<Arc<str>>>,
}

/// What ending an open request needs.
pub(crate) struct Ending {
    /// Weak: the coordinator's table holds the request's cell, which holds this. Once every
    /// handle of the coordinator is dropped, it goes (and its strategies with it) even while
    /// requests are open; their callers are answered with a failure then.
    pub(crate) inner: Weak<dyn Owner>,
    pub(crate) info: TaskInfo,
    /// Its place under its mode's concurrency limit (perhaps its parent's, shared), let go
    /// when it ends.
    pub(crate) permit: Option<Place>,
    /// The timer of its deadline, stopped when it ends first.
    pub(crate) deadline: Option<AbortHandle>,
    /// Set for a request with a retry policy.
    pub(crate) retry: Option<Box<Retry>>,
    /// The coordinator, upgraded under the request's lock as the ending is taken
    /// ([`taken`](Self::taken)): whoever ends the request ends it with the coordinator whole,
    /// even if its last handle goes meanwhile. `None` while the request is open, but for the
    /// request of a node that let the last handle go ([`RequestCell::keep_owner`]).
    pub(crate) held: Option<Arc<dyn Owner>>,
}

impl Ending {
    /// The cancelled outcome, saying why: the shutdown deadline passed, its parent was
    /// cancelled (`with_parent`), or it was cancelled itself.
    fn cancelled(&self, with_parent: bool) -> TaskError {
        let past_deadline = self
            .inner
            .upgrade()
            .is_some_and(|inner| inner.is_past_deadline());
        match self.info.parent_id() {
            _ if past_deadline => TaskError::cancelled(
                "the coordinator's shutdown deadline passed before the request ended",
            ),
            Some(parent) if with_parent => TaskError::cancelled(format!(
                "the request was cancelled with its parent, node `{parent}`"
            )),
            _ => TaskError::cancelled("the request was cancelled"),
        }
    }

    /// The coordinator, if it is still there. Held under the request's lock, it is let go only
    /// after the lock: it may be the last handle, and the coordinator's drop drops its strategies
    /// and its open requests.
    pub(crate) fn owner(&self) -> Option<Arc<dyn Owner>> {
        self.inner.upgrade()
    }

    /// This ending, as taken from its request: call it under the request's lock.
    fn taken(mut self) -> Self {
        self.held = self.inner.upgrade();
        self
    }

    /// Ends the request with `outcome`: releases its place, stops its timers, closes its job,
    /// hands the message to the bus (unless the outcome came from the bus) and answers the caller
    /// (through `cell`, directly, when the coordinator is gone).
    fn finish(self, outcome: Outcome, announce: bool, cell: &RequestCell) {
        let Ending {
            inner,
            info,
            permit,
            deadline,
            retry,
            held,
        } = self;
        if let Some(timer) = deadline {
            timer.abort();
        }
        // A backoff's timer stops when its sender drops, with `retry`. The copy of the task it
        // keeps is the user's: a panic in its `Drop` is logged, and the request still ends.
        let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(retry)));
        if let Err(panic) = dropped {
            let reason = task_core::panic_message(panic.as_ref());
            tracing::error!(%reason, "the task's copy kept for a retry panicked when dropped");
        }
        // Ended, it no longer keeps the request above alive; its open children stay reachable
        // from there.
        cell.hand_children_up();
        let outcome = cell.owned_outcome(outcome);
        match held.or_else(|| inner.upgrade()) {
            // Let go once the job is closed and before the caller hears.
            Some(inner) => inner.apply(info, outcome, announce, permit),
            None => {
                drop(permit);
                cell.answer(outcome);
            }
        }
    }
}

impl RequestCell {
    /// A cell for a request of node `node_id`, keeping its events for the caller when `events`
    /// says so.
    pub(crate) fn new(
        node_id: NodeId,
        span: tracing::Span,
        events: bool,
        output: Option<Output>,
    ) -> Arc<Self> {
        let answer = Answer {
            events: events.then(VecDeque::new),
            ..Answer::default()
        };
        Arc::new_cyclic(|me| Self {
            cancelled: AtomicBool::new(false),
            tree_cancelled: AtomicBool::new(false),
            output,
            cancel_waker: AtomicWaker::new(),
            children: Mutex::new(Vec::new()),
            parent: Mutex::new(None),
            answer: Mutex::new(answer),
            ending: Mutex::new(None),
            node_id,
            span,
            me: me.clone(),
        })
    }

    /// Whether its caller takes the output, so nobody else may hold it.
    pub(crate) fn owns_output(&self) -> bool {
        self.output.is_some_and(|output| output.owned)
    }

    /// `outcome`, as the request may end with it: an output not of its typed caller's type, or
    /// one its caller takes (moved) that someone else still holds, is a failure instead, so the
    /// job and the caller agree.
    fn owned_outcome(&self, outcome: Outcome) -> Outcome {
        let Some(expected) = self.output else {
            return outcome;
        };
        match outcome {
            Ok(output) if !(expected.is)(&output) => Err(TaskError::strategy(format!(
                "expected a {} result, got {output:?}",
                expected.name
            ))),
            Ok(output) if expected.owned && output.is_shared() => Err(TaskError::strategy(
                "the output arrived shared (whoever completed the request kept a copy, or fed \
                 handle_item a message it still holds), but the caller takes it moved: feed \
                 the message itself, or submit with submit_shared or spawn_erased",
            )),
            outcome => outcome,
        }
    }

    /// The scope its node runs in: nested submissions get it as parent and are cancelled with it.
    pub(crate) fn scope(&self) -> NodeScope {
        NodeScope {
            node: self.node_id.clone(),
            request: self.me.clone(),
        }
    }

    pub(crate) fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Ready once the request is cancelled. One waiter at a time: what runs the request.
    pub(crate) fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancelled() {
            return Poll::Ready(());
        }
        self.cancel_waker.register(cx.waker());
        // Set after the check above and before the registration: seen here.
        if self.is_cancelled() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Holds the request's ending: nothing can end it (and publish its outcome) until the guard
    /// is dropped. Admission holds it from before the job is recorded until the opening is
    /// published, so the opening comes first.
    pub(crate) fn hold(&self) -> MutexGuard<'_, Option<Ending>> {
        lock(&self.ending)
    }

    /// Its place under its mode's limit, while it is open, for a child to share.
    pub(crate) fn place(&self) -> Option<Place> {
        lock(&self.ending).as_ref()?.permit.clone()
    }

    /// The node it was submitted from, while it is open.
    pub(crate) fn parent_id(&self) -> Option<NodeId> {
        lock(&self.ending).as_ref()?.info.parent_id().cloned()
    }

    /// Makes the request open: until it ends, `ending` is what ending it needs.
    pub(crate) fn open(&self, ending: Ending) {
        *lock(&self.ending) = Some(ending);
    }

    /// Forgets what ending the request needed, for a request that was not accepted after all.
    pub(crate) fn close_unaccepted(&self) {
        let ending = lock(&self.ending).take();
        // Dropped outside the lock: its place under the limit wakes a waiting submission.
        drop(ending);
    }

    /// Sets the timer of the request's deadline, unless it ended already.
    pub(crate) fn set_deadline(&self, timer: AbortHandle) {
        match lock(&self.ending).as_mut() {
            Some(ending) => ending.deadline = Some(timer),
            None => timer.abort(),
        }
    }

    /// Cancels the request and, through them, its children: each one's run is told to stop and
    /// ends cancelled now. Cancelling a request that already ended changes nothing.
    ///
    /// Never call it under the coordinator's table lock: ending a request takes that lock.
    pub(crate) fn cancel(self: &Arc<Self>) {
        self.end_with(|ending| Err(ending.cancelled(false)), true);
    }

    /// Cancels the request as its parent was: its outcome says so.
    pub(crate) fn cancel_with_parent(self: &Arc<Self>) {
        self.end_with(|ending| Err(ending.cancelled(true)), true);
    }

    /// Keeps the coordinator whole until this request ends, if it is still open: the request of
    /// the node that let the coordinator's last handle go, whose own outcome is on its way.
    /// The caller holds another reference to `owner`: it never goes under the request's lock.
    pub(crate) fn keep_owner(&self, owner: Arc<dyn Owner>) {
        if let Some(ending) = lock(&self.ending).as_mut() {
            ending.held = Some(owner);
        }
    }

    /// Ends the request with `outcome` (a timeout, or a completion from the bus) and cancels its
    /// run and its children, if it is still open; a request that already ended is left as it
    /// is. `announce` says whether the bus hears of it.
    pub(crate) fn stop(self: &Arc<Self>, outcome: Outcome, announce: bool) {
        self.end_with(|_| outcome, announce);
    }

    /// As [`stop`](Self::stop), with the outcome made from what ending the request needs, once it
    /// is taken (outside the lock: making it may upgrade the coordinator's handle, the last one
    /// perhaps, which is dropped there).
    fn end_with(self: &Arc<Self>, outcome: impl FnOnce(&Ending) -> Outcome, announce: bool) {
        let ending = {
            // Decided under the lock `complete` takes: either the run's outcome ended the request
            // first, or this does and the run's outcome finds it cancelled.
            let mut slot = lock(&self.ending);
            let Some(ending) = slot.take().map(Ending::taken) else {
                return;
            };
            self.cancelled.store(true, Ordering::SeqCst);
            ending
        };
        self.cancel_waker.wake();
        // Every open request below is stopped before anyone hears of this one's end: once its
        // caller is answered, no node of its tree starts.
        let below = self.stop_children();
        let outcome = outcome(&ending);
        ending.finish(outcome, announce, self);
        for (cell, ending) in below {
            let cancelled = Err(ending.cancelled(true));
            ending.finish(cancelled, true, &cell);
        }
    }

    /// Stops every request submitted from inside this one, and theirs in turn: each still open
    /// is marked cancelled (so its run never starts, or is told to stop) and its ending taken,
    /// to be finished (closed, announced, answered) by the caller.
    fn stop_children(&self) -> Vec<(Arc<RequestCell>, Ending)> {
        let pending: Vec<Arc<RequestCell>> = lock(&self.children)
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
                    .drain(..)
                    .filter_map(|child| child.upgrade()),
            );
        }
        stopped
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
        push_child(&mut lock(&self.children), Arc::downgrade(child));
        // The child keeps this request alive while it is open, so that this list (and through
        // it the child) stays reachable from the tree above even after this request ended.
        let replaced = self
            .me
            .upgrade()
            .and_then(|me| lock(&child.parent).replace(me));
        // Dropped outside the child's lock.
        drop(replaced);
        // After the push: a cancellation either drains the child above or is seen here.
        self.is_cancelled() || self.tree_cancelled.load(Ordering::SeqCst)
    }

    /// The open request that adopted this one, if any.
    fn adopter(&self) -> Option<Arc<RequestCell>> {
        lock(&self.parent).clone()
    }

    /// As this request ends: hands the children it leaves open to the request that adopted it
    /// (cancelling them if that one is cancelled meanwhile), and lets go of that request. With no
    /// such request, nothing above can cancel them any more.
    fn hand_children_up(&self) {
        let parent = lock(&self.parent).take();
        let children: Vec<Arc<RequestCell>> = lock(&self.children)
            .drain(..)
            .filter_map(|child| child.upgrade())
            .collect();
        let Some(parent) = parent else {
            for child in children {
                let mine =
                    lock(&child.parent).take_if(|adopter| std::ptr::eq(Arc::as_ptr(adopter), self));
                drop(mine);
            }
            return;
        };
        Self::hand_up(&parent, children);
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
        for (cell, ending) in Self::stop_tree(vec![Arc::clone(self)]) {
            let cancelled = Err(ending.cancelled(true));
            ending.finish(cancelled, true, &cell);
        }
    }

    /// Hands the caller its outcome; only the first answer counts.
    pub(crate) fn answer(&self, outcome: Outcome) {
        self.answer_with(|| outcome);
    }

    /// Hands the caller the outcome `outcome` makes, unless it was answered already (then
    /// `outcome` is not called).
    pub(crate) fn answer_with(&self, outcome: impl FnOnce() -> Outcome) {
        let waker = {
            let mut answer = lock(&self.answer);
            if answer.answered {
                return;
            }
            answer.answered = true;
            answer.outcome = Some(outcome());
            answer.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The caller's outcome once answered; `None` if it was taken before.
    pub(crate) fn poll_answer(&self, cx: &mut Context<'_>) -> Poll<Option<Outcome>> {
        let mut answer = lock(&self.answer);
        if answer.answered {
            return Poll::Ready(answer.outcome.take());
        }
        match &mut answer.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// A completion for one attempt of this request.
    pub(crate) fn completion(&self) -> Option<Completion> {
        let me: Arc<dyn CompletionSink> = self.me.upgrade()?;
        Some(Completion::new(me))
    }
}

impl Drop for RequestCell {
    fn drop(&mut self) {
        // Lets a chain of ancestors that only this request kept go one by one, not in a
        // recursion as deep as the tree.
        let mut parent = lock(&self.parent).take();
        while let Some(cell) = parent {
            parent = Arc::try_unwrap(cell)
                .ok()
                .and_then(|cell| lock(&cell.parent).take());
        }
    }
}

/// The deadline of a request, waited for on the runtime it was submitted on. Dropped without
/// firing while the request is open (that runtime shut down), it ends the request cancelled:
/// nothing would keep its deadline any more. Dropped after the request ended (its timer
/// aborted), it does nothing.
pub(crate) struct Expiry(Option<Weak<RequestCell>>);

impl Expiry {
    pub(crate) fn new(cell: &Arc<RequestCell>) -> Self {
        Self(Some(Arc::downgrade(cell)))
    }

    /// Ends the request as timed out, if it is still open.
    pub(crate) fn fire(mut self, timeout: std::time::Duration) {
        if let Some(cell) = self.0.take().and_then(|cell| cell.upgrade()) {
            let timed_out = TaskError::timed_out(format!(
                "the request did not end within its timeout of {timeout:?}"
            ));
            cell.stop(Err(timed_out), true);
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
    use std::sync::Arc;

    use std::sync::Weak;

    use task_core::{NodeId, RequestId, TaskInfo};

    use super::{Ending, Owner, RequestCell, lock, push_child};
    use crate::inner::Inner;

    fn cell(name: &str) -> Arc<RequestCell> {
        RequestCell::new(NodeId::new(name), tracing::Span::none(), false, None)
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
            .drain(..)
            .filter_map(|c| c.upgrade())
            .collect();
        // `g` is cancelled meanwhile.
        g.cancel();
        assert!(!is_open(&g));
        // The second half.
        RequestCell::hand_up(&parent, children);
        assert!(!is_open(&c), "c is open, and in no list a cancellation drains");
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
