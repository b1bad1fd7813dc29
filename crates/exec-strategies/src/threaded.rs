//! [`ThreadedExecutionStrategy`]: tasks run on a rayon thread pool.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

mod limit;
mod spare;

use self::limit::Limit;
use self::spare::PoolState;
use crate::tracker::{Admitted, Tracker};
use rayon::{ThreadPool, ThreadPoolBuilder, Yield};
use task_core::{
    BoxFuture, Completion, ErasedTask, NodeId, Outcome, StrategyStats, TaskBody, TaskError,
    TaskExecutionStrategy,
};
use tokio::runtime::RuntimeFlavor;

thread_local! {
    /// Set while a threaded strategy runs a task on this thread: the pool's shared state.
    static POOL: RefCell<Option<Arc<PoolState>>> = const { RefCell::new(None) };
    /// How many [`block_on`]s wait, one on top of another, on this thread.
    static WAITING: Cell<usize> = const { Cell::new(0) };
}

/// How many [`block_on`]s may wait on top of one another on a thread while it still runs the
/// strategies' tasks; past this it hands those it takes on to a spare thread, so waiting nodes
/// cannot pile up on its stack until it overflows.
const HELP_UP_TO: usize = 32;

/// Runs `future` to completion on the current thread and returns its output.
///
/// On a thread of a [`ThreadedExecutionStrategy`]'s pool, while the future waits it runs other
/// work queued on the pool (such as the child task it waits for), so a node that submits a child
/// and waits for it cannot deadlock the pool, however deep or wide the nesting and however small
/// the pool, whichever strategy sharing the pool runs the child (work handed to the pool directly
/// is found within 10 ms), within the depth said below. Elsewhere it parks the thread between
/// wake-ups.
///
/// An async node should await instead. Called there anyway, on a multi-thread tokio runtime
/// it hands the runtime's other tasks to another thread while it waits
/// ([`tokio::task::block_in_place`], which panics inside a `LocalSet`), so nothing else stops.
/// On a current-thread runtime it parks the runtime's only thread: what it waits for must not
/// need that runtime (a child in the threaded mode runs; one in the async mode never would).
///
/// The work it runs meanwhile runs on top of the waiting node, as in rayon's own joins: a task
/// that would wait (on a channel, a lock, or `block_on`) for the node beneath it deadlocks both.
/// Tasks of one pool may wait for their children, not for each other. A thread runs the threaded
/// strategies' tasks on top of its waiting nodes while at most 32 `block_on`s wait on top of one
/// another on it, so that its stack does not grow without bound; past that it hands each task it
/// takes (its nodes' children first) to a spare thread, which runs them, lingers a
/// moment for more and ends: one at a time is started, and another only while every spare
/// waits. It still runs other rayon work there (its own `rayon::join` halves), and takes work
/// from elsewhere on the pool only while every thread of the pool waits as deep. A spare has
/// the default stack of a Rust thread (`RUST_MIN_STACK`), whatever the pool's, and the rayon
/// calls of a node on it (`join`, `par_iter`) run on rayon's global pool.
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
    match POOL.with(|s| s.borrow().clone()) {
        Some(state) => helping_block_on(future, &state),
        None => match tokio::runtime::Handle::try_current().map(|rt| rt.runtime_flavor()) {
            Ok(RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| futures::executor::block_on(future))
            }
            _ => futures::executor::block_on(future),
        },
    }
}

/// The longest a pool thread waiting in [`block_on`] sleeps before it looks for queued work
/// again: what the pool was given without a signal (a plain `ThreadPool::spawn`) waits at most
/// this long for it.
const BACKSTOP: Duration = Duration::from_millis(10);

