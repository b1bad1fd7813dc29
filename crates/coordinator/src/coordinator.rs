//! [`Coordinator`]: submits tasks to strategies, tracks jobs, announces outcomes.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pubsub::{RequestCompletionMessage, RequestCompletionPublisher};
use serde::{Deserialize, Serialize};

use task_core::{ErasedTask, ExecutionMode, StrategyStats, Task, Value};

use crate::job::Job;
use crate::state::{CoordinatorState, JobCounts};

use crate::error::{StartError, StartKind, SubmitError};
use crate::handle::{RequestHandle, shared_output, take_output};
use crate::inner::{Inner, ModeCounts, OpenRequest, Started};
use crate::options::SubmitOptions;

/// How long [`Coordinator::shutdown`] waits for work in flight unless told otherwise.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs tasks under the execution mode asked for, tracks every job, announces every outcome.
///
/// Built from a mode -> strategy map ([`Coordinator::builder`]), then [started](Self::start) with
/// a publisher. [`submit`](Self::submit):
///
/// 1. rejects, recording nothing, a request the coordinator cannot take: not started, shut down,
///    unknown mode, or a request id whose job is still open;
/// 2. records an opened job and hands the task to the mode's strategy with a completion of this
///    coordinator's, so the request ends even if the caller stops waiting;
/// 3. when the outcome arrives (or a cancellation, or the deadline), closes the job itself, hands
///    exactly one completion message (success or failure) to the bus for observers, never
///    waiting for a subscriber, and answers the caller: by the time `submit` returns, the job is
///    closed and the message has been handed to the bus.
///
/// Cloning gives another handle to the same coordinator; nodes may hold one to submit children.
/// Dropping the last handle without [`shutdown`](Self::shutdown) ends every request still open,
/// failed and announced (on a thread of its own, needing no runtime and none of the dropping
/// thread's locks), and then releases the strategies. A handle a request holds (a node's capture, a retry's copy of its task) keeps
/// the coordinator, and its requests, alive until then: call `shutdown`.
///
/// # Examples
///
/// ```
/// use coordinator::{Coordinator, ExecutionMode, RequestCompletionPublisher, Task};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = RequestCompletionPublisher::new();
/// publisher.start()?;
/// let coordinator = Coordinator::builder().with_async().build();
/// coordinator.start(&publisher)?;
///
/// let task = Task::from_fn("123", "greet", || async { Ok::<_, coordinator::BoxError>("hello") });
/// let greeting: &str = coordinator.submit(task, ExecutionMode::ASYNC).await?;
/// assert_eq!(greeting, "hello");
/// assert_eq!(coordinator.system_detail().counts.succeeded, 1);
///
/// coordinator.shutdown().await;
/// publisher.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct Coordinator {
    pub(crate) inner: Arc<Inner>,
}

impl Clone for Coordinator {
    fn clone(&self) -> Self {
        self.inner.handles.fetch_add(1, Ordering::Relaxed);
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// The last handle dropped without [`Coordinator::shutdown`] ends every request still open:
/// failed, each announced, its caller answered, its run told to stop. Counted apart from the
/// coordinator's own references (a request's completion holds one a moment), so this runs while
/// the coordinator is whole, whoever lets it go last.
impl Drop for Coordinator {
    fn drop(&mut self) {
        if self.inner.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            Inner::end_open_requests(&self.inner);
        }
    }
}

impl Coordinator {
    /// The modes this coordinator can run tasks in, sorted.
    pub fn modes(&self) -> Vec<ExecutionMode> {
        let mut modes: Vec<_> = self.inner.modes.iter().map(|m| m.name.clone()).collect();
        modes.sort();
        modes
    }

    /// Attaches the coordinator to `publisher`: every request's outcome is announced there, for
    /// observers. The coordinator does not subscribe: it closes its jobs and answers its callers
    /// itself, so no subscriber can delay either.
    ///
    /// # Errors
    ///
    /// When already started, when shut down ([`StartError::is_shut_down`]: a coordinator whose
    /// shutdown began before this call is not started again; one started as its shutdown begins
    /// takes no request either), when the publisher is not started or is shut down, or when the
    /// builder set a limit for a mode no strategy serves ([`StartError::is_unknown_mode`]).
    pub fn start(&self, publisher: &RequestCompletionPublisher) -> Result<(), StartError> {
        if self.inner.is_closing() {
            return Err(StartError::new(StartKind::ShutDown));
        }
        if let Some((mode, known)) = &self.inner.stray_limit {
            let kind = StartKind::LimitOfUnknownMode(mode.clone(), known.clone());
            return Err(StartError::new(kind));
        }
        if publisher.is_shut_down() {
            return Err(StartError::new(StartKind::PublisherShutDown));
        }
        if !publisher.is_running() {
            return Err(StartError::new(StartKind::PublisherNotStarted));
        }
        let started = Started::new(publisher);
        self.inner
            .started
            .set(started)
            .map_err(|_| StartError::new(StartKind::AlreadyStarted))
    }

