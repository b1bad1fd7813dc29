//! [`Coordinator`]: submits tasks to strategies, tracks jobs, announces outcomes.

use std::any::type_name;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use futures::FutureExt;
use pubsub::{
    RequestCompletionMessage, RequestCompletionPublisher, RequestFailure, RequestSuccess,
    SubscriberId,
};
use serde::Serialize;
use task_core::{
    CoordinatorState, ErasedTask, ExecutionMode, Job, JobCounts, JobResult, NodeId, Outcome,
    RequestId, StrategyStats, Task, TaskError, TaskExecutionStrategy, TaskInfo, Value,
};
use tokio::sync::{Notify, OnceCell, oneshot};
use tracing::Instrument;

use crate::error::{StartError, StartKind, SubmitError, SubmitKind};

/// How long [`Coordinator::shutdown`] waits for work in flight unless told otherwise.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

tokio::task_local! {
    static CURRENT_NODE: NodeId;
}

/// The node running on the current tokio task or thread, if any.
///
/// Tasks submitted from inside a running node get that node as their parent automatically; this
/// is how nested calls are recorded. Async nodes are tracked per tokio task; nodes that a strategy
/// runs on a thread of its own are tracked through [`task_core::context`].
pub fn current_node() -> Option<NodeId> {
    CURRENT_NODE
        .try_with(NodeId::clone)
        .ok()
        .or_else(task_core::context::current_node)
}

type StrategyRef = Arc<dyn TaskExecutionStrategy>;

/// Builds a [`Coordinator`] from a mode -> strategy map.
///
/// # Examples
///
/// ```
/// use coordinator::{AsyncExecutionStrategy, Coordinator, ExecutionMode};
///
/// let coordinator = Coordinator::builder()
///     .strategy(ExecutionMode::ASYNC, AsyncExecutionStrategy::new())
///     .strategy("io-heavy", AsyncExecutionStrategy::new())
///     .build();
/// assert_eq!(coordinator.modes().len(), 2);
/// ```
#[derive(Default)]
pub struct CoordinatorBuilder {
    modes: HashMap<ExecutionMode, StrategyRef>,
    grace: Option<Duration>,
}

impl CoordinatorBuilder {
    /// Registers `strategy` under `mode`, replacing any strategy registered there before.
    #[must_use]
    pub fn strategy(
        self,
        mode: impl Into<ExecutionMode>,
        strategy: impl TaskExecutionStrategy,
    ) -> Self {
        self.shared_strategy(mode, Arc::new(strategy))
    }

    /// Registers a shared strategy under `mode`; one strategy may serve several modes, and is
    /// still shut down once.
    #[must_use]
    pub fn shared_strategy(
        mut self,
        mode: impl Into<ExecutionMode>,
        strategy: StrategyRef,
    ) -> Self {
        self.modes.insert(mode.into(), strategy);
        self
    }

    /// Registers the async strategy under [`ExecutionMode::ASYNC`].
    #[cfg(feature = "async")]
    #[must_use]
    pub fn with_async(self) -> Self {
        self.strategy(
            ExecutionMode::ASYNC,
            exec_strategies::AsyncExecutionStrategy::new(),
        )
    }

    /// How long [`Coordinator::shutdown`] waits for work in flight (default
    /// [`DEFAULT_SHUTDOWN_GRACE`]).
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The coordinator. It takes no tasks until [`Coordinator::start`] gives it a publisher.
    pub fn build(self) -> Coordinator {
        Coordinator {
            inner: Arc::new(Inner {
                modes: self.modes,
                grace: self.grace.unwrap_or(DEFAULT_SHUTDOWN_GRACE),
                started: OnceLock::new(),
                closing: AtomicBool::new(false),
                strategies_shut: OnceCell::new(),
                table: Mutex::new(Table::default()),
                drained: Notify::new(),
            }),
        }
    }
}

impl fmt::Debug for CoordinatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut modes: Vec<&str> = self.modes.keys().map(ExecutionMode::as_str).collect();
        modes.sort_unstable();
        f.debug_struct("CoordinatorBuilder")
            .field("modes", &modes)
            .field("grace", &self.grace)
            .finish()
    }
}

struct Started {
    publisher: RequestCompletionPublisher,
    subscriber: SubscriberId,
}

#[derive(Default)]
struct Table {
    state: CoordinatorState,
    /// The caller of each open request, answered when its job closes.
    waiters: HashMap<RequestId, oneshot::Sender<Outcome>>,
}

