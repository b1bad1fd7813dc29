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
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use futures::task::AtomicWaker;
use task_core::TaskExecutionStrategy;
use task_core::{Completion, CompletionSink, NodeId, Outcome, TaskError, TaskInfo};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::AbortHandle;

use crate::options::{CellOptions, Output};

mod completion;
mod deadline;
mod events;
mod retry;
mod scope;
mod tree;
mod tree_events;

pub(crate) use deadline::Expiry;
pub(crate) use retry::Retry;
pub(crate) use scope::request_of_running;
pub use scope::{current_node, current_node_cancelled};
pub(crate) use tree::Up;
pub use tree_events::TreeEvent;

pub(crate) use completion::{execute, message_of};

/// A place under a mode's concurrency limit: held by a request, and shared with its children in
/// the same mode; freed when the last of them has ended and its run is over.
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
    /// Counts one more attempt of the request of `cell` in its job, if that is still its own.
    fn record_attempt(&self, request_id: &str, cell: &RequestCell);
    /// The runtime the coordinator was started on, if any.
    fn runtime(&self) -> Option<tokio::runtime::Handle>;
    /// Hands an event of the request's node to the bus (never waiting for a subscriber).
    fn announce_event(&self, info: &TaskInfo, event: Arc<str>);
    /// The request the node `node_id` runs for, while its job is open here.
    fn request_of_node(&self, node_id: &str) -> Option<task_core::RequestId>;
}

/// Locks `mutex`; no code that can panic runs under these locks, so a poisoned one still holds
/// consistent data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared record of one accepted request.
pub(crate) struct RequestCell {
    cancelled: AtomicBool,
    /// Set while the attempt under way ran past its attempt timeout: its run is told to stop,
    /// as if cancelled, while the request stays open for the next attempt.
    attempt_expired: AtomicBool,
    /// Set while it waits out a backoff after a failed attempt whose children it ends
    /// ([`SubmitOptions::cancel_children_on_end`](crate::SubmitOptions::cancel_children_on_end)):
    /// what that attempt's work still submits is born cancelled.
    between_attempts: AtomicBool,
    /// Set once it was cancelled with its parent, ended or not: the children it submits from
    /// then on are born cancelled.
    tree_cancelled: AtomicBool,
    /// The output its typed caller takes; one taken moved goes to the bus as its text, not the
    /// value.
    output: Option<Output>,
    /// Whether its children still open when it ends are cancelled.
    ends_children: bool,
    /// Whether its caller reads its node's events (kept in its answer until then).
    keeps_events: bool,
    /// Whether its caller reads the events of its tree; the trees it belongs to, if any.
    tree_root: bool,
    trees: OnceLock<Vec<Arc<tree_events::TreeEvents>>>,
    /// Whatever runs the request waits here for cancellation.
    cancel_waker: AtomicWaker,
    /// Told when the children it adopts start being born cancelled ([`cancels_children`]):
    /// what a child waiting for a place under a limit waits on besides the place.
    ///
    /// [`cancels_children`]: Self::cancels_children
    children_cancelled: tokio::sync::Notify,
    /// Requests submitted from inside this one's node; cancelled with it.
    children: Mutex<Children>,
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
    /// Its attempt's run, while the strategy has it.
    run: Mutex<Run>,
}

/// Whether an attempt's run is out (handed to the strategy, not over yet), and the place under
/// its mode's limit the request held when it ended while the run was still out (a timeout, a
/// cancellation: a blocking node runs on, an async one stops at its next wake-up). The place is
/// kept until the run is over, so a limit counts the nodes running, not only the requests open.
#[derive(Default)]
struct Run {
    out: bool,
    place: Option<Place>,
}