    /// Applies a completion message from elsewhere (a bus, a log being replayed): a success
    /// closes its job as succeeded, a failure as failed, the caller waiting in
    /// [`submit`](Self::submit) gets the outcome, and the run still under way is cancelled.
    ///
    /// Only a message for a job this coordinator has open, with the same request id and node id,
    /// does anything; others (another coordinator's, creation failures, late duplicates) are
    /// ignored. It is not announced again. The coordinator's own outcomes never need this: it
    /// applies them itself.
    ///
    /// It takes the message: a caller of [`submit`](Self::submit) or [`spawn`](Self::spawn)
    /// gets its output moved out of it. When anyone else still holds the message's value (a
    /// clone of the message kept, or a message read from a bus, which keeps a copy), that
    /// request fails instead, saying so, job and caller alike; a request submitted with
    /// [`submit_shared`](Self::submit_shared) or [`spawn_erased`](Self::spawn_erased) takes
    /// the value shared either way. A value of another type than a typed caller's fails the
    /// request too, job and caller alike.
    pub fn handle_item(&self, item: RequestCompletionMessage) {
        let (info, outcome) = match item {
            RequestCompletionMessage::Success(m) => (m.info, Ok(m.result)),
            RequestCompletionMessage::Failure(m) => (m.info, Err(m.error)),
            // A creation failure never had a job; other messages do not end requests.
            _ => return,
        };
        let cell = self
            .inner
            .table()
            .attachment(info.request_id())
            .filter(|open| open.cell.node_id() == info.node_id())
            .map(|open| Arc::clone(&open.cell));
        match cell {
            // Outside the table lock: ending the request takes it.
            Some(cell) => cell.stop(outcome, false),
            None => {
                tracing::trace!(request_id = %info.request_id(), "completion for no open job of this coordinator ignored")
            }
        }
    }

    /// Announces each request accepted from now on (`true`), or no longer (`false`), with a
    /// [`RequestCreation`](crate::RequestCreation) message on the bus, published before anything
    /// else about that request (its events, its outcome). Off by default: it costs a publish per
    /// request while anyone subscribes. An observer that needs them for a while takes a
    /// [`follow_openings`](Self::follow_openings) guard instead, which leaves this setting alone.
    pub fn announce_openings(&self, on: bool) {
        self.inner.openings.store(on, Ordering::Relaxed);
    }