struct Inner {
    modes: HashMap<ExecutionMode, StrategyRef>,
    grace: Duration,
    started: OnceLock<Started>,
    closing: AtomicBool,
    strategies_shut: OnceCell<()>,
    table: Mutex<Table>,
    /// Woken whenever the last open job closes.
    drained: Notify,
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, Table> {
        // No code that can panic runs under this lock; a poisoned lock still holds a valid table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the job for `request_id` with `outcome` and answers its caller. A completion for a
    /// request this coordinator does not have open is ignored (another coordinator's, or late).
    fn complete(&self, request_id: &str, outcome: Outcome) {
        let result = if outcome.is_ok() {
            JobResult::Success
        } else {
            JobResult::Failure
        };
        let (waiter, idle) = {
            let mut table = self.table();
            if let Err(error) = table.state.end_job(request_id, result) {
                tracing::debug!(request_id, %error, "completion ignored");
                return;
            }
            (
                table.waiters.remove(request_id),
                table.state.counts().opened == 0,
            )
        };
        tracing::debug!(request_id, %result, "job closed");
        if idle {
            self.drained.notify_waiters();
        }
        if let Some(waiter) = waiter {
            // The caller may have stopped waiting (dropped its future); the job is closed anyway.
            let _ = waiter.send(outcome);
        }
    }

    fn handle_item(&self, item: &RequestCompletionMessage) {
        match item {
            RequestCompletionMessage::Success(m) => {
                self.complete(m.info.request_id(), Ok(m.result.clone()));
            }
            RequestCompletionMessage::Failure(m) => {
                self.complete(m.info.request_id(), Err(m.error.clone()));
            }
            // A creation failure never had a job; other messages do not end requests.
            _ => {}
        }
    }

    fn open_jobs(&self) -> u64 {
        self.table().state.counts().opened
    }
}

/// Closes the job as failed if the driver is dropped before its outcome was announced (the runtime
/// shut down under it), so no job stays open forever.
struct CloseOnDrop<'a> {
    inner: &'a Inner,
    request_id: Option<&'a str>,
}

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(request_id) = self.request_id {
            self.inner.complete(
                request_id,
                Err(TaskError::strategy(
                    "the runtime stopped before the task's outcome was announced",
                )),
            );
        }
    }
}

/// Runs one accepted request to its single terminal message.
async fn drive(
    inner: Arc<Inner>,
    strategy: StrategyRef,
    task: ErasedTask,
    publisher: RequestCompletionPublisher,
) {
    let info = task.info().clone();
    let request_id = info.request_id().clone();
    let mut guard = CloseOnDrop {
        inner: &inner,
        request_id: Some(request_id.as_str()),
    };
    let run = AssertUnwindSafe(async { strategy.execute(task).await }).catch_unwind();
    let outcome = CURRENT_NODE
        .scope(info.node_id().clone(), run)
        .await
        // A strategy that panics is a bug in the strategy; the request still ends.
        .unwrap_or_else(|payload| Err(TaskError::panic(payload)));
    // The message takes the task's description; only the id is kept for the fallback below.
    let message = match &outcome {
        Ok(value) => RequestCompletionMessage::Success(RequestSuccess {
            info,
            result: value.clone(),
        }),
        Err(error) => RequestCompletionMessage::Failure(RequestFailure {
            info,
            error: error.clone(),
        }),
    };
    tracing::debug!(%message, "publishing outcome");
    if let Err(refused) = publisher.publish(message).await {
        // The bus went away after the request was accepted: close the job here instead.
        tracing::warn!(%refused, "outcome not published; closing the job directly");
        inner.complete(&request_id, outcome);
    }
    guard.request_id = None;
}

/// Runs tasks under the execution mode asked for, tracks every job, announces every outcome.
///
/// Built from a mode -> strategy map ([`Coordinator::builder`]), then [started](Self::start) with
/// a publisher. [`submit`](Self::submit):
///
/// 1. rejects, recording nothing, a request the coordinator cannot take: not started, shut down,
///    unknown mode, or a request id whose job is still open;
/// 2. records an opened job and runs the task on the mode's strategy, on a task of its own, so
///    the request ends even if the caller stops waiting;
/// 3. publishes exactly one completion message (success or failure);
/// 4. the coordinator's own subscriber closes the job from that message, then hands the typed
///    result back to the caller: by the time `submit` returns, the message is published and the
///    job is closed.
///
/// Cloning gives another handle to the same coordinator; nodes may hold one to submit children.
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
#[derive(Clone)]
pub struct Coordinator {
    inner: Arc<Inner>,
}