/// The requests submitted from inside a request's node, and where they went once it ended.
#[derive(Default)]
struct Children {
    list: Vec<Weak<RequestCell>>,
    /// Set as the request hands its children up: where to (nowhere: `Weak::new()`). A child
    /// adopted later goes on up from here ([`adopt`](RequestCell::adopt)).
    handed_to: Option<Weak<RequestCell>>,
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
        let inner = self.inner.upgrade();
        let past_deadline = inner.as_ref().is_some_and(|inner| inner.is_past_deadline());
        match self.info.parent_id() {
            _ if past_deadline => TaskError::cancelled(
                "the coordinator's shutdown deadline passed before the request ended",
            ),
            // Named by its request too while its job is open here, as it is while its
            // children are cancelled with it (they end first).
            Some(parent) if with_parent => {
                match inner.and_then(|inner| inner.request_of_node(parent)) {
                    Some(request) => TaskError::cancelled(format!(
                        "the request was cancelled with its parent, request `{request}` \
                         (node `{parent}`)"
                    )),
                    None => TaskError::cancelled(format!(
                        "the request was cancelled with its parent, node `{parent}`"
                    )),
                }
            }
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
        if let Some(retry) = retry
            && let Some(reason) = task_core::catch_panic(move || drop(retry))
        {
            tracing::error!(%reason, "the task's copy kept for a retry panicked when dropped");
        }
        // Ended, it no longer keeps the request above alive; its open children stay reachable
        // from there (or are stopped now, when they end with it).
        let below = cell.stop_children_at_end();
        cell.hand_children_up();
        // They end (closed, announced, answered) before this one is: whoever hears of its end
        // finds nothing it started still open.
        if !below.is_empty() {
            let node = info.node_id();
            let why = format!("the request of node `{node}` ended, and its children with it");
            RequestCell::finish_stopped_with(below, |_| TaskError::cancelled(why.clone()));
        }
        let permit = cell.place_to_let_go(permit);
        let outcome = cell.owned_outcome(outcome);
        match held.or_else(|| inner.upgrade()) {
            // Let go once the job is closed and before the caller hears.
            Some(inner) => inner.apply(info, outcome, announce, permit),
            None => {
                drop(permit);
                if let Some(end) = cell.tree_end(&info, &outcome) {
                    cell.tree_ended(end);
                }
                cell.answer(outcome);
            }
        }
    }
}