/// The state of a pool that strategies share ([`ThreadedBuilder::pool`]): one per pool, so that
/// work any of them hands it wakes the threads of every one of them waiting in [`block_on`], and
/// any of them may run it.
fn shared_state(pool: &Arc<ThreadPool>) -> Arc<PoolState> {
    static STATES: Mutex<Vec<(Weak<ThreadPool>, Arc<PoolState>)>> = Mutex::new(Vec::new());
    let mut states = STATES.lock().unwrap_or_else(|p| p.into_inner());
    states.retain(|(pool, _)| pool.strong_count() > 0);
    let known = states
        .iter()
        .find(|(known, _)| known.as_ptr() == Arc::as_ptr(pool));
    if let Some((_, state)) = known {
        return Arc::clone(state);
    }
    let state = Arc::new(PoolState::new(pool.current_num_threads()));
    states.push((Arc::downgrade(pool), Arc::clone(&state)));
    state
}

fn helping_block_on<F: Future>(future: F, state: &Arc<PoolState>) -> F::Output {
    let waiting = Waiting::enter();
    let deep = waiting.0 > HELP_UP_TO;
    // A pool thread counts once, at the first wait too deep.
    let in_pool = rayon::current_thread_index().is_some();
    let _deep = (waiting.0 == HELP_UP_TO + 1 && in_pool).then(|| state.deep());
    let signal = &state.signal;
    let mut future = pin!(future);
    let waker = Waker::from(Arc::clone(signal));
    let mut cx = Context::from_waker(&waker);
    let mut helped_elsewhere = false;
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
            if help(state, deep, &mut helped_elsewhere) {
                continue;
            }
            // Nothing this thread may run: the tasks handed on go to a spare thread if none is
            // free to take them (this one, if a spare, counted out first: asleep, it is not).
            let _asleep = state.asleep();
            state.start_spare_if_needed();
            signal.sleep_unless_moved(seen, BACKSTOP);
            break;
        }
    }
}

/// Runs one piece of queued work on this waiting thread; whether it found one. Work on a pool
/// thread's own queue is the waiting node's (the halves of its own `rayon::join`, its children)
/// until the thread has run work from elsewhere, which may leave more there (work a helped node
/// handed to `rayon::spawn`). The node's runs in its scope; any other in none (a task of the
/// pool enters its own node's scope). A task taken `deep` is handed on, not run
/// ([`Queued::run_or_hand_on`]): there the thread takes work from elsewhere on the pool only
/// while every thread of it waits as deep (another would run that work); above that depth it
/// runs the tasks handed on too.
fn help(state: &Arc<PoolState>, deep: bool, helped_elsewhere: &mut bool) -> bool {
    let took = match *helped_elsewhere {
        false => rayon::yield_local(),
        true => task_core::context::outside_node(rayon::yield_local),
    };
    if took == Some(Yield::Executed) {
        return true;
    }
    let elsewhere = !deep || state.all_deep();
    let took = (elsewhere
        && task_core::context::outside_node(rayon::yield_now) == Some(Yield::Executed))
        || (!deep && task_core::context::outside_node(|| state.run_oldest()));
    *helped_elsewhere |= took;
    took
}

/// One more [`block_on`] waiting on this thread (its depth), until dropped.
struct Waiting(usize);

impl Waiting {
    fn enter() -> Self {
        Self(WAITING.with(|waiting| {
            waiting.set(waiting.get() + 1);
            waiting.get()
        }))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAITING.with(|waiting| waiting.set(waiting.get() - 1));
    }
}

/// Marks this thread as running a task of the pool with `state`, restoring the previous marking
/// (for tasks run nested inside a waiting task) when dropped.
struct PoolScope {
    previous: Option<Arc<PoolState>>,
}

impl PoolScope {
    fn enter(state: &Arc<PoolState>) -> Self {
        let previous = POOL.with(|s| s.replace(Some(Arc::clone(state))));
        Self { previous }
    }
}

