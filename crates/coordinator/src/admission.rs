//! Admission: how a coordinator takes a request, or a batch of them. Everything before a
//! strategy takes a request is synchronous, so a request (a batch: all of it) is either rejected
//! with nothing recorded or fully accepted.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pubsub::{RequestCompletionMessage, RequestCompletionPublisher, RequestCreation};
use task_core::{BoxFuture, ErasedTask, ExecutionMode, RequestId, TaskInfo, Value};
use tokio::sync::TryAcquireError;

use crate::coordinator::Coordinator;
use crate::error::{SubmitError, SubmitKind};
use crate::handle::RequestHandle;
use crate::inner::{Inner, Mode, OpenRequest, deadline_after, task_span};
use crate::options::SubmitOptions;
use crate::request::{Ending, Expiry, Place, RequestCell, Retry, Up, current_node, execute};
use crate::state::{CoordinatorState, StateError};

/// A request the coordinator took.
pub(crate) struct Accepted {
    request_id: RequestId,
    cell: Arc<RequestCell>,
}

impl Accepted {
    pub(crate) fn into_handle<O>(
        self,
        convert: fn(Value) -> Result<O, SubmitError>,
    ) -> RequestHandle<O> {
        RequestHandle::new(self.request_id, self.cell, convert)
    }
}

/// A submission waiting for a place under its mode's concurrency limit.
pub(crate) struct Waiting<'a> {
    pub(crate) mode: ExecutionMode,
    wait: BoxFuture<'a, Result<Accepted, SubmitError>>,
}

impl Future for Waiting<'_> {
    type Output = Result<Accepted, SubmitError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.wait.as_mut().poll(cx)
    }
}

/// The first step of a submission: accepted at once, or waiting for a place. Awaiting it gives
/// the accepted request either way.
pub(crate) enum Admission<'a> {
    /// `None` once taken by `poll`.
    Accepted(Option<Accepted>),
    Wait(Waiting<'a>),
}

impl Future for Admission<'_> {
    type Output = Result<Accepted, SubmitError>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Admission::Accepted(accepted) => std::task::Poll::Ready(
                // Polled again after completion: a misuse, answered without a panic.
                accepted
                    .take()
                    .ok_or_else(|| SubmitError::new(SubmitKind::ShutDown)),
            ),
            Admission::Wait(wait) => Pin::new(wait).poll(cx),
        }
    }
}

impl Coordinator {
    /// The entry of `mode`, or the error that names the modes registered.
    pub(crate) fn mode_entry(&self, mode: &ExecutionMode) -> Result<&Mode, SubmitError> {
        let modes = &self.inner.modes;
        // A handful of modes: a scan is as quick as a hash of the name.
        modes
            .iter()
            .find(|entry| entry.name == *mode)
            .ok_or_else(|| {
                let known = modes.iter().map(|entry| entry.name.clone()).collect();
                SubmitError::new(SubmitKind::UnknownMode(Box::new((mode.clone(), known))))
            })
    }

    /// The checks of a task that need no lock, and the parent of a nested task. The caller has
    /// checked that the coordinator is started and found the mode's entry.
    pub(crate) fn prepare(
        &self,
        mut task: ErasedTask,
        options: &SubmitOptions,
    ) -> Result<ErasedTask, SubmitError> {
        let inner = &self.inner;
        if task.info().request_id().is_empty() {
            return Err(SubmitError::new(SubmitKind::EmptyId));
        }
        // Retries asked of a task that can run only once: say so, rather than run it once.
        let retries = options.get_retry().is_some_and(|p| p.max_attempts() > 1);
        if retries && !task.is_replayable() {
            let id = task.info().request_id().clone();
            return Err(SubmitError::new(SubmitKind::NotReplayable(id)));
        }
        if task.info().parent_id().is_none()
            && let Some(parent) = current_node()
        {
            task = task.with_parent(parent);
        }
        if !inner.admits(task.info().parent_id(), None) {
            return Err(SubmitError::new(SubmitKind::ShutDown));
        }
        Ok(task)
    }