    /// Announces accepted requests, as [`announce_openings(true)`](Self::announce_openings)
    /// does, for as long as the returned guard lives (the dashboard holds one per open event
    /// stream). Guards count: openings are announced while any is alive or the user turned them
    /// on.
    pub fn follow_openings(&self) -> OpeningsFollower {
        self.inner
            .openings_followers
            .fetch_add(1, Ordering::Relaxed);
        OpeningsFollower {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Whether accepted requests are announced now: turned on by
    /// [`announce_openings`](Self::announce_openings), or followed by a
    /// [`follow_openings`](Self::follow_openings) guard.
    pub fn announces_openings(&self) -> bool {
        self.inner.announces_openings()
    }

    /// Submits `task` to the strategy registered for `mode` and returns the node's output.
    ///
    /// A task without a parent submitted from inside a running node gets that node as parent.
    /// When the mode has a concurrency limit ([`CoordinatorBuilder::limit`](crate::CoordinatorBuilder::limit)) and it is reached,
    /// this waits for a place first.
    ///
    /// # Errors
    ///
    /// A rejection ([`SubmitError::is_rejected`]; nothing recorded, nothing published) when the
    /// coordinator is not started or is shut down, no strategy is registered for `mode`, the
    /// request id is empty ([`SubmitError::is_empty_id`]), a job with the same request id is
    /// still open, the publisher the coordinator was started with no longer runs
    /// ([`SubmitError::is_publisher_closed`]), or this runs outside a tokio runtime and the
    /// coordinator was not started on a multi-thread one still running, which would run it
    /// (and, for [`submit_with`](Self::submit_with), when its options ask for retries of a task
    /// that can run only once: [`SubmitError::is_not_replayable`]). A failure
    /// ([`SubmitError::task_error`]) when the node returned an error, panicked, or its strategy
    /// could not run it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request was accepted does not cancel the request: it runs
    /// to its terminal message and its job closes; only the output is discarded. To cancel, use
    /// [`spawn`](Self::spawn) and [`RequestHandle::cancel`].
    ///
    /// # The output is the caller's
    ///
    /// The output, of any `Debug + Send + Sync + 'static` type (`Clone` or not: a file handle, a
    /// tokio channel's receiver), is moved to the caller, never cloned. A type that is `Send`
    /// but not `Sync` (a `std::sync::mpsc::Receiver`, a `Cell`) goes in a `std::sync::Mutex`,
    /// which is. The bus's success message carries its `Debug` text instead, as a
    /// [`TakenOutput`](crate::TakenOutput). For subscribers that need the value itself, use
    /// [`submit_shared`](Self::submit_shared): the caller and the message share it as an
    /// `Arc<O>`.
    pub fn submit<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
    ) -> impl Future<Output = Result<O, SubmitError>>
    where
        O: fmt::Debug + Send + Sync + 'static,
    {
        // `submit_with`'s future itself, not one wrapping it: a wrapper would hold the
        // arguments twice, and this future is moved for every request.
        self.submit_with(task, mode, SubmitOptions::new())
    }

    /// [`submit`](Self::submit) with a timeout and a retry policy.
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit); past the timeout, a failure for which
    /// [`SubmitError::is_timeout`] holds.
    pub async fn submit_with<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
        options: SubmitOptions,
    ) -> Result<O, SubmitError>
    where
        O: fmt::Debug + Send + Sync + 'static,
    {
        let accepted = self
            .admit(
                task.into_erased(),
                mode.into(),
                options.unread().output::<O>(true),
            )?
            .await?;
        accepted.into_handle(take_output::<O>).await
    }

