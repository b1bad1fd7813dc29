//! The state a coordinator's handles share: its modes, its job table and the requests open in
//! it, and how one of its outcomes is applied.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use pubsub::{BroadcastEvent, RequestCompletionMessage, RequestCompletionPublisher};
use serde::{Deserialize, Serialize};
use task_core::{ExecutionMode, NodeId, Outcome, TaskError, TaskInfo};
use tokio::sync::{Notify, Semaphore};

use crate::job::JobResult;
use crate::request::{Owner, RequestCell, StrategyRef, message_of};
use crate::state::{CoordinatorState, Retention};

pub(crate) struct Started {
    pub(crate) publisher: RequestCompletionPublisher,
    /// The runtime `start` ran on, if any: where a strategy's future runs when it is handed over
    /// on a thread of no runtime.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Set while that runtime, a multi-thread one, runs: a request submitted outside any
    /// runtime runs there (`check_open`).
    pub(crate) runtime_runs: Arc<AtomicBool>,
    /// Ends the task that clears `runtime_runs` when that runtime shuts down, with the
    /// coordinator.
    _watch: Option<tokio::sync::oneshot::Sender<()>>,
    /// Set once an outcome went unannounced because the publisher was shut down first: said
    /// once, at warn.
    unannounced: AtomicBool,
}

impl Started {
    /// Started with `publisher`, on the runtime the caller is on, if any.
    pub(crate) fn new(publisher: &RequestCompletionPublisher) -> Self {
        let runtime = tokio::runtime::Handle::try_current().ok();
        let runtime_runs = Arc::new(AtomicBool::new(false));
        let multi_thread = runtime.as_ref().filter(|runtime| {
            runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        });
        let watch = multi_thread.map(|runtime| {
            /// Clears the flag when dropped: the task ended, or its runtime shut down.
            struct Clear(Arc<AtomicBool>);
            impl Drop for Clear {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
            runtime_runs.store(true, Ordering::SeqCst);
            let (watch, ended) = tokio::sync::oneshot::channel::<()>();
            let clear = Clear(Arc::clone(&runtime_runs));
            drop(runtime.spawn(async move {
                let _clear = clear;
                let _ = ended.await;
            }));
            watch
        });
        Self {
            publisher: publisher.clone(),
            runtime,
            runtime_runs,
            _watch: watch,
            unannounced: AtomicBool::new(false),
        }
    }

    /// An outcome the publisher did not take: it was shut down before this coordinator. Said at
    /// warn the first time (no outcome is announced from then on; the documented order is the
    /// coordinator's shutdown first), at trace after.
    fn not_announced(&self, request_id: &task_core::RequestId) {
        if self.unannounced.swap(true, Ordering::Relaxed) {
            tracing::trace!(%request_id, "outcome not announced: the publisher is shut down");
        } else {
            tracing::warn!(
                %request_id,
                "outcome not announced: the publisher was shut down while requests were still \
                 running; outcomes are no longer announced (shut the coordinator down first)"
            );
        }
    }
}

/// What a coordinator keeps beside each open job in its [`CoordinatorState`] (see
/// [`Coordinator::with_state`](crate::Coordinator::with_state)): the request's shared record, through which its caller is
/// answered and it is cancelled. Opaque; the job itself says what the request is.
pub struct OpenRequest {
    /// Shared with the caller's handle (answered when the job closes) and whatever runs it.
    pub(crate) cell: Arc<RequestCell>,
    /// The position of the mode it runs under in `Inner::modes` (for its counters): an index,
    /// not a reference count that the submitting and the closing threads would both write.
    pub(crate) mode: usize,
}

impl fmt::Debug for OpenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenRequest")
            .field("node_id", self.cell.node_id())
            .field("cancelled", &self.cell.is_cancelled())
            .finish()
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        // Answered already when its job closed; otherwise the coordinator itself went away.
        self.cell.answer_with(|| {
            Err(TaskError::strategy(
                "the request ended without an outcome reaching its caller",
            ))
        });
    }
}