    /// The place `task` shares under its mode's limit: that of its nearest ancestor in the same
    /// mode, found up the open requests above its parent (in any mode, in any coordinator,
    /// through the links that reach past the requests that ended: [`RequestCell::adopter`]).
    /// The walk starts where the task's request will be adopted ([`Self::record`]): its parent's
    /// request at hand when it is submitted from inside that node (open in this coordinator or
    /// another), else the parent's open request in this coordinator.
    /// The tree then holds one place until all of it has ended, and a task never waits for a
    /// place its own ancestor holds (a deadlock). `None` for any other task: it takes a place of
    /// its own. The walk costs one step per open level of the tree.
    pub(crate) fn ancestor_place(&self, task: &ErasedTask, entry: &Mode) -> Option<Place> {
        let parent = task.info().parent_id()?;
        let start = match scoped_parent(task.info()) {
            Some(scoped) => scoped,
            None => Arc::clone(&self.inner.table().attachment_of_node(parent)?.cell),
        };
        let mut up = Up::from(start);
        loop {
            let cell = &up.at;
            // This coordinator's open request, and its mode; another coordinator's is passed.
            let request_id = cell.request_id();
            let same_mode = request_id.is_some_and(|id| {
                let table = self.inner.table();
                table
                    .attachment(&id)
                    .is_some_and(|open| Arc::ptr_eq(&open.cell, cell) && open.mode == entry.index)
            });
            if same_mode {
                return cell.place();
            }
            if !up.step() {
                return None;
            }
        }
    }

    /// Accepts the request at once, or, when its mode is at its limit, returns the (boxed, so
    /// the common path's futures stay small) wait for a place.
    pub(crate) fn admit(
        &self,
        task: ErasedTask,
        mode: ExecutionMode,
        options: SubmitOptions,
    ) -> Result<Admission<'_>, SubmitError> {
        if self.inner.started.get().is_none() {
            return Err(SubmitError::new(SubmitKind::NotStarted));
        }
        let entry = self.mode_entry(&mode)?;
        let task = self.prepare(task, &options)?;
        let (place, waited) = match &entry.limit {
            None => (None, None),
            Some(limit) => match self.ancestor_place(&task, entry) {
                Some(shared) => (Some(shared), None),
                // Once shutdown has begun, a task that needs a place of its own is refused.
                None if self.inner.is_closing() => {
                    return Err(SubmitError::new(SubmitKind::ShutDown));
                }
                None => match Arc::clone(limit).try_acquire_owned() {
                    Ok(permit) => (Some(Arc::new(permit)), Some(Duration::ZERO)),
                    Err(TryAcquireError::Closed) => {
                        return Err(SubmitError::new(SubmitKind::ShutDown));
                    }
                    // Submitted from a node whose request was cancelled (or timed out): it is
                    // born cancelled and never runs, so it takes no place, and waits for none.
                    Err(TryAcquireError::NoPermits)
                        if scoped_parent(task.info()).is_some_and(|p| p.cancels_children()) =>
                    {
                        (None, None)
                    }
                    // A duplicate of an open request is rejected now, as it would be with a
                    // place free, rather than waiting for its original to end and then run.
                    Err(TryAcquireError::NoPermits)
                        if self.inner.table().is_open(task.info().request_id()) =>
                    {
                        let id = task.info().request_id().clone();
                        return Err(SubmitError::new(SubmitKind::Duplicate(id)));
                    }
                    Err(TryAcquireError::NoPermits) => {
                        // What would refuse it once it has its place refuses it now, rather than
                        // after a wait (outside a runtime, a wait nobody may ever end).
                        self.check_open()?;
                        let (wait_mode, limit) = (mode.clone(), Arc::clone(limit));
                        let parent = scoped_parent(task.info());
                        let wait = Box::pin(async move {
                            // From its first poll `cancel` reaches it by its request id; taken
                            // out when the wait ends, however it ends.
                            let (_listed, mut cancelled) =
                                self.inner.waiting.enter(task.info().request_id());
                            let since = Instant::now();
                            let acquire = limit.acquire_owned();
                            let parent_cancelled = async {
                                match &parent {
                                    Some(parent) => parent.children_cancelled().await,
                                    None => std::future::pending().await,
                                }
                            };
                            let permit = tokio::select! {
                                // A cancellation is seen first, whatever else is ready.
                                biased;
                                Ok(()) = &mut cancelled => {
                                    let id = task.info().request_id().clone();
                                    let kind = SubmitKind::CancelledWaiting(Box::new((mode, id)));
                                    return Err(SubmitError::new(kind));
                                }
                                permit = acquire => Some(permit),
                                // Its parent was cancelled while it waited: it is born
                                // cancelled, and needs no place.
                                () = parent_cancelled => None,
                                () = self.inner.closing() => {
                                    return Err(SubmitError::new(SubmitKind::ShutDown));
                                }
                            };
                            let place = match permit {
                                Some(permit) => Some(Arc::new(
                                    permit.map_err(|_| SubmitError::new(SubmitKind::ShutDown))?,
                                )),
                                None => None,
                            };
                            let waited = place.as_ref().map(|_| since.elapsed());
                            // Born cancelled when its parent's cancellation ended the wait (even
                            // if the parent no longer cancels the children it adopts), or when
                            // `cancel` came while it was being accepted.
                            let parent_woke = place.is_none();
                            let doomed = &mut || parent_woke || cancelled.try_recv().is_ok();
                            self.accept(task, mode, entry, options, (place, waited), doomed)
                        });
                        return Ok(Admission::Wait(Waiting {
                            mode: wait_mode,
                            wait,
                        }));
                    }
                },
            },
        };
        self.accept(task, mode, entry, options, (place, waited), &mut || false)
            .map(|accepted| Admission::Accepted(Some(accepted)))
    }
}