impl RequestCell {
    /// A cell for a request of node `node_id`, keeping its events for the caller when `events`
    /// says so.
    pub(crate) fn new(node_id: NodeId, span: tracing::Span, options: CellOptions) -> Arc<Self> {
        let CellOptions {
            events,
            ends_children,
            tree_events,
            output,
        } = options;
        let answer = Answer {
            events: events.then(VecDeque::new),
            ..Answer::default()
        };
        Arc::new_cyclic(|me| Self {
            cancelled: AtomicBool::new(false),
            attempt_expired: AtomicBool::new(false),
            between_attempts: AtomicBool::new(false),
            tree_cancelled: AtomicBool::new(false),
            output,
            ends_children,
            keeps_events: events,
            tree_root: tree_events,
            trees: OnceLock::new(),
            cancel_waker: AtomicWaker::new(),
            children_cancelled: tokio::sync::Notify::new(),
            children: Mutex::default(),
            parent: Mutex::new(None),
            answer: Mutex::new(answer),
            ending: Mutex::new(None),
            node_id,
            span,
            me: me.clone(),
            run: Mutex::default(),
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
            Ok(output) if !(expected.is)(&output) => {
                let shown = std::panic::catch_unwind(AssertUnwindSafe(|| format!("{output:?}")));
                let shown = shown.unwrap_or_else(|_| "an output whose Debug panicked".into());
                let_go(output);
                Err(TaskError::strategy(format!(
                    "expected a {} result, got {shown}",
                    expected.name
                )))
            }
            Ok(output) if expected.owned && output.is_shared() => {
                let_go(output);
                Err(TaskError::strategy(
                    "the output arrived shared (whoever completed the request kept a copy, or \
                     fed handle_item a message it still holds), but the caller takes it moved: \
                     feed the message itself, or submit with submit_shared or spawn_erased",
                ))
            }
            outcome => outcome,
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

    /// Whether the run of the attempt under way is to stop: the request was cancelled, or the
    /// attempt ran past its attempt timeout.
    pub(crate) fn run_cancelled(&self) -> bool {
        self.is_cancelled() || self.attempt_expired()
    }

    /// Whether the attempt under way ran past its attempt timeout.
    pub(crate) fn attempt_expired(&self) -> bool {
        self.attempt_expired.load(Ordering::SeqCst)
    }

    /// Ready once the attempt's run is to stop ([`run_cancelled`](Self::run_cancelled)). One
    /// waiter at a time: what runs the request.
    pub(crate) fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.run_cancelled() {
            return Poll::Ready(());
        }
        self.cancel_waker.register(cx.waker());
        // Set after the check above and before the registration: seen here.
        if self.run_cancelled() {
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

    /// Gives a request that waited for its place under its mode's limit the place, if it is
    /// still open; the place back otherwise.
    pub(crate) fn give_place(&self, place: Place) -> Result<(), Place> {
        match lock(&self.ending).as_mut() {
            Some(ending) => {
                ending.permit = Some(place);
                Ok(())
            }
            None => Err(place),
        }
    }

    /// Whether the request is open (accepted, not ended).
    pub(crate) fn is_open(&self) -> bool {
        lock(&self.ending).is_some()
    }

    /// Its request id, while it is open.
    pub(crate) fn request_id(&self) -> Option<task_core::RequestId> {
        Some(lock(&self.ending).as_ref()?.info.request_id().clone())
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
        if let Some(ending) = self.take_ending() {
            self.finish_taken(ending, outcome, announce);
        }
    }

    /// Ends every request of `cells` still open with the outcome `outcome` makes (announced), and
    /// the requests below them, cancelled: all are marked first, so that none of them ends on its
    /// own after its node heard of another's end (a parent whose child was ended first).
    pub(crate) fn end_all(cells: Vec<Arc<Self>>, outcome: impl Fn(&Ending) -> Outcome) {
        let taken: Vec<_> = cells
            .into_iter()
            .filter_map(|cell| Some((cell.take_ending()?, cell)))
            .collect();
        // Those below first, as a cancelled request's own children end before it.
        for (ending, cell) in Self::deepest_first(taken) {
            cell.finish_taken(ending, &outcome, true);
        }
    }

    /// Cancels every request of `cells` still open, as [`end_all`](Self::end_all) ends them.
    pub(crate) fn cancel_all(cells: Vec<Arc<Self>>) {
        Self::end_all(cells, |ending| Err(ending.cancelled(false)));
    }

    /// Takes the ending of a request still open, marking it cancelled. Decided under the lock
    /// `complete` takes: either the run's outcome ended the request first, or this does and the
    /// run's outcome finds it cancelled.
    fn take_ending(&self) -> Option<Ending> {
        let mut slot = lock(&self.ending);
        let ending = slot.take().map(Ending::taken)?;
        self.cancelled.store(true, Ordering::SeqCst);
        self.children_cancelled.notify_waiters();
        Some(ending)
    }

    /// Ends a request whose ending [`take_ending`](Self::take_ending) took.
    fn finish_taken(
        self: &Arc<Self>,
        ending: Ending,
        outcome: impl FnOnce(&Ending) -> Outcome,
        announce: bool,
    ) {
        self.cancel_waker.wake();
        // Every open request below is stopped before anyone hears of this one's end: once its
        // caller is answered, no node of its tree starts.
        let below = self.stop_children();
        let outcome = outcome(&ending);
        // The children it cancels end before it does: whoever hears of its end finds nothing
        // it started still open.
        Self::finish_stopped(below);
        ending.finish(outcome, announce, self);
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

    /// A completion for one attempt of this request: its run is out until the completion
    /// delivers or is dropped ([`run_over`](Self::run_over)).
    pub(crate) fn completion(&self) -> Option<Completion> {
        let me: Arc<dyn CompletionSink> = self.me.upgrade()?;
        lock(&self.run).out = true;
        Some(Completion::new(me))
    }

    /// The attempt's run is over: a place kept for it goes.
    pub(crate) fn run_over(&self) {
        let place = {
            let mut run = lock(&self.run);
            run.out = false;
            run.place.take()
        };
        drop(place);
    }

    /// The place of a request that ended, to let go now; `None` while its run is still out,
    /// which then keeps it until it is over.
    fn place_to_let_go(&self, place: Option<Place>) -> Option<Place> {
        let place = place?;
        let mut run = lock(&self.run);
        if run.out {
            run.place = Some(place);
            None
        } else {
            Some(place)
        }
    }
}

/// Lets go of an output a request does not end with. Its `Drop` is the user's: a panic there is
/// logged, not unwound out of the ending, which would leave the request unanswered.
fn let_go(output: task_core::Value) {
    if let Some(reason) = task_core::catch_panic(move || drop(output)) {
        tracing::error!(%reason, "an output a request did not end with panicked when dropped");
    }
}
