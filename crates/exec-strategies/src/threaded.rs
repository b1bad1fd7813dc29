//! [`ThreadedExecutionStrategy`]: tasks run on a rayon thread pool.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::signal::Signal;
use crate::tracker::OwnedAdmission;
use crate::tracker::Tracker;
use rayon::{ThreadPool, ThreadPoolBuilder};
use task_core::{
    BoxFuture, Completion, ErasedTask, NodeId, Outcome, StrategyStats, TaskBody, TaskError,
    TaskExecutionStrategy,
};

thread_local! {
    /// The node a threaded strategy runs on this thread, if any (the innermost, when a waiting
    /// node runs one of its children).
    static FRAME: RefCell<Option<Rc<Frame>>> = const { RefCell::new(None) };
}

/// A node running on a pool thread, with the children it submitted from this thread that no
/// thread has started yet: while it waits in [`block_on`], it runs them itself.
struct Frame {
    /// The strategy running the node, by its address.
    strategy: usize,
    node: NodeId,
    children: RefCell<VecDeque<Arc<Claim>>>,
}

/// A child job queued on the pool and in its parent's [`Frame`]: whichever takes it first, a
/// pool thread or its waiting parent, runs it.
struct Claim(Mutex<Option<PoolJob>>);

impl Claim {
    fn take(&self) -> Option<PoolJob> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Runs `future` to completion on the current thread and returns its output.
///
/// In a node of a [`ThreadedExecutionStrategy`], while the future waits, the thread runs the
/// children this node submitted to the same strategy that no other thread has started, so a
/// node that submits children and waits for them cannot deadlock the pool, however deep or wide
/// the nesting and however small the pool. It runs nothing else: a task that does not belong to
/// the waiting node never runs on top of it (it could wait for that node, which could not go on
/// beneath it). Elsewhere it simply parks the thread between wake-ups.
///
/// Use it in a blocking node that must wait for an async result, for example a child submitted
/// through a coordinator.
///
/// # Examples
///
/// ```
/// let answer = exec_strategies::block_on(async { 6 * 7 });
/// assert_eq!(answer, 42);
/// ```
pub fn block_on<F: Future>(future: F) -> F::Output {
    match FRAME.with(|frame| frame.borrow().clone()) {
        Some(frame) => helping_block_on(future, &frame),
        None => futures::executor::block_on(future),
    }
}

fn helping_block_on<F: Future>(future: F, frame: &Frame) -> F::Output {
    let mut future = pin!(future);
    let signal = Arc::new(Signal::default());
    let waker = Waker::from(Arc::clone(&signal));
    let mut cx = Context::from_waker(&waker);
    loop {
        let seen = signal.epoch();
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // Pending: run a child of this node that no thread has started, else sleep until woken.
        let child = frame.children.borrow_mut().pop_front();
        match child {
            Some(claim) => {
                if let Some(job) = claim.take() {
                    job.run();
                }
            }
            None => signal.sleep_unless_moved(seen),
        }
    }
}

/// Marks this thread as running `frame`'s node, restoring the previous frame (that of the
/// parent this node runs on top of) when dropped.
struct FrameScope {
    previous: Option<Rc<Frame>>,
}

impl FrameScope {
    fn enter(frame: Frame) -> Self {
        let previous = FRAME.with(|f| f.replace(Some(Rc::new(frame))));
        Self { previous }
    }
}

impl Drop for FrameScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        FRAME.with(|f| *f.borrow_mut() = previous);
    }
}

/// Why a [`ThreadedExecutionStrategy`] could not be built.
#[derive(Debug)]
pub struct BuildError(rayon::ThreadPoolBuildError);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not build the thread pool: {}", self.0)
    }
}

/// The pool's error is in the message; the source is the first of its causes the message does
/// not already say, so a chain says each cause once.
impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        task_core::first_unsaid_cause(&self.to_string(), self.0.source())
    }
}

/// Configures a [`ThreadedExecutionStrategy`].
#[derive(Debug, Default)]
pub struct ThreadedBuilder {
    threads: Option<usize>,
    thread_name: Option<String>,
    max_in_flight: Option<usize>,
    pool: Option<Arc<ThreadPool>>,
}