    /// Accepts `task` (waiting for a place under the mode's concurrency limit, if it has one)
    /// and returns a handle to await or cancel it.
    ///
    /// While it waits for a place nothing is recorded: the request is not in the job table yet,
    /// and dropping this future abandons it; [`cancel`](Self::cancel) with its request id still
    /// reaches it (it then returns cancelled, never run). To have it recorded at once and wait
    /// its turn in the job table, submit it as a batch of one
    /// ([`submit_many`](Self::submit_many)).
    ///
    /// # Errors
    ///
    /// The rejections of [`submit`](Self::submit); the request was not accepted.
    pub async fn spawn<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
        options: SubmitOptions,
    ) -> Result<RequestHandle<O>, SubmitError>
    where
        O: fmt::Debug + Send + Sync + 'static,
    {
        let accepted = self
            .admit(task.into_erased(), mode.into(), options.output::<O>(true))?
            .await?;
        Ok(accepted.into_handle(take_output::<O>))
    }

    /// [`spawn`](Self::spawn) without waiting: when the mode is at its concurrency limit, a busy
    /// error ([`SubmitError::is_busy`]) instead.
    ///
    /// # Errors
    ///
    /// The rejections of [`submit`](Self::submit), and busy.
    pub fn try_spawn<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
        options: SubmitOptions,
    ) -> Result<RequestHandle<O>, SubmitError>
    where
        O: fmt::Debug + Send + Sync + 'static,
    {
        match self.admit_now(task.into_erased(), mode.into(), options.output::<O>(true)) {
            Ok(accepted) => Ok(accepted.into_handle(take_output::<O>)),
            Err(error) => Err(error),
        }
    }

    /// [`submit`](Self::submit), with the output shared with the bus's subscribers rather than
    /// moved to the caller: the caller and the success message hold the same `Arc<O>`. With a
    /// timeout, retries, events or a handle, the same sharing is
    /// [`spawn_erased`](Self::spawn_erased)`(task.into_erased(), mode, options)` and
    /// [`Value::downcast`].
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use coordinator::{BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, Task};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let publisher = RequestCompletionPublisher::new();
    /// # publisher.start()?;
    /// # let coordinator = Coordinator::builder().with_async().build();
    /// # coordinator.start(&publisher)?;
    /// // A subscriber that keeps every message it is given.
    /// let mut seen = publisher.subscribe_stream()?;
    /// let task = Task::from_fn("m", "counter", || async { Ok::<_, BoxError>(Mutex::new(0)) });
    /// let counter: Arc<Mutex<i32>> = coordinator.submit_shared(task, ExecutionMode::ASYNC).await?;
    /// *counter.lock().unwrap() += 1;
    /// // The subscriber holds the same counter.
    /// let Some(Ok(coordinator::RequestCompletionMessage::Success(done))) = seen.recv().await else {
    ///     unreachable!("a success first")
    /// };
    /// assert_eq!(*done.result.downcast_ref::<Mutex<i32>>().unwrap().lock().unwrap(), 1);
    /// # coordinator.shutdown().await;
    /// # publisher.shutdown().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn submit_shared<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
    ) -> Result<Arc<O>, SubmitError>
    where
        O: fmt::Debug + Send + Sync + 'static,
    {
        self.submit_shared_with(task, mode, SubmitOptions::new())
            .await
    }

    /// [`submit_shared`](Self::submit_shared) with a timeout, a retry policy or other options.
    ///
    /// # Errors
    ///
    /// As for [`submit_with`](Self::submit_with).
    ///
    /// # Cancel safety
    ///
    /// As for [`submit`](Self::submit).
    pub async fn submit_shared_with<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
        options: SubmitOptions,
    ) -> Result<Arc<O>, SubmitError>
    where
        O: fmt::Debug + Send + Sync + 'static,
    {
        let accepted = self
            .admit(
                task.into_erased(),
                mode.into(),
                options.unread().output::<O>(false),
            )?
            .await?;
        accepted.into_handle(shared_output::<O>).await
    }

    /// [`submit`](Self::submit) for a task whose output type is erased; returns the shared
    /// [`Value`].
    ///
    /// # Errors
    ///
    /// As for [`submit`](Self::submit).
    ///
    /// # Cancel safety
    ///
    /// As for [`submit`](Self::submit).
    pub async fn submit_erased(
        &self,
        task: ErasedTask,
        mode: impl Into<ExecutionMode>,
    ) -> Result<Value, SubmitError> {
        self.spawn_erased(task, mode, SubmitOptions::new())
            .await?
            .await
    }

    /// [`spawn`](Self::spawn) for a task whose output type is erased.
    ///
    /// # Errors
    ///
    /// As for [`spawn`](Self::spawn).
    pub async fn spawn_erased(
        &self,
        task: ErasedTask,
        mode: impl Into<ExecutionMode>,
        options: SubmitOptions,
    ) -> Result<RequestHandle<Value>, SubmitError> {
        let accepted = self.admit(task, mode.into(), options)?.await?;
        Ok(accepted.into_handle(Ok))
    }

    /// Cancels the open request `request_id` and the children it submitted, as
    /// [`RequestHandle::cancel`] does. Returns whether such a request was open when asked: one
    /// whose outcome was arriving at that moment ends with that outcome, not cancelled.
    ///
    /// A submission of `request_id` still waiting for a place under its mode's limit (a
    /// `submit` or `spawn`, not recorded yet) is cancelled too, and counts as open here: it
    /// returns an error for which [`SubmitError::is_cancelled`] holds, its node never run
    /// (one that got its place meanwhile is recorded cancelled, never started).
    pub fn cancel(&self, request_id: &str) -> bool {
        // The waiting ones first: a submission leaves them only once it is recorded (or
        // refused), so one missed there is found in the table.
        let waiting = self.inner.waiting.cancel(request_id);
        let cell = self
            .inner
            .table()
            .attachment(request_id)
            .map(|open| Arc::clone(&open.cell));
        // Outside the table lock: a launched request publishes its outcome as it is cancelled.
        let open = cell.map(|cell| cell.cancel()).is_some();
        waiting || open
    }

    /// A serializable snapshot: the counts, every recorded job (oldest first) and each mode's
    /// strategy counters. The table's lock is held only to copy the jobs; they are sorted after.
    /// Its cost grows with the jobs recorded: for a view taken often, use
    /// [`overview`](Self::overview).
    pub fn system_detail(&self) -> SystemDetail {
        let (counts, mut jobs) = {
            let table = self.inner.table();
            let jobs: Vec<Job> = table.iter().cloned().collect();
            (table.counts(), jobs)
        };
        jobs.sort_by(|a, b| {
            a.start_time()
                .cmp(&b.start_time())
                .then_with(|| a.request_id().cmp(b.request_id()))
        });
        SystemDetail {
            counts,
            jobs,
            ..self.overview()
        }
    }

    /// [`system_detail`](Self::system_detail) without the jobs (`jobs` is empty): the counts and
    /// each mode's request and strategy counters, at a cost that does not grow with the jobs
    /// recorded. What a progress display or a dashboard polls.
    pub fn overview(&self) -> SystemDetail {
        let modes = self
            .inner
            .modes
            .iter()
            .map(|mode| (mode.name.to_string(), mode.strategy.stats()))
            .collect();
        let requests = self
            .inner
            .modes
            .iter()
            .map(|mode| (mode.name.to_string(), mode.counters.snapshot()))
            .collect();
        SystemDetail {
            accepting: self.is_accepting(),
            counts: self.counts(),
            jobs: Vec::new(),
            requests,
            modes,
        }
    }

    /// The job for `request_id`, if recorded.
    pub fn job(&self, request_id: &str) -> Option<Job> {
        self.inner.table().get(request_id).cloned()
    }

    /// The running totals of the job table.
    pub fn counts(&self) -> JobCounts {
        self.inner.table().counts()
    }

    /// Reads the job table under its lock.
    ///
    /// `f` runs while every submission and every ending request waits for the lock: keep it
    /// short, and never call back into this coordinator from it (that deadlocks). Copy what you
    /// need out and act on it after.
    pub fn with_state<R>(&self, f: impl FnOnce(&CoordinatorState<OpenRequest>) -> R) -> R {
        f(&self.inner.table())
    }

    /// Whether the coordinator takes new requests (started and not shutting down). During
    /// shutdown's grace period it still takes the children of requests open in it.
    pub fn is_accepting(&self) -> bool {
        self.inner.started.get().is_some() && !self.inner.closing.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("modes", &self.modes())
            .field("accepting", &self.is_accepting())
            .field("counts", &self.counts())
            .finish()
    }
}