pub(crate) struct Inner {
    /// Every registered mode, at its [`Mode::index`].
    pub(crate) modes: Vec<Mode>,
    pub(crate) grace: Duration,
    pub(crate) started: OnceLock<Started>,
    pub(crate) closing: AtomicBool,
    /// Woken when shutdown begins: submissions waiting for a place under a limit stop waiting.
    pub(crate) closing_begun: Notify,
    /// Submissions waiting for a place under a mode's limit, not recorded yet.
    pub(crate) waiting: crate::waiting::Waiting,
    /// Set when shutdown's grace period ran out and open requests were cancelled.
    pub(crate) past_deadline: AtomicBool,
    /// Set once a call to shutdown has shut the strategies down.
    pub(crate) strategies_shut: AtomicBool,
    /// The jobs, each open one with its request's record (found by request id, or by node id
    /// for a child naming its parent).
    pub(crate) table: Mutex<CoordinatorState<OpenRequest>>,
    /// Outcomes being applied: a job closed by one may not have been announced yet.
    pub(crate) applying: AtomicUsize,
    /// Woken, once shutdown has begun, whenever the last outcome being applied has been.
    pub(crate) drained: Notify,
    /// Whether each accepted request is announced on the bus, as the user asked
    /// ([`Coordinator::announce_openings`](crate::Coordinator::announce_openings)).
    pub(crate) openings: AtomicBool,
    /// Observers following the openings ([`Coordinator::follow_openings`](crate::Coordinator::follow_openings)):
    /// announced while there is one, whatever the user asked.
    pub(crate) openings_followers: AtomicUsize,
    /// The application's handles ([`Coordinator`](crate::Coordinator)s); their last one's drop
    /// ends what is still open.
    pub(crate) handles: AtomicUsize,
    /// A limit set for a mode no strategy serves, and the modes registered: `start` refuses it.
    pub(crate) stray_limit: Option<(ExecutionMode, Vec<ExecutionMode>)>,
}

impl Inner {
    pub(crate) fn new(modes: Vec<Mode>, grace: Duration, retention: Retention) -> Self {
        Self {
            modes,
            grace,
            started: OnceLock::new(),
            closing: AtomicBool::new(false),
            past_deadline: AtomicBool::new(false),
            closing_begun: Notify::new(),
            waiting: crate::waiting::Waiting::default(),
            strategies_shut: AtomicBool::new(false),
            table: Mutex::new(CoordinatorState::with_attachments(retention)),
            applying: AtomicUsize::new(0),
            drained: Notify::new(),
            openings: AtomicBool::new(false),
            openings_followers: AtomicUsize::new(0),
            stray_limit: None,
            handles: AtomicUsize::new(1),
        }
    }

    /// The bus to announce a request's opening on: when openings are announced and someone
    /// subscribes.
    pub(crate) fn openings(&self) -> Option<&RequestCompletionPublisher> {
        if !self.announces_openings() {
            return None;
        }
        let publisher = &self.started.get()?.publisher;
        publisher.has_subscribers().then_some(publisher)
    }