impl Coordinator {
    /// Accepts the request now, or says why not: [`SubmitKind::Busy`] when its mode is at its
    /// limit.
    pub(crate) fn admit_now(
        &self,
        task: ErasedTask,
        mode: ExecutionMode,
        options: SubmitOptions,
    ) -> Result<Accepted, SubmitError> {
        match self.admit(task, mode, options)? {
            Admission::Accepted(Some(accepted)) => Ok(accepted),
            // Never: `admit` hands it over filled.
            Admission::Accepted(None) => Err(SubmitError::new(SubmitKind::ShutDown)),
            Admission::Wait(wait) => Err(SubmitError::new(SubmitKind::Busy(wait.mode))),
        }
    }
}

/// The request of the node `info` names as its parent, when it is submitted from inside that
/// node (the usual way): at hand, open or not.
pub(crate) fn scoped_parent(info: &TaskInfo) -> Option<Arc<RequestCell>> {
    crate::request::request_of_running(info.parent_id()?)
}

impl Ready {
    /// The request, as its handle takes it, before it starts.
    pub(crate) fn accepted(&self) -> Accepted {
        let request_id = self.task.info().request_id().clone();
        let cell = Arc::clone(&self.cell);
        Accepted { request_id, cell }
    }
}

/// A request made ready to record: its cell open, its deadline's timer made.
pub(crate) struct Ready {
    pub(crate) task: ErasedTask,
    pub(crate) cell: Arc<RequestCell>,
    /// Its deadline's timer (boxed: a `Sleep` is large, and most requests have none), the
    /// timeout it came from and the runtime the timer runs on.
    deadline: Option<(
        Pin<Box<tokio::time::Sleep>>,
        Duration,
        tokio::runtime::Handle,
    )>,
    /// The request of the node it was submitted from, when that is at hand.
    scoped_parent: Option<Arc<RequestCell>>,
    /// Whether its retry policy gives each attempt a timeout.
    times_attempts: bool,
}