impl Coordinator {
    /// A builder with no modes registered.
    pub fn builder() -> CoordinatorBuilder {
        CoordinatorBuilder::default()
    }

    /// A coordinator over `execution_modes`, the seed's constructor.
    pub fn new(execution_modes: impl IntoIterator<Item = (ExecutionMode, StrategyRef)>) -> Self {
        execution_modes
            .into_iter()
            .fold(Self::builder(), |b, (mode, s)| b.shared_strategy(mode, s))
            .build()
    }

    /// The modes this coordinator can run tasks in, sorted.
    pub fn modes(&self) -> Vec<ExecutionMode> {
        let mut modes: Vec<_> = self.inner.modes.keys().cloned().collect();
        modes.sort();
        modes
    }

    /// Attaches the coordinator to `publisher`: its subscriber closes jobs from completion
    /// messages ([`handle_item`](Self::handle_item)), and outcomes are published there.
    ///
    /// # Errors
    ///
    /// When already started, or when the publisher refuses the subscriber (it is shut down, or
    /// this is called outside a tokio runtime). Nothing is subscribed then.
    pub fn start(&self, publisher: &RequestCompletionPublisher) -> Result<(), StartError> {
        if self.inner.started.get().is_some() {
            return Err(StartError::new(StartKind::AlreadyStarted));
        }
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let subscriber = publisher
            .subscribe(move |item| {
                if let Some(inner) = weak.upgrade() {
                    inner.handle_item(&item);
                }
            })
            .map_err(|e| StartError::new(StartKind::Subscribe(e)))?;
        let started = Started {
            publisher: publisher.clone(),
            subscriber,
        };
        if let Err(lost) = self.inner.started.set(started) {
            // Another `start` won the race; withdraw this subscriber.
            let _ = lost.publisher.unsubscribe(lost.subscriber);
            return Err(StartError::new(StartKind::AlreadyStarted));
        }
        Ok(())
    }

    /// Handles one completion message: a success closes its job as succeeded, a failure as
    /// failed, and the caller waiting in [`submit`](Self::submit) gets the outcome. Creation
    /// failures (which never had a job) and other messages are ignored, as are messages for
    /// requests this coordinator has no open job for.
    ///
    /// The coordinator's own subscriber calls this; call it yourself only to feed completions
    /// from another source.
    pub fn handle_item(&self, item: &RequestCompletionMessage) {
        self.inner.handle_item(item);
    }

    /// Submits `task` to the strategy registered for `mode` and returns the node's output.
    ///
    /// A task without a parent submitted from inside a running node gets that node as parent.
    ///
    /// # Errors
    ///
    /// A rejection ([`SubmitError::is_rejected`]; nothing recorded, nothing published) when the
    /// coordinator is not started or is shut down, no strategy is registered for `mode`, a job
    /// with the same request id is still open, or this runs outside a tokio runtime. A failure
    /// ([`SubmitError::task_error`]) when the node returned an error, panicked, or its strategy
    /// could not run it.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after its first poll does not cancel the request: it runs to its
    /// terminal message and its job closes; only the output is discarded.
    pub async fn submit<O>(
        &self,
        task: Task<O>,
        mode: impl Into<ExecutionMode>,
    ) -> Result<O, SubmitError>
    where
        O: Clone + fmt::Debug + Send + Sync + 'static,
    {
        let value = self.submit_erased(task.into_erased(), mode).await?;
        value.take::<O>().map_err(|value| {
            SubmitError::new(SubmitKind::Failed(TaskError::strategy(format!(
                "expected a {} result, got {value:?}",
                type_name::<O>()
            ))))
        })
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
        let receiver = self.accept(task, mode.into())?;
        let outcome = receiver.await.unwrap_or_else(|_| {
            Err(TaskError::strategy(
                "the request ended without an outcome reaching its caller",
            ))
        });
        outcome.map_err(|e| SubmitError::new(SubmitKind::Failed(e)))
    }