    pub(crate) fn announces_openings(&self) -> bool {
        self.openings.load(Ordering::Relaxed) || self.openings_followers.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, CoordinatorState<OpenRequest>> {
        // No code that can panic runs under this lock; a poisoned lock still holds a valid table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runtime `start` ran on, if any.
    pub(crate) fn runtime(&self) -> Option<tokio::runtime::Handle> {
        let started = self.started.get()?;
        let runtime = started.runtime.clone()?;
        // A multi-thread one that has shut down runs nothing: none.
        let multi_thread = runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
        (!multi_thread || started.runtime_runs.load(Ordering::SeqCst)).then_some(runtime)
    }

    /// Applies one of this coordinator's outcomes: closes the request's job, hands its message to
    /// the bus when `announce` says so (never waiting for a subscriber), then answers its caller.
    /// Called once per request, by whoever ended it ([`Ending`]).
    pub(crate) fn apply(
        &self,
        info: TaskInfo,
        outcome: Outcome,
        announce: bool,
        place: Option<crate::request::Place>,
    ) {
        let result = JobResult::of(&outcome);
        // Counted before the job closes, so that while one is being applied either its job is
        // open or this count is not zero: shutdown, which waits for both, returns once every
        // outcome has been announced, and the bus's own shutdown after it loses none. Counted
        // out once announced, or as a panic unwinds from here.
        let applying = Applying::enter(self);
        let (open, ran, attempts) = {
            let mut table = self.table();
            let ended = match &outcome {
                Ok(_) => table.end_job_detach(info.request_id(), result),
                Err(error) => table.fail_job(info.request_id(), error.clone()),
            };
            let (open, ran, attempts) = match ended {
                Ok((job, open)) => (open, job.duration(), job.attempts()),
                Err(error) => {
                    // Never: a request's job stays open until its one ending.
                    tracing::error!(request_id = %info.request_id(), %error, "outcome of a request without an open job");
                    (None, None, 0)
                }
            };
            if let Some(mode) = open.as_ref().and_then(|open| self.modes.get(open.mode)) {
                mode.counters.close(result);
            }
            (open, ran, attempts)
        };
        // The job is closed: its hold on its place goes before anyone hears of its end (the
        // place itself once no child sharing it is open either).
        drop(place);
        // The application's recorder runs outside the table's lock.
        if let Some(mode) = open.as_ref().and_then(|open| self.modes.get(open.mode)) {
            mode.metrics.ended(result, ran, attempts);
        }
        tracing::trace!(request_id = %info.request_id(), %result, "job closed");
        let tree_end = open
            .as_ref()
            .and_then(|open| open.cell.tree_end(&info, &outcome));
        // What announcing it lets go of (a message the bus overwrote for a subscriber that fell
        // behind, which may hold the last reference to a shared output) is dropped once the
        // caller is answered, at the end.
        let started = self.started.get().filter(|_| announce);
        let bus = (started.map(|started| &started.publisher)).filter(|bus| bus.has_subscribers());
        let _later = bus.map(|_| pubsub::defer_drops());
        if let Some(started) = started.filter(|s| bus.is_none() && s.publisher.is_shut_down()) {
            started.not_announced(info.request_id());
        }
        if let Some(bus) = bus {
            // An output its caller takes stays the caller's alone: the bus gets its text.
            let announced = match &outcome {
                Ok(output) if open.as_ref().is_some_and(|open| open.cell.owns_output()) => {
                    Ok(task_core::Value::new(pubsub::TakenOutput::of(output)))
                }
                shared => shared.clone(),
            };
            let message = message_of(info, announced);
            // The application shut its bus down: the outcome still reaches the caller.
            if let Err(refused) = bus.publish(message)
                && refused.is_shut_down()
                && let Some(started) = started
                && let Some(id) = refused.into_inner().request_id()
            {
                started.not_announced(id);
            }
        }
        drop(applying);
        if let Some(open) = open {
            // Its trees hear of its end before its caller, which may then end too: a parent's
            // end never comes before that of a child it awaited.
            if let Some(end) = tree_end {
                open.cell.tree_ended(end);
            }
            // The caller may have stopped waiting (dropped its handle); the job is closed anyway.
            open.cell.answer(outcome);
        }
    }

    /// Whether a request whose parent is `parent` may be accepted now: always before shutdown;
    /// during its grace period only a child of a request still open (`table` says so; without
    /// it, a task with a parent passes this first look), which finishing that request may need;
    /// nothing once the grace period is over.
    pub(crate) fn admits(
        &self,
        parent: Option<&NodeId>,
        table: Option<&CoordinatorState<OpenRequest>>,
    ) -> bool {
        if !self.is_closing() {
            return true;
        }
        let Some(parent) = parent else {
            return false;
        };
        !self.past_deadline.load(Ordering::SeqCst)
            && table.is_none_or(|table| table.attachment_of_node(parent).is_some())
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Completes once shutdown has begun.
    pub(crate) async fn closing(&self) {
        let begun = self.closing_begun.notified();
        tokio::pin!(begun);
        // Registered before the check: shutdown beginning between the two still wakes it.
        begun.as_mut().enable();
        if !self.is_closing() {
            begun.await;
        }
    }

    pub(crate) fn open_jobs(&self) -> u64 {
        self.table().counts().open
    }

    /// Whether every request has ended and been announced: no job open, no outcome being
    /// applied. In that order: an outcome counts itself before closing its job.
    pub(crate) fn drained(&self) -> bool {
        self.open_jobs() == 0 && self.applying.load(Ordering::SeqCst) == 0
    }

    pub(crate) fn record_attempt(&self, request_id: &str, cell: &RequestCell) {
        let mut table = self.table();
        // Only on its own job: the request may have ended since, and another taken its id.
        let ours = table
            .attachment(request_id)
            .is_some_and(|open| std::ptr::eq(Arc::as_ptr(&open.cell), cell));
        if ours {
            let _ = table.record_attempt(request_id);
        }
    }
}

/// An outcome being applied ([`Inner::applying`]), until dropped.
struct Applying<'a>(&'a Inner);

impl<'a> Applying<'a> {
    fn enter(inner: &'a Inner) -> Self {
        inner.applying.fetch_add(1, Ordering::SeqCst);
        Self(inner)
    }
}

impl Drop for Applying<'_> {
    fn drop(&mut self) {
        // Only shutdown waits (`drained`): an outcome applied before it began is counted out
        // before shutdown first looks.
        if self.0.applying.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.is_closing() {
            self.0.drained.notify_waiters();
        }
    }
}

/// The instant `after` from now on the runtime's clock (as every tokio timer's: a paused one may
/// be far from the wall clock's); `None`, a timer that never runs out, when it is too far for a
/// timer ([`task_core::deadline_after`]).
pub(crate) fn deadline_after(after: Duration) -> Option<tokio::time::Instant> {
    let now = tokio::time::Instant::now().into_std();
    task_core::deadline_after(now, after).map(tokio::time::Instant::from_std)
}

/// Runs its closure when dropped: on the thread it was moved to, or where a thread that could
/// not be started dropped it.
struct RunOnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for RunOnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Why a request ends when its coordinator's last handle went without `shutdown`.
fn dropped_while_open() -> TaskError {
    TaskError::strategy(
        "the coordinator was dropped (its last handle, without shutdown) while the request was open",
    )
}

impl Inner {
    /// The last handle is going without `shutdown`: every request still open ends, failed, as
    /// any request ends (its job closed, its message published, its caller answered, its run and
    /// children stopped), on a thread of its own, not under whatever locks the dropping thread
    /// holds (ending children takes other coordinators' tables) and needing no runtime. An
    /// outcome racing this ends its request first, just as well. A node that let the
    /// last handle go (it had captured it) is not ended: its own outcome is on its way, and its
    /// request keeps the coordinator whole until it comes. Nothing can open a request
    /// afterwards: that takes a handle.
    pub(crate) fn end_open_requests(self: &Arc<Self>) {
        if self.open_jobs() == 0 {
            return;
        }
        let dropping = crate::request::current_node();
        let inner = Arc::clone(self);
        let end = RunOnDrop(Some(move || inner.end_open_requests_but(dropping.as_ref())));
        // On a thread of its own: no runtime it might wait for (the dropping thread's may never
        // run again, or be blocked waiting for these very requests), none of the dropping
        // thread's locks. A thread that cannot be started drops `end`, which ends them here.
        let ending = std::thread::Builder::new().name("coordinator-dropped".into());
        drop(ending.spawn(move || drop(end)));
    }