impl ThreadedBuilder {
    /// How many threads the strategy's own pool has (default: the machine's cores; 0 is read as
    /// 1).
    #[must_use]
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// The prefix of the pool threads' names, followed by `-<index>` (default `threaded-exec`).
    #[must_use]
    pub fn thread_name(mut self, prefix: impl Into<String>) -> Self {
        self.thread_name = Some(prefix.into());
        self
    }

    /// Runs tasks on `pool` instead of a pool of the strategy's own; `threads` and `thread_name`
    /// are then ignored.
    #[must_use]
    pub fn pool(mut self, pool: Arc<ThreadPool>) -> Self {
        self.pool = Some(pool);
        self
    }

    /// At most `limit` top-level tasks (tasks without a parent node) run in the pool at once
    /// (default: no limit; 0 is read as 1); the others wait in order, holding no thread. A place is freed when
    /// its node has stopped, not when its caller stops waiting (a timeout or a cancellation), so
    /// the limit holds however requests end; a task cancelled while it waits never starts. Child
    /// tasks submitted from inside a running node are not counted: their parents already hold
    /// places, and making them wait for one could deadlock. To bound what waits, set a limit on
    /// the coordinator's mode (`CoordinatorBuilder::limit`), which makes submissions wait.
    #[must_use]
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = Some(limit.max(1));
        self
    }

    /// The strategy.
    ///
    /// # Errors
    ///
    /// When the operating system refuses to start the pool's threads.
    pub fn build(self) -> Result<ThreadedExecutionStrategy, BuildError> {
        let pool = match self.pool {
            Some(pool) => pool,
            None => {
                let prefix = self.thread_name.unwrap_or_else(|| "threaded-exec".into());
                let mut builder = ThreadPoolBuilder::new()
                    .thread_name(move |i| format!("{prefix}-{i}"))
                    .panic_handler(|payload| {
                        // Never reached by tasks (their panics are caught); guards against an
                        // abort if anything else panics on the pool.
                        let reason = TaskError::panic(payload);
                        tracing::error!(%reason, "panic on a threaded strategy's pool");
                    });
                if let Some(threads) = self.threads {
                    builder = builder.num_threads(threads.max(1));
                }
                Arc::new(builder.build().map_err(BuildError)?)
            }
        };
        Ok(ThreadedExecutionStrategy {
            inner: Arc::new(Inner {
                pool,
                tracker: Arc::default(),
                limit: self.max_in_flight.map(|max| Limit {
                    max,
                    state: Mutex::default(),
                }),
            }),
        })
    }
}

struct Inner {
    pool: Arc<ThreadPool>,
    tracker: Arc<Tracker>,
    limit: Option<Limit>,
}

/// Runs tasks on a rayon thread pool: the strategy for CPU-bound work.
///
/// A blocking node runs directly on a pool thread; an async node is driven to completion on a
/// pool thread with [`block_on`]. The outcome is delivered from the pool thread; no tokio worker
/// ever waits for it. Inside the pool the submitting tokio runtime is entered, so a node can use
/// tokio (timers, I/O, submitting children through a coordinator).
///
/// - A panic in a node becomes a failure outcome carrying the panic message; the pool thread
///   survives and rayon's abort-on-panic is never reached.
/// - [`ThreadedBuilder::max_in_flight`] bounds the top-level tasks running in the pool; beyond it
///   they wait in order.
/// - A node that submits a child and waits for it never deadlocks the pool: a node waiting in
///   [`block_on`] runs its own children that no other thread has started (and nothing else).
/// - Shutdown refuses new tasks ([`TaskError::is_shutdown`]), waits up to its grace period for the
///   ones in flight, and is idempotent. That wait is a tokio timer: with tasks in flight, await
///   shutdown on a tokio runtime with its time driver (`enable_time`), or it panics, as
///   `tokio::time::timeout` does; tasks themselves need no runtime.
///
/// # Examples
///
/// ```
/// use exec_strategies::ThreadedExecutionStrategy;
/// use task_core::{Task, TaskExecutionStrategy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let strategy = ThreadedExecutionStrategy::builder().threads(2).build()?;
/// let task = Task::blocking("1", "sum", || Ok::<_, task_core::BoxError>((1..=100_u64).sum::<u64>()));
/// let value = task_core::run(&strategy, task.into_erased()).await?;
/// assert_eq!(value.downcast_ref::<u64>(), Some(&5050));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ThreadedExecutionStrategy {
    inner: Arc<Inner>,
}