impl Drop for PoolScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        POOL.with(|s| *s.borrow_mut() = previous);
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

    /// At most `limit` tasks run in the pool at once (default: no limit; 0 is read as 1); the
    /// others wait in order, holding no thread. A place is freed when its node has stopped, not
    /// when its caller stops waiting (a timeout or a cancellation), so the limit holds however
    /// requests end. A task whose request is cancelled (or times out) while it waits never
    /// starts, and is let go at once: its run is over then, so a coordinator's limit on the
    /// mode frees the request's place then, not when a place here frees.
    ///
    /// A task submitted beneath a node running in the pool takes no place: that node's child, or
    /// a task further down through requests of other modes or other coordinators (a threaded
    /// node waiting for an async child, which waits for a threaded one), as far as the open
    /// requests above it tell ([`Completion::any_open_ancestor`]). That node may be waiting for
    /// it while holding the place it would wait for. Any other task takes a place, the tools an
    /// async agent fans out to the pool included. To bound what waits, set a limit on the
    /// coordinator's mode (`CoordinatorBuilder::limit`), which makes submissions wait.
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
        let (pool, state) = match self.pool {
            Some(pool) => {
                let state = shared_state(&pool);
                (pool, state)
            }
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
                let pool = builder.build().map_err(BuildError)?;
                let state = PoolState::new(pool.current_num_threads());
                (Arc::new(pool), Arc::new(state))
            }
        };
        Ok(ThreadedExecutionStrategy {
            inner: Arc::new(Inner {
                pool,
                tracker: Arc::default(),
                limit: self.max_in_flight.map(Limit::new),
                state,
            }),
        })
    }
}

struct Inner {
    pool: Arc<ThreadPool>,
    tracker: Arc<Tracker>,
    limit: Option<Arc<Limit>>,
    state: Arc<PoolState>,
}

/// Runs tasks on a rayon thread pool: the strategy for CPU-bound work.
///
/// A blocking node runs directly on a pool thread; an async node is driven to completion on a
/// pool thread with [`block_on`] (or, handed on by a pool thread waiting too deep to run it, on
/// a spare thread: see [`block_on`]). The outcome is delivered from that thread; no tokio worker
/// ever waits for it. Inside the pool the submitting tokio runtime is entered, so a node can use
/// tokio (timers, I/O, submitting children through a coordinator).
///
/// - A panic in a node becomes a failure outcome carrying the panic message; the pool thread
///   survives and rayon's abort-on-panic is never reached.
/// - [`ThreadedBuilder::max_in_flight`] bounds the tasks running in the pool, but for those
///   beneath a node already in it; beyond it they wait in order.
/// - A node that submits a child and waits for it never deadlocks the pool: a waiting pool thread
///   runs queued work, including the child, and when every thread waits too deep to take more, a
///   spare thread takes the queued tasks. So tasks of one pool must not otherwise wait for each
///   other (see [`block_on`]).
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