impl Coordinator {
    /// Checks what a request needs from the coordinator now: started, on a runtime, with a
    /// running bus. (Whether shutdown lets it in depends on its parent: [`Inner::admits`].)
    ///
    /// The runtime is the caller's; outside any, the multi-thread runtime `start` ran on while
    /// it runs, which runs the request by itself: then the caller enters it while it submits
    /// (a request is made ready and started inside a runtime, whose timers and tasks it uses),
    /// and the flag returned with it says so. A current-thread one runs tasks only while a
    /// thread blocks on it, so it is not used.
    pub(crate) fn check_open(&self) -> Result<(tokio::runtime::Handle, bool), SubmitError> {
        let inner = &self.inner;
        let started = inner
            .started
            .get()
            .ok_or_else(|| SubmitError::new(SubmitKind::NotStarted))?;
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => (runtime, false),
            Err(_) => {
                let runs = started.runtime_runs.load(Ordering::SeqCst);
                let start = started.runtime.clone().filter(|_| runs);
                let start = start.ok_or_else(|| SubmitError::new(SubmitKind::NoRuntime))?;
                (start, true)
            }
        };
        if !started.publisher.is_running() {
            return Err(SubmitError::new(SubmitKind::PublisherClosed));
        }
        Ok(runtime)
    }

    /// Makes `task` ready to record: its cell, opened with what ending it needs.
    pub(crate) fn ready(
        &self,
        task: ErasedTask,
        mode: &ExecutionMode,
        entry: &Mode,
        options: SubmitOptions,
        permit: Option<Place>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Ready, SubmitError> {
        let (timeout, retry, cell_options) = options.into_parts();
        // A timeout too long to add to now is no deadline at all. The timer is made here, in
        // the caller's context: a runtime without a time driver panics in the caller (as
        // `tokio::time::timeout` does) before anything is recorded. Now is the runtime's clock,
        // as for any tokio timer: a paused clock (`tokio::time::pause`) may be far from the
        // wall clock's.
        let deadline = timeout
            .and_then(|t| Some((deadline_after(t)?, t)))
            .map(|(at, t)| (Box::pin(tokio::time::sleep_until(at)), t, runtime.clone()));
        if retry.is_some() {
            // A backoff's timer is made later, on the runtime: check for its driver now.
            drop(tokio::time::sleep(Duration::ZERO));
        }
        let span = task_span(task.info(), mode);
        let cell = RequestCell::new(task.info().node_id().clone(), span, cell_options);
        let scoped_parent = scoped_parent(task.info());
        let times_attempts = retry
            .as_ref()
            .is_some_and(|policy| policy.get_attempt_timeout().is_some());
        let retry = retry.map(|policy| {
            Box::new(Retry {
                mode: entry.index,
                policy,
                next: task.replay(),
                attempt: 1,
                runtime: runtime.clone(),
                backoff: None,
                timer: None,
                expired: None,
                last_failure: None,
            })
        });
        cell.open(Ending {
            // Downgraded as itself, then coerced to the request's `Weak<dyn Owner>`.
            inner: Arc::downgrade(&self.inner) as Weak<Inner>,
            info: task.info().clone(),
            permit,
            deadline: None,
            retry,
            held: None,
        });
        Ok(Ready {
            task,
            cell,
            deadline,
            scoped_parent,
            times_attempts,
        })
    }

    /// Records a ready request's job, under the table's lock. Returns whether it is born
    /// cancelled (its parent was cancelled already).
    pub(crate) fn record(
        table: &mut CoordinatorState<OpenRequest>,
        ready: &Ready,
        entry: &Mode,
    ) -> Result<bool, StateError> {
        let open = OpenRequest {
            cell: Arc::clone(&ready.cell),
            mode: entry.index,
        };
        table.add_job_with(&ready.task, open)?;
        let parent = match &ready.scoped_parent {
            Some(parent) => Some(&**parent),
            None => (ready.task.info().parent_id())
                .and_then(|parent| table.attachment_of_node(parent))
                .map(|parent| &*parent.cell),
        };
        ready.cell.join_trees(parent, ready.task.info());
        let born_cancelled = parent.is_some_and(|parent| parent.adopt(&ready.cell));
        entry.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(born_cancelled)
    }

    /// Publishes a recorded request's opening, before its deadline and its strategy start and
    /// while its ending is held: nothing about it is published earlier.
    pub(crate) fn announce_opening(bus: &RequestCompletionPublisher, ready: &Ready, entry: &Mode) {
        let opened = RequestCompletionMessage::Creation(RequestCreation {
            info: ready.task.info().clone(),
            mode: entry.name.clone(),
        });
        if let Err(refused) = bus.publish(opened) {
            tracing::trace!(%refused, "opening not announced");
        }
    }

    /// Starts a recorded request that waited `waited` for its place (given to it): its deadline
    /// counts from now.
    pub(crate) fn start_queued(mut ready: Ready, entry: &Mode, waited: Duration) {
        entry.metrics.waited(waited);
        ready.deadline = ready.deadline.and_then(|(mut sleep, timeout, runtime)| {
            let at = deadline_after(timeout)?;
            sleep.as_mut().reset(at);
            Some((sleep, timeout, runtime))
        });
        drop(Self::start_recorded(ready, false, entry));
    }

    /// Starts a recorded request: its deadline's timer, then its strategy (or, born cancelled,
    /// its cancelled ending).
    pub(crate) fn start_recorded(ready: Ready, born_cancelled: bool, entry: &Mode) -> Accepted {
        let Ready {
            task,
            cell,
            deadline,
            times_attempts,
            ..
        } = ready;
        tracing::trace!(parent: cell.span(), "job opened");
        cell.wake_trees();
        if let Some((sleep, timeout, runtime)) = deadline {
            let expiry = Expiry::new(&cell);
            let timer = runtime.spawn(async move {
                sleep.await;
                expiry.fire(timeout);
            });
            cell.set_deadline(timer.abort_handle());
        }
        let request_id = task.info().request_id().clone();
        if born_cancelled {
            // Its parent was cancelled already: it ends cancelled, and never starts.
            cell.cancel_with_parent();
        } else if let Some(completion) = cell.completion() {
            if times_attempts {
                cell.time_attempt();
            }
            execute(&entry.strategy, task, completion);
        }
        Accepted { request_id, cell }
    }

    /// Validates, records and starts one request, holding `place` under its mode's limit (its
    /// own, taken after waiting `waited`, or shared with its parent). It is born cancelled when
    /// its parent cancels its children, or when `doomed` says so once it is recorded.
    fn accept(
        &self,
        task: ErasedTask,
        mode: ExecutionMode,
        entry: &Mode,
        options: SubmitOptions,
        (place, waited): (Option<Place>, Option<Duration>),
        doomed: &mut dyn FnMut() -> bool,
    ) -> Result<Accepted, SubmitError> {
        let (runtime, outside) = self.check_open()?;
        let _entered = outside.then(|| runtime.enter());
        let ready = self.ready(task, &mode, entry, options, place, &runtime)?;
        let openings = self.inner.openings();
        // Announced openings come before anything else about the request: nothing ends it
        // until its opening is published.
        let cell = openings.map(|_| Arc::clone(&ready.cell));
        let held = cell.as_ref().map(|cell| cell.hold());
        let recorded = {
            let mut table = self.inner.table();
            // Checked again under the lock shutdown reads the open jobs under: a request is
            // recorded before shutdown looks (and waits for it), or refused. One that took a
            // place of its own (`waited` says so) is refused once shutdown has begun, however
            // it got the place: a wait that a freed place and shutdown's beginning both woke
            // may have taken the place.
            let own_place = waited.is_some();
            if (own_place && self.inner.is_closing())
                || !self
                    .inner
                    .admits(ready.task.info().parent_id(), Some(&table))
            {
                Err(SubmitKind::ShutDown)
            } else {
                Self::record(&mut table, &ready, entry)
                    .map_err(|e| SubmitKind::Duplicate(e.request_id().clone()))
            }
        };
        match recorded {
            Ok(born_cancelled) => {
                let born_cancelled = born_cancelled || doomed();
                // Outside the table's lock, and only for an accepted request.
                entry.metrics.accepted(waited);
                // What announcing it lets go of is dropped once it has started.
                let _later = pubsub::defer_drops();
                if let Some(bus) = openings {
                    Self::announce_opening(bus, &ready, entry);
                }
                drop(held);
                Ok(Self::start_recorded(ready, born_cancelled, entry))
            }
            Err(kind) => {
                // Not accepted: nothing is recorded, and nothing answers.
                drop(held);
                ready.cell.close_unaccepted();
                Err(SubmitError::new(kind))
            }
        }
    }
}