impl ThreadedExecutionStrategy {
    /// A strategy with a pool of its own, one thread per core, and no in-flight limit.
    ///
    /// # Errors
    ///
    /// When the operating system refuses to start the pool's threads.
    pub fn new() -> Result<Self, BuildError> {
        Self::builder().build()
    }

    /// A builder for a configured strategy.
    pub fn builder() -> ThreadedBuilder {
        ThreadedBuilder::default()
    }

    /// How many threads the pool has.
    pub fn threads(&self) -> usize {
        self.inner.pool.current_num_threads()
    }
}

impl fmt::Debug for ThreadedExecutionStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadedExecutionStrategy")
            .field("threads", &self.threads())
            .field("stats", &self.inner.tracker.stats())
            .finish()
    }
}

fn run_on_pool_thread(body: TaskBody) -> Outcome {
    let run = catch_unwind(AssertUnwindSafe(|| match body {
        TaskBody::Blocking(body) => body.run(),
        TaskBody::Async(body) => block_on(body.into_future()),
        _ => Err(TaskError::unsupported(
            "the threaded strategy cannot run this kind of task",
        )),
    }));
    run.unwrap_or_else(|payload| Err(TaskError::panic(payload)))
}

/// One task on its way to a pool thread, with what running it there needs.
struct PoolJob {
    /// Only the node id and the body go to the pool thread, not the task's whole description:
    /// a job small enough is freed on the pool thread without taking the allocator's lock that
    /// the submitting thread takes to allocate the next one.
    node_id: NodeId,
    body: TaskBody,
    completion: Completion,
    admission: OwnedAdmission,
    runtime: Option<tokio::runtime::Handle>,
    /// The strategy running it, by its address: the frame it runs in names it.
    strategy: usize,
}

impl PoolJob {
    /// Runs the node on this pool thread and delivers its outcome from here; a job cancelled
    /// while it waited never starts.
    fn run(self) {
        let PoolJob {
            node_id,
            body,
            completion,
            admission,
            runtime,
            strategy,
        } = self;
        if completion.is_cancelled() {
            // It already has its outcome.
            return;
        }
        let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
        let _frame = FrameScope::enter(Frame {
            strategy,
            node: node_id.clone(),
            children: RefCell::default(),
        });
        let _node = task_core::context::enter_node(node_id);
        let outcome = completion.in_scope(|| run_on_pool_thread(body));
        // Counted out before the caller hears: what it reads of the stats then is current.
        admission.record(&outcome);
        completion.complete(outcome);
    }
}

/// The [`ThreadedBuilder::max_in_flight`] limit: at most `max` top-level jobs in the pool, the
/// rest waiting here in order. A place is held by the job on its pool thread (not by the caller),
/// so it is freed only when the node has really stopped.
struct Limit {
    max: usize,
    state: Mutex<LimitState>,
}

#[derive(Default)]
struct LimitState {
    running: usize,
    waiting: VecDeque<PoolJob>,
    /// The queue's length after the last sweep of cancelled jobs: the next sweep comes when it
    /// has doubled, so sweeping costs O(1) per job however many wait.
    swept: usize,
}

