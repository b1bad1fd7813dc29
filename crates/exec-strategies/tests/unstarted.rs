//! A task whose request was cancelled before it started: its body never runs, goes before its
//! completion does (so nothing of the node outlives the request's end: the coordinator may start
//! the next attempt or hand the place on once the run is over), and a panic in its `Drop` reaches
//! no pool thread; nor does one in the `Drop` of an output let go as it is delivered.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll};
use std::time::Duration;

use exec_strategies::{AsyncExecutionStrategy, ThreadedExecutionStrategy};
use task_core::{BoxError, Completion, CompletionSink, Outcome, Task, TaskExecutionStrategy};

/// A run told to stop while its request goes on (an attempt past its timeout): records whether
/// the body was gone when the completion was delivered or said the run was over.
struct Stopped {
    body_gone: Arc<AtomicBool>,
    seen: Mutex<Vec<(&'static str, bool)>>,
    over: mpsc::SyncSender<()>,
}

impl Stopped {
    fn saw(&self, what: &'static str) {
        let gone = self.body_gone.load(Ordering::SeqCst);
        self.seen.lock().unwrap().push((what, gone));
    }
}

impl task_core::context::EventSink for Stopped {
    fn broadcast(&self, _: Arc<str>) {}
}

impl CompletionSink for Stopped {
    fn complete(&self, _: Outcome) {
        self.saw("complete");
    }
    fn poll_cancelled(&self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
    fn is_cancelled(&self) -> bool {
        true
    }
    fn has_outcome(&self) -> bool {
        false
    }
    fn run_over(&self) {
        self.saw("run_over");
        let _ = self.over.try_send(());
    }
    fn run_in_scope(&self, f: &mut dyn FnMut()) {
        f();
    }
    fn spawn(&self, future: task_core::BoxFuture<'static, ()>) {
        futures::executor::block_on(future);
    }
}

/// Sets its flag when dropped, a moment late, so that a completion let go first shows.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        std::thread::sleep(Duration::from_millis(20));
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the completion saw of a blocking task handed to `strategy` already cancelled (or refused,
/// after shutdown).
fn seen_of_a_cancelled_task(strategy: &dyn TaskExecutionStrategy) -> Vec<(&'static str, bool)> {
    let body_gone = Arc::new(AtomicBool::new(false));
    let (over, run_over) = mpsc::sync_channel(1);
    let seen = Mutex::default();
    let sink = Arc::new(Stopped {
        body_gone: Arc::clone(&body_gone),
        seen,
        over,
    });
    let held = SetOnDrop(body_gone);
    let task = Task::blocking("1", "never-starts", move || {
        let _held = &held;
        Ok::<_, BoxError>(())
    });
    strategy.execute(task.into_erased(), Completion::new(Arc::clone(&sink) as _));
    run_over.recv_timeout(Duration::from_secs(10)).unwrap();
    // Whatever else the completion delivers as it goes comes right after.
    std::thread::sleep(Duration::from_millis(50));
    let seen = sink.seen.lock().unwrap().clone();
    assert!(seen.contains(&("run_over", true)), "{seen:?}");
    seen
}

#[test]
fn the_async_strategy_lets_go_of_an_unstarted_body_before_its_completion() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _entered = rt.enter();
    let seen = seen_of_a_cancelled_task(&AsyncExecutionStrategy::new());
    assert!(seen.iter().all(|&(_, gone)| gone), "{seen:?}");
}

#[test]
fn the_threaded_strategy_lets_go_of_an_unstarted_body_before_its_completion() {
    let strategy = ThreadedExecutionStrategy::builder().threads(1).build();
    let seen = seen_of_a_cancelled_task(&strategy.unwrap());
    assert!(seen.iter().all(|&(_, gone)| gone), "{seen:?}");
}

#[derive(Debug)]
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        panic!("the node's state panics when dropped");
    }
}

/// A pool the application gives has rayon's default panic handling, which aborts the process:
/// a cancelled task's body that panics as it is dropped there is caught and logged.
#[test]
fn an_unstarted_body_that_panics_when_dropped_leaves_the_applications_pool_running() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    let strategy = ThreadedExecutionStrategy::builder().pool(Arc::new(pool.unwrap()));
    let strategy = strategy.build().unwrap();
    let (release, wait) = mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let holds = Task::blocking("1", "holds the thread", move || {
        let _ = wait.lock().unwrap().recv_timeout(Duration::from_secs(10));
        Ok::<_, BoxError>(1)
    });
    let holding = task_core::run(&strategy, holds.into_erased());
    let state = PanicsWhenDropped;
    let queued = Task::blocking("2", "queued", move || {
        let _state = &state;
        Ok::<_, BoxError>(2)
    });
    // Cancelled while it waits in the pool's queue.
    drop(task_core::run(&strategy, queued.into_erased()));
    release.send(()).unwrap();
    assert_eq!(
        futures::executor::block_on(holding).unwrap().downcast_ref(),
        Some(&1)
    );
    let after = Task::blocking("3", "after", || Ok::<_, BoxError>(3));
    let after = futures::executor::block_on(task_core::run(&strategy, after.into_erased()));
    assert_eq!(
        after.unwrap().downcast_ref(),
        Some(&3),
        "the pool still runs"
    );
}

/// A request that ended before its run delivered (it timed out, or nobody holds its handle):
/// the outcome is let go as it is delivered.
struct LetsGo(mpsc::SyncSender<()>);

impl task_core::context::EventSink for LetsGo {
    fn broadcast(&self, _: Arc<str>) {}
}

impl CompletionSink for LetsGo {
    fn complete(&self, outcome: Outcome) {
        drop(outcome);
    }
    fn poll_cancelled(&self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
    fn is_cancelled(&self) -> bool {
        false
    }
    fn run_over(&self) {
        let _ = self.0.try_send(());
    }
    fn run_in_scope(&self, f: &mut dyn FnMut()) {
        f();
    }
    fn spawn(&self, future: task_core::BoxFuture<'static, ()>) {
        futures::executor::block_on(future);
    }
}

/// The same for an output let go as it is delivered: a panic in its `Drop` on the application's
/// pool is caught and logged.
#[test]
fn an_output_that_panics_when_let_go_leaves_the_applications_pool_running() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    let strategy = ThreadedExecutionStrategy::builder().pool(Arc::new(pool.unwrap()));
    let strategy = strategy.build().unwrap();
    let task = Task::blocking("1", "late", || Ok::<_, BoxError>(PanicsWhenDropped));
    let (over, run_over) = mpsc::sync_channel(1);
    strategy.execute(task.into_erased(), Completion::new(Arc::new(LetsGo(over))));
    run_over.recv_timeout(Duration::from_secs(10)).unwrap();
    let after = Task::blocking("2", "after", || Ok::<_, BoxError>(2));
    let after = futures::executor::block_on(task_core::run(&strategy, after.into_erased()));
    assert_eq!(
        after.unwrap().downcast_ref(),
        Some(&2),
        "the pool still runs"
    );
}

#[test]
fn a_task_refused_after_shutdown_lets_go_of_its_body_before_its_completion() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _entered = rt.enter();
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(1)
        .build()
        .unwrap();
    let asynchronous = AsyncExecutionStrategy::new();
    for strategy in [&threaded as &dyn TaskExecutionStrategy, &asynchronous] {
        rt.block_on(strategy.shutdown(Duration::ZERO));
        let seen = seen_of_a_cancelled_task(strategy);
        assert!(seen.contains(&("complete", true)), "{seen:?}");
        assert!(seen.iter().all(|&(_, gone)| gone), "{seen:?}");
    }
}