/// A snapshot of a coordinator: what [`Coordinator::system_detail`] returns. Serializes to JSON
/// with `serde_json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct SystemDetail {
    /// Whether the coordinator takes tasks.
    pub accepting: bool,
    /// Running totals of the job table: `open` is the jobs open now (in status "opened"),
    /// `closed` the jobs closed so far.
    pub counts: JobCounts,
    /// Every recorded job, oldest first.
    pub jobs: Vec<Job>,
    /// Each mode's requests as the coordinator counts them (in flight, and how they ended), by
    /// mode name: one count per request, whatever its attempts.
    pub requests: BTreeMap<String, ModeCounts>,
    /// Each mode's strategy counters (and, for worker pools, each worker's id, pid and load, and
    /// the restart count), by mode name. A strategy counts the runs it took (not one it refused
    /// as it shut down, nor one handed over already cancelled): every
    /// attempt of a retried request, a run that ended after its request timed out or was
    /// cancelled, and, as `stopped`, one let go of unfinished then. So its `failed` can exceed
    /// the request counts' `failed` of the same mode, and a request's `cancelled` need not match
    /// a `stopped` run: a request cancelled before it was handed over (a child submitted under
    /// a cancelled parent, a batch task cancelled while it waited) never reached its strategy.
    /// A run is still `in_flight` here until its strategy lets go of it, which may come a moment
    /// after its caller was answered (an async node is dropped at its next wake-up).
    pub modes: BTreeMap<String, StrategyStats>,
}

/// Keeps a coordinator announcing the requests it accepts until dropped
/// ([`Coordinator::follow_openings`]).
#[must_use = "openings are followed only while the guard lives"]
pub struct OpeningsFollower {
    inner: std::sync::Weak<Inner>,
}

impl Drop for OpeningsFollower {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.openings_followers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for OpeningsFollower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpeningsFollower").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_beside_each_job_is_the_size_the_memory_benchmark_assumes() {
        // benches/src/bin/bench_report/memory.rs measures the job table with a stand-in of this
        // size for `OpenRequest`, as every retained job keeps an (empty) slot for it.
        assert_eq!(
            std::mem::size_of::<Option<OpenRequest>>(),
            std::mem::size_of::<Option<(Arc<()>, usize)>>()
        );
    }
}
