//! [`ThreadedExecutionStrategy`]: tasks run on a rayon thread pool.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rayon::{ThreadPool, ThreadPoolBuilder, Yield};
use task_core::{
    BoxFuture, Completion, ErasedTask, NodeId, Outcome, StrategyStats, TaskBody, TaskError,
    TaskExecutionStrategy,
};
use tokio::sync::{Semaphore, oneshot};

use crate::signal::Signal;
use crate::tracker::Tracker;

thread_local! {
    /// Set while a threaded strategy runs a task on this thread: the pool's signal.
    static POOL_SIGNAL: RefCell<Option<Arc<Signal>>> = const { RefCell::new(None) };
}

/// Runs `future` to completion on the current thread and returns its output.
///
/// On a thread of a [`ThreadedExecutionStrategy`]'s pool, while the future waits it runs other
/// work queued on the pool (such as the child task it waits for), so a node that submits a child
/// and waits for it cannot deadlock the pool, however deep or wide the nesting and however small
/// the pool. Elsewhere it simply parks the thread between wake-ups.
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
    match POOL_SIGNAL.with(|s| s.borrow().clone()) {
        Some(signal) => helping_block_on(future, &signal),
        None => futures::executor::block_on(future),
    }
}

fn helping_block_on<F: Future>(future: F, signal: &Arc<Signal>) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::clone(signal));
    let mut cx = Context::from_waker(&waker);
    loop {
        let seen = signal.epoch();
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        // Pending: help the pool until something happens (our waker fired or work arrived).
        loop {
            if signal.epoch() != seen {
                break;
            }
            match rayon::yield_now() {
                Some(Yield::Executed) => continue,
                _ => {
                    signal.sleep_unless_moved(seen);
                    break;
                }
            }
        }
    }
}

/// Marks this thread as running a task of the pool with `signal`, restoring the previous marking
/// (for tasks run nested inside a waiting task) when dropped.
struct PoolScope {
    previous: Option<Arc<Signal>>,
}

impl PoolScope {
    fn enter(signal: &Arc<Signal>) -> Self {
        let previous = POOL_SIGNAL.with(|s| s.replace(Some(Arc::clone(signal))));
        Self { previous }
    }
}

impl Drop for PoolScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        POOL_SIGNAL.with(|s| *s.borrow_mut() = previous);
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

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
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
    /// How many threads the strategy's own pool has (default: the machine's cores).
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

    /// At most `limit` top-level tasks (tasks without a parent node) run or wait in the pool at
    /// once; `execute` waits for room beyond it (default: no limit). Child tasks submitted from
    /// inside a running node are not counted: their parents already hold places, and making them
    /// wait for one could deadlock.
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
                limit: self.max_in_flight.map(|n| Arc::new(Semaphore::new(n))),
                signal: Arc::new(Signal::default()),
            }),
        })
    }
}

struct Inner {
    pool: Arc<ThreadPool>,
    tracker: Arc<Tracker>,
    limit: Option<Arc<Semaphore>>,
    signal: Arc<Signal>,
}

/// Runs tasks on a rayon thread pool: the strategy for CPU-bound work.
///
/// A blocking node runs directly on a pool thread; an async node is driven to completion on a
/// pool thread with [`block_on`]. The caller's future never blocks a tokio worker: it waits for
/// the result on a channel. Inside the pool the submitting tokio runtime is entered, so a node can
/// use tokio (timers, I/O, submitting children through a coordinator).
///
/// - A panic in a node becomes a failure outcome carrying the panic message; the pool thread
///   survives and rayon's abort-on-panic is never reached.
/// - [`ThreadedBuilder::max_in_flight`] bounds the top-level tasks in the pool; beyond it
///   `execute` waits (backpressure) instead of growing an unbounded queue.
/// - A node that submits a child and waits for it never deadlocks the pool: a waiting pool thread
///   runs queued work, including the child.
/// - Shutdown refuses new tasks ([`TaskError::is_shutdown`]), waits up to its grace period for the
///   ones in flight, and is idempotent.
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
/// let value = strategy.execute(task.into_erased()).await?;
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

/// What of a task goes to a pool thread: its node id and its body. Not its whole description: a
/// job small enough is freed on the pool thread without taking the allocator's lock that the
/// submitting thread takes to allocate the next one.
fn node_and_body(task: ErasedTask) -> (NodeId, TaskBody) {
    let (info, body) = task.into_parts();
    (info.node_id().clone(), body)
}

impl TaskExecutionStrategy for ThreadedExecutionStrategy {
    fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            let inner = &*self.inner;
            let Some(_admission) = inner.tracker.admit() else {
                return Err(TaskError::shutdown("threaded"));
            };
            let _place = match &inner.limit {
                Some(limit) if task.info().parent_id().is_none() => {
                    // The semaphore is never closed, so acquiring cannot fail.
                    Some(Arc::clone(limit).acquire_owned().await.map_err(|_| {
                        TaskError::strategy("the threaded strategy's limit was closed")
                    })?)
                }
                _ => None,
            };
            let (node_id, body) = node_and_body(task);
            let runtime = tokio::runtime::Handle::try_current().ok();
            let signal = Arc::clone(&inner.signal);
            let (sender, receiver) = oneshot::channel();
            inner.pool.spawn(move || {
                let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
                let _pool = PoolScope::enter(&signal);
                let _node = task_core::context::enter_node(node_id);
                let _ = sender.send(run_on_pool_thread(body));
            });
            // Threads waiting in `block_on` may run the new work.
            inner.signal.bump();
            let outcome = receiver.await.unwrap_or_else(|_| {
                Err(TaskError::strategy(
                    "the thread pool dropped the task without running it",
                ))
            });
            inner.tracker.record(&outcome);
            outcome
        })
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

    /// Tasks that take no place under the pool's limit (any, without a limit): each runs on a
    /// pool thread and answers from there. A task that may have to wait for a place runs through
    /// `execute`.
    fn can_launch(&self, task: &ErasedTask) -> bool {
        self.inner.limit.is_none() || task.info().parent_id().is_some()
    }

    fn launch(&self, task: ErasedTask, completion: Completion) {
        let inner = &*self.inner;
        let Some(admission) = inner.tracker.admit_owned() else {
            return completion.complete(Err(TaskError::shutdown("threaded")));
        };
        let (node_id, body) = node_and_body(task);
        let runtime = tokio::runtime::Handle::try_current().ok();
        let signal = Arc::clone(&inner.signal);
        // Dropped unrun (the pool went away), the completion delivers a failure.
        inner.pool.spawn(move || {
            if completion.is_cancelled() {
                // Cancelled while queued: it already has its outcome; the node never starts.
                return;
            }
            let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
            let _pool = PoolScope::enter(&signal);
            let _node = task_core::context::enter_node(node_id);
            let outcome = completion.in_scope(|| run_on_pool_thread(body));
            admission.tracker().record(&outcome);
            completion.complete(outcome);
        });
        // Threads waiting in `block_on` may run the new work.
        inner.signal.bump();
    }

    fn stats(&self) -> StrategyStats {
        self.inner.tracker.stats()
    }
}