    /// The requests open now, taken under the table lock and held past it.
    pub(crate) fn open_cells(&self) -> Vec<Arc<RequestCell>> {
        let table = self.table();
        table
            .attachments()
            .map(|(_, open)| Arc::clone(&open.cell))
            .collect()
    }

    fn end_open_requests_but(self: &Arc<Self>, dropping: Option<&task_core::NodeId>) {
        let mut open = self.open_cells();
        if let Some(at) = open
            .iter()
            .position(|cell| Some(cell.node_id()) == dropping)
        {
            open.swap_remove(at)
                .keep_owner(Arc::clone(self) as Arc<dyn Owner>);
        }
        if open.is_empty() {
            return;
        }
        tracing::warn!(
            open = open.len(),
            "coordinator dropped without shutdown; its open requests end failed"
        );
        RequestCell::end_all(open, |_| Err(dropped_while_open()));
    }
}

impl Owner for Inner {
    fn apply(
        &self,
        info: TaskInfo,
        outcome: Outcome,
        announce: bool,
        place: Option<crate::request::Place>,
    ) {
        Inner::apply(self, info, outcome, announce, place);
    }

    fn is_closing(&self) -> bool {
        Inner::is_closing(self)
    }

    fn is_past_deadline(&self) -> bool {
        self.past_deadline.load(Ordering::SeqCst)
    }