impl Limit {
    fn lock(&self) -> MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LimitState {
    /// Queues `job`, first taking out the jobs cancelled while they waited when the queue has
    /// doubled since the last sweep. Returns those jobs, to be dropped outside the lock (their
    /// bodies are the user's).
    fn push(&mut self, job: PoolJob) -> Vec<PoolJob> {
        let mut cancelled = Vec::new();
        if self.waiting.len() >= (2 * self.swept).max(16) {
            let mut kept = VecDeque::with_capacity(self.waiting.len());
            for waiting in self.waiting.drain(..) {
                if waiting.completion.is_cancelled() {
                    cancelled.push(waiting);
                } else {
                    kept.push_back(waiting);
                }
            }
            self.waiting = kept;
            self.swept = self.waiting.len();
        }
        self.waiting.push_back(job);
        cancelled
    }

    /// The next job to run, passing by (and handing back) those cancelled while they waited.
    fn next(&mut self, cancelled: &mut Vec<PoolJob>) -> Option<PoolJob> {
        while let Some(job) = self.waiting.pop_front() {
            if job.completion.is_cancelled() {
                cancelled.push(job);
            } else {
                return Some(job);
            }
        }
        None
    }
}

/// A job's place under the limit; dropping it hands the place to the next job waiting.
struct Place {
    inner: Arc<Inner>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(limit) = &self.inner.limit else {
            return;
        };
        let mut cancelled = Vec::new();
        let next = {
            let mut state = limit.lock();
            let next = state.next(&mut cancelled);
            if next.is_none() {
                state.running -= 1;
            }
            next
        };
        // Never started: each is counted out here, outside the lock.
        drop(cancelled);
        if let Some(next) = next {
            // The place passes to it.
            self.inner.spawn(next, true);
        }
    }
}

impl Inner {
    /// Hands `job` to the pool; `placed` when it holds a place under the limit.
    fn spawn(self: &Arc<Self>, job: PoolJob, placed: bool) {
        let place = placed.then(|| Place {
            inner: Arc::clone(self),
        });
        // Dropped unrun (the pool went away), the completion delivers a failure.
        self.pool.spawn(move || {
            job.run();
            drop(place);
        });
    }

    /// Hands a child job to the pool and to its parent, when the parent is the node this
    /// strategy runs on the calling thread: it runs wherever it is taken first. `None` when it
    /// went to the pool alone.
    fn spawn_child(self: &Arc<Self>, job: PoolJob, parent: &NodeId) -> Option<PoolJob> {
        let frame = FRAME.with(|frame| frame.borrow().clone());
        let ours = |f: &Rc<Frame>| f.strategy == job.strategy && f.node == *parent;
        let Some(frame) = frame.filter(ours) else {
            return Some(job);
        };
        let claim = Arc::new(Claim(Mutex::new(Some(job))));
        let mut children = frame.children.borrow_mut();
        // Those the pool has run (its copy is gone) go first: the queue holds only children
        // that may still be waiting.
        while children.front().is_some_and(|c| Arc::strong_count(c) == 1) {
            children.pop_front();
        }
        children.push_back(Arc::clone(&claim));
        drop(children);
        self.pool.spawn(move || {
            if let Some(job) = claim.take() {
                job.run();
            }
        });
        None
    }
}

impl TaskExecutionStrategy for ThreadedExecutionStrategy {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        let inner = &self.inner;
        let Some(admission) = inner.tracker.admit_owned() else {
            return completion.complete(Err(TaskError::shutdown("threaded")));
        };
        // Children do not take a place: their parents hold one, and making them wait for it
        // could deadlock.
        let (info, body) = task.into_parts();
        let job = PoolJob {
            node_id: info.node_id().clone(),
            body,
            completion,
            admission,
            runtime: tokio::runtime::Handle::try_current().ok(),
            strategy: Arc::as_ptr(inner) as usize,
        };
        let job = match info.parent_id() {
            Some(parent) => match inner.spawn_child(job, parent) {
                Some(job) => job,
                None => return,
            },
            None => job,
        };
        let limited = inner.limit.is_some() && info.parent_id().is_none();
        drop(info);
        let Some(limit) = inner.limit.as_ref().filter(|_| limited) else {
            return inner.spawn(job, false);
        };
        let cancelled = {
            let mut state = limit.lock();
            if state.running >= limit.max {
                state.push(job)
            } else {
                state.running += 1;
                drop(state);
                return inner.spawn(job, true);
            }
        };
        // Cancelled while they waited: counted out here, outside the lock.
        drop(cancelled);
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.inner.tracker.close();
        Box::pin(async move {
            if !self.inner.tracker.drain(grace).await {
                tracing::warn!(
                    in_flight = self.inner.tracker.in_flight(),
                    "threaded strategy: grace period over with tasks still running"
                );
            }
        })
    }

    fn name(&self) -> &str {
        "threaded"
    }

    fn stats(&self) -> StrategyStats {
        self.inner.tracker.stats()
    }
}