    /// Validates, records and launches a request; everything before the launch is synchronous, so
    /// a request is either rejected with nothing recorded or fully accepted.
    fn accept(
        &self,
        mut task: ErasedTask,
        mode: ExecutionMode,
    ) -> Result<oneshot::Receiver<Outcome>, SubmitError> {
        let inner = &self.inner;
        let started = inner
            .started
            .get()
            .ok_or_else(|| SubmitError::new(SubmitKind::NotStarted))?;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(SubmitError::new(SubmitKind::ShutDown));
        }
        let strategy = inner
            .modes
            .get(&mode)
            .cloned()
            .ok_or_else(|| SubmitError::new(SubmitKind::UnknownMode(mode.clone())))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| SubmitError::new(SubmitKind::NoRuntime))?;
        if !started.publisher.is_running() {
            return Err(SubmitError::new(SubmitKind::PublisherClosed));
        }
        if task.info().parent_id().is_none()
            && let Some(parent) = current_node()
        {
            task = task.with_parent(parent);
        }
        let (sender, receiver) = oneshot::channel();
        {
            let mut table = inner.table();
            table
                .state
                .add_job(&task)
                .map_err(|e| SubmitError::new(SubmitKind::Duplicate(e.request_id().clone())))?;
            table
                .waiters
                .insert(task.info().request_id().clone(), sender);
        }
        let span = task_span(task.info(), &mode);
        tracing::debug!(parent: &span, "job opened");
        runtime.spawn(
            drive(Arc::clone(inner), strategy, task, started.publisher.clone()).instrument(span),
        );
        Ok(receiver)
    }

    /// A serializable snapshot: the counts, every recorded job (oldest first) and each mode's
    /// strategy counters.
    pub fn system_detail(&self) -> SystemDetail {
        let (counts, jobs) = {
            let table = self.inner.table();
            let jobs: Vec<Job> = table
                .state
                .jobs_by_start_time()
                .into_iter()
                .cloned()
                .collect();
            (table.state.counts(), jobs)
        };
        let modes = self
            .inner
            .modes
            .iter()
            .map(|(mode, strategy)| (mode.to_string(), strategy.stats()))
            .collect();
        SystemDetail {
            accepting: self.is_accepting(),
            counts,
            jobs,
            modes,
        }
    }

    /// The job for `request_id`, if recorded.
    pub fn job(&self, request_id: &str) -> Option<Job> {
        self.inner.table().state.get(request_id).cloned()
    }

    /// The running totals of the job table.
    pub fn counts(&self) -> JobCounts {
        self.inner.table().state.counts()
    }

    /// Reads the job table under its lock. Keep `f` short: submissions wait for it.
    pub fn with_state<R>(&self, f: impl FnOnce(&CoordinatorState) -> R) -> R {
        f(&self.inner.table().state)
    }

    /// Shuts down with the grace period set on the builder (default [`DEFAULT_SHUTDOWN_GRACE`]).
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(self.inner.grace).await;
    }

    /// Stops taking tasks, waits until every accepted request has ended or `grace` has passed,
    /// then shuts every strategy down exactly once (a strategy serving several modes once) with
    /// whatever is left of `grace`.
    ///
    /// Requests accepted before the call all get to run: the strategies are closed only after
    /// them. Calling it again does not shut strategies down again; it waits for open jobs again.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        let drained =
            exec_strategies::support::wait_for(&inner.drained, || inner.open_jobs() == 0, deadline)
                .await;
        if !drained {
            tracing::warn!(
                open_jobs = inner.open_jobs(),
                "coordinator shutdown: grace period over with jobs still open"
            );
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        inner
            .strategies_shut
            .get_or_init(|| async {
                let mut unique: Vec<&StrategyRef> = Vec::new();
                for strategy in inner.modes.values() {
                    if !unique.iter().any(|s| Arc::ptr_eq(s, strategy)) {
                        unique.push(strategy);
                    }
                }
                futures::future::join_all(unique.into_iter().map(|s| s.shutdown(remaining))).await;
            })
            .await;
    }

    /// Whether the coordinator takes tasks (started and not shut down).
    pub fn is_accepting(&self) -> bool {
        self.inner.started.get().is_some() && !self.inner.closing.load(Ordering::SeqCst)
    }
}

fn task_span(info: &TaskInfo, mode: &ExecutionMode) -> tracing::Span {
    tracing::info_span!(
        "task",
        request_id = %info.request_id(),
        node = %info.name(),
        node_id = %info.node_id(),
        parent = info.parent_id().map(|p| p.as_str()),
        mode = %mode,
    )
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
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct SystemDetail {
    /// Whether the coordinator takes tasks.
    pub accepting: bool,
    /// Running totals of the job table.
    pub counts: JobCounts,
    /// Every recorded job, oldest first.
    pub jobs: Vec<Job>,
    /// Each mode's strategy counters, by mode name.
    pub modes: BTreeMap<String, StrategyStats>,
}