    fn strategy(&self, index: usize) -> StrategyRef {
        Arc::clone(&self.modes[index].strategy)
    }

    fn record_attempt(&self, request_id: &str, cell: &RequestCell) {
        Inner::record_attempt(self, request_id, cell);
    }

    fn runtime(&self) -> Option<tokio::runtime::Handle> {
        Inner::runtime(self)
    }

    fn request_of_node(&self, node_id: &str) -> Option<task_core::RequestId> {
        Some(self.table().open_job_of_node(node_id)?.request_id().clone())
    }

    fn announce_event(&self, info: &TaskInfo, event: Arc<str>) {
        tracing::trace!(request_id = %info.request_id(), %event, "event");
        if let Some(started) = self.started.get()
            && started.publisher.has_subscribers()
        {
            let message = RequestCompletionMessage::Broadcast(BroadcastEvent {
                info: info.clone(),
                event,
            });
            if let Err(refused) = started.publisher.publish(message) {
                tracing::trace!(%refused, "event not announced");
            }
        }
    }
}

pub(crate) fn task_span(info: &TaskInfo, mode: &ExecutionMode) -> tracing::Span {
    tracing::info_span!(
        "task",
        request_id = %info.request_id(),
        node = %info.name(),
        node_id = %info.node_id(),
        parent = info.parent_id().map(|p| p.as_str()),
        mode = %mode,
    )
}

/// A registered mode: its strategy, its concurrency limit and its request counters.
pub(crate) struct Mode {
    /// Its position in `Inner::modes`.
    pub(crate) index: usize,
    pub(crate) name: ExecutionMode,
    pub(crate) strategy: StrategyRef,
    pub(crate) limit: Option<Arc<Semaphore>>,
    pub(crate) counters: ModeCounters,
    /// Its handles in the application's metrics recorder (nothing without the `metrics`
    /// feature).
    pub(crate) metrics: crate::metrics::ModeMetrics,
}

/// Live counters of the requests of one mode.
#[derive(Default)]
pub(crate) struct ModeCounters {
    pub(crate) in_flight: AtomicU64,
    pub(crate) waiting: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
}

impl ModeCounters {
    pub(crate) fn close(&self, result: JobResult) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = match result {
            JobResult::Success => &self.succeeded,
            JobResult::TimedOut => &self.timed_out,
            JobResult::Cancelled => &self.cancelled,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ModeCounts {
        ModeCounts {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
        }
    }
}

/// The requests of one mode, as [`SystemDetail::requests`](crate::SystemDetail::requests) reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ModeCounts {
    /// Accepted and not yet ended.
    pub in_flight: u64,
    /// Accepted in a [`submit_many`](crate::Coordinator::submit_many) batch and waiting in its
    /// queue for a place under the mode's limit: not handed to the strategy yet. Mostly counted
    /// in `in_flight` too; a request that ends while it waits leaves the queue a moment later, so
    /// the two are each a moment's count and may disagree by those.
    pub waiting: u64,
    /// Ended with a value.
    pub succeeded: u64,
    /// Ended with an error (the node's, a panic, or the strategy's).
    pub failed: u64,
    /// Ended past their deadline.
    pub timed_out: u64,
    /// Ended cancelled.
    pub cancelled: u64,
}