/// Runs `body` on this pool thread. An async node is dropped as soon as its request is
/// cancelled, as on the async strategy (the request has its outcome then); a blocking one cannot
/// be interrupted.
fn run_on_pool_thread(body: TaskBody, completion: &Completion) -> Outcome {
    let run = catch_unwind(AssertUnwindSafe(|| match body {
        TaskBody::Blocking(body) => body.run(),
        TaskBody::Async(body) => {
            let mut node = pin!(body.into_future());
            block_on(std::future::poll_fn(|cx| {
                if completion.poll_cancelled(cx).is_ready() {
                    return Poll::Ready(Err(TaskError::cancelled("the request was cancelled")));
                }
                node.as_mut().poll(cx)
            }))
        }
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
    /// the submitting thread takes to allocate the next one. Fields drop in order: a job dropped
    /// unrun lets go of its body before it is counted out and its completion goes.
    node_id: NodeId,
    body: TaskBody,
    admitted: Admitted,
    runtime: Option<tokio::runtime::Handle>,
}

impl PoolJob {
    /// Runs the node on this pool thread and delivers its outcome from here; a job cancelled
    /// while it waited never starts.
    fn run(self, state: &Arc<PoolState>) {
        let PoolJob {
            node_id,
            body,
            admitted,
            runtime,
        } = self;
        let completion = &admitted.completion;
        if completion.is_cancelled() {
            // It already has its outcome. Its node goes first, then the admission counts it
            // stopped.
            return crate::drop_unstarted(body);
        }
        let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
        let _pool = PoolScope::enter(state);
        let outcome = completion.in_scope(|| {
            let _node = task_core::context::enter_node(node_id);
            run_on_pool_thread(body, completion)
        });
        // Delivering may drop the output here (its request ended early, or nobody holds its
        // handle): a panic in its `Drop`, the user's, is logged, not left to rayon, which aborts
        // the process on a panic in a pool of the application's without a handler.
        if let Some(reason) = task_core::catch_panic(move || admitted.end(outcome)) {
            tracing::error!(%reason, "delivering a threaded task's outcome panicked");
        }
    }
}

/// A task handed to a pool, with its place under its strategy's limit, if it has one.
///
/// Kept small (the place boxed: only a strategy with a limit has places): rayon allocates the job
/// that carries it (this, the pool's state and rayon's registry) on the submitting thread and
/// frees it on a pool thread, which allocates none, so its per-thread cache of freed blocks is
/// soon full. Past that, 64-bit glibc (default settings) frees a block of up to 120 bytes from
/// another thread without a lock (a fast bin); a larger one takes the lock of the submitting
/// thread's arena, which that thread's next allocation then waits on.
struct Queued {
    job: PoolJob,
    place: Option<Box<limit::InPool>>,
}

impl Queued {
    /// Runs the task here, unless this thread waits too deep in [`block_on`] to take more on its
    /// stack: then a spare thread runs it.
    fn run_or_hand_on(self, state: &Arc<PoolState>) {
        if WAITING.with(Cell::get) > HELP_UP_TO {
            state.hand_on(self);
        } else {
            self.run(state);
        }
    }

    fn run(self, state: &Arc<PoolState>) {
        self.job.run(state);
        drop(self.place);
    }
}

impl Inner {
    /// Hands `job` to the pool; `placed` when it holds a place under the limit.
    fn spawn(self: &Arc<Self>, job: PoolJob, placed: bool) {
        let place = self
            .limit
            .as_ref()
            .map(|limit| Box::new(limit.enter(self, &job.node_id, placed)));
        let state = Arc::clone(&self.state);
        // Dropped unrun (the pool went away), the completion delivers a failure.
        self.pool
            .spawn(move || Queued { job, place }.run_or_hand_on(&state));
        // Threads waiting in `block_on` may run the new work.
        self.state.signal.bump();
    }
}

impl TaskExecutionStrategy for ThreadedExecutionStrategy {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        let inner = &self.inner;
        let Some(admission) = inner.tracker.admit_owned() else {
            // Refused: the node goes before its completion, as every unstarted one.
            crate::drop_unstarted(task);
            return completion.complete(Err(TaskError::shutdown("threaded")));
        };
        // A task submitted beneath a node in the pool (its child, or further down through
        // requests of other modes) takes no place: that node may be waiting for it, and may hold
        // the place it would wait for.
        let limited = inner.limit.as_ref().is_some_and(|limit| {
            let in_pool = |node: &NodeId| limit.holds(node);
            let parent_in_pool = task.info().parent_id().is_some_and(&in_pool);
            !(parent_in_pool || completion.any_open_ancestor(&in_pool))
        });
        let (info, body) = task.into_parts();
        let job = PoolJob {
            node_id: info.node_id().clone(),
            body,
            admitted: Admitted {
                admission,
                completion,
            },
            runtime: tokio::runtime::Handle::try_current().ok(),
        };
        drop(info);
        let Some(limit) = inner.limit.as_ref().filter(|_| limited) else {
            return inner.spawn(job, false);
        };
        if let Some(job) = limit.place_or_queue(job) {
            inner.spawn(job, true);
        }
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

/// The size the allocator's behaviour above is about: 64-bit glibc's.
#[cfg(all(test, target_env = "gnu", target_pointer_width = "64"))]
mod tests {
    use super::*;

    #[test]
    fn the_job_a_pool_frees_stays_a_fast_bin_allocation() {
        // The job rayon allocates holds a `Queued`, an `Arc` of the pool's state and one of its
        // registry: 120 bytes at most.
        let job = size_of::<Queued>() + 2 * size_of::<Arc<PoolState>>();
        assert!(job <= 120, "the pool's job takes {job} bytes");
    }
}
