//! A strategy that runs blocking tasks on a thread pool of its own and delivers their outcomes
//! from the pool's threads, written as `docs/custom-strategy.md` shows from outside the
//! workspace's strategies: the code of that page's thread-pool and registering sections,
//! compiled and run. `cargo xtask docs --check` fails when the page's snippets are not found here
//! line for line.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, RequestCompletionPublisher, RequestHandle, SubmitOptions, Task,
    TaskError,
};
use exec_inline::InlineStrategy;
use task_core::{BoxFuture, Completion, ErasedTask, TaskBody, TaskExecutionStrategy};

/// Runs blocking tasks on a rayon pool; refuses every other kind of task.
struct PoolStrategy {
    pool: Arc<rayon::ThreadPool>,
}

impl TaskExecutionStrategy for PoolStrategy {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        // As InlineStrategy does (sections 3 and 4): return at once, dropping the task, if the
        // request is cancelled; count in with the guard, refusing after shutdown; move the guard
        // into the pool's closure, and finish it with every outcome delivered, a refusal too.
        let (_info, body) = task.into_parts();
        let body = match body {
            TaskBody::Blocking(body) => body,
            other => {
                drop(other); // the node goes before its completion
                return completion.complete(Err(TaskError::unsupported("blocking tasks only")));
            }
        };
        self.pool.spawn(move || {
            if completion.is_cancelled() {
                // Cancelled while queued: it already has its outcome. The node goes first.
                return drop(body);
            }
            let outcome = completion.in_scope(|| {
                std::panic::catch_unwind(AssertUnwindSafe(|| body.run()))
                    .unwrap_or_else(|payload| Err(TaskError::panic(payload)))
            });
            completion.complete(outcome);
        });
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn name(&self) -> &str {
        "pool"
    }
}

fn started(pool_threads: usize) -> (RequestCompletionPublisher, Coordinator) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().expect("a new publisher starts");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(pool_threads)
        .build()
        .expect("a pool");
    let pool = Arc::new(pool);
    let coordinator = Coordinator::builder()
        .strategy("pool", PoolStrategy { pool })
        .build();
    coordinator
        .start(&publisher)
        .expect("a new coordinator starts");
    (publisher, coordinator)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_tasks_deliver_values_failures_and_panics() {
    let (publisher, coordinator) = started(2);
    let value = Task::blocking("v", "value", || Ok::<_, BoxError>(6 * 7));
    assert_eq!(coordinator.submit(value, "pool").await.unwrap(), 42);
    let failing = Task::blocking("f", "fail", || Err::<(), BoxError>("no".into()));
    assert!(
        coordinator
            .submit(failing, "pool")
            .await
            .unwrap_err()
            .task_error()
            .is_some_and(TaskError::is_node_error)
    );
    let panicking = Task::blocking("p", "panic", || -> Result<(), BoxError> { panic!("boom") });
    let error = coordinator.submit(panicking, "pool").await.unwrap_err();
    assert!(
        error.task_error().is_some_and(TaskError::is_panic),
        "{error}"
    );
    // An async task is not for this pool: `execute` refuses it at once.
    let not_blocking = Task::from_fn("a", "async", || async { Ok::<_, BoxError>(1) });
    let error = coordinator.submit(not_blocking, "pool").await.unwrap_err();
    assert!(
        error.task_error().is_some_and(TaskError::is_unsupported),
        "{error}"
    );
    let counts = coordinator.counts();
    assert_eq!(
        (counts.open, counts.closed, counts.succeeded, counts.failed),
        (0, 4, 1, 3)
    );
    // It reports no counters of its own (no `stats`): the default says it takes tasks.
    assert!(coordinator.system_detail().modes["pool"].accepting);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_task_runs_in_its_requests_scope() {
    let (publisher, coordinator) = started(1);
    // On a pool thread, the coordinator knows the running node only through `in_scope`.
    let task = Task::blocking("s", "scope", || {
        Ok::<_, BoxError>(coordinator::current_node())
    });
    let node = task.node_id().clone();
    assert_eq!(coordinator.submit(task, "pool").await.unwrap(), Some(node));
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_task_submits_children_as_any_node_does() {
    let (publisher, coordinator) = started(2);
    // On a pool thread, outside any runtime: `in_scope` enters the coordinator's.
    let submitter = coordinator.clone();
    let parent = Task::blocking("parent", "parent", move || {
        let child = Task::blocking("child", "child", || Ok::<_, BoxError>(6 * 7));
        let child = submitter.try_spawn(child, "pool", SubmitOptions::new())?;
        Ok::<_, BoxError>(tokio::runtime::Handle::current().block_on(child)?)
    });
    let parent_node = parent.node_id().clone();
    assert_eq!(coordinator.submit(parent, "pool").await.unwrap(), 42);
    let child = coordinator.job("child").expect("the child was recorded");
    assert_eq!(child.parent_node_id(), Some(&parent_node));
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_task_cancelled_while_queued_never_runs() {
    let (publisher, coordinator) = started(1);
    // Occupy the pool's only thread until the second task is cancelled.
    let (release, released) = mpsc::channel::<()>();
    let (running, is_running) = tokio::sync::oneshot::channel();
    let first = Task::blocking("first", "hold", move || {
        let _ = running.send(());
        released.recv().map_err(BoxError::from)
    });
    let holding = coordinator
        .spawn(first, "pool", SubmitOptions::new())
        .await
        .unwrap();
    is_running.await.unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let second = Task::blocking("second", "queued", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        Ok::<_, BoxError>(())
    });
    let queued = coordinator
        .spawn(second, "pool", SubmitOptions::new())
        .await
        .unwrap();
    queued.cancel();
    assert!(queued.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    holding.await.unwrap();
    // The pool ran the queued job after the first: it saw the cancellation and left the body.
    let (done, finished) = tokio::sync::oneshot::channel();
    let last = Task::blocking("last", "after", move || {
        let _ = done.send(());
        Ok::<_, BoxError>(())
    });
    coordinator.submit(last, "pool").await.unwrap();
    finished.await.unwrap();
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// The page's registering section: a strategy of your own under a mode name of its own.
#[rustfmt::skip]
#[tokio::test]
async fn it_registers_as_the_guide_shows() -> Result<(), Box<dyn std::error::Error>> {
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
let coordinator = Coordinator::builder()
    .with_async()
    .strategy(InlineStrategy::MODE, InlineStrategy::new())   // the mode name "inline"
    .build();
coordinator.start(&publisher)?;
let four = coordinator.submit(Task::from_fn("1", "add", || async { Ok::<_, BoxError>(2 + 2) }), "inline").await?;
    assert_eq!(four, 4);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    Ok(())
}

/// A pool shared with the threaded strategy: its one thread, waiting inside a threaded node's
/// `block_on`, runs this strategy's task meanwhile, which is in its own request's scope there
/// (its node, its cancellation), not in the waiting node's nor in none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_task_run_by_a_thread_waiting_in_another_node_keeps_its_scope() {
    let (publisher, coordinator) = shared_pool();
    let (waiter, release) = a_node_waiting_on_the_pool(&coordinator).await;
    let (seen, sees) = mpsc::channel();
    let reads = Task::blocking("reads", "reads its scope", move || {
        let node = coordinator::current_node().map(|node| node.to_string());
        seen.send(node).unwrap();
        let started = std::time::Instant::now();
        while !coordinator::current_node_cancelled() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.send(coordinator::current_node_cancelled().then(String::new))
            .unwrap();
        Ok::<_, BoxError>(())
    });
    let reads = coordinator
        .spawn(reads, "pool", SubmitOptions::new())
        .await
        .unwrap();
    let node = sees.recv_timeout(Duration::from_secs(5)).unwrap();
    let job = coordinator.with_state(|state| {
        state
            .get("reads")
            .map(|job| job.child_node_id().to_string())
    });
    reads.cancel();
    let cancelled = sees.recv_timeout(Duration::from_secs(10)).unwrap();
    release.send(()).unwrap();
    waiter.await.unwrap();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(node, job, "its own node");
    assert!(cancelled.is_some(), "it saw its cancellation");
}

/// A threaded node and the guide's pool strategy on one shared pool, with the bus started.
fn shared_pool() -> (RequestCompletionPublisher, Coordinator) {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap(),
    );
    let threaded = coordinator::ThreadedExecutionStrategy::builder().pool(Arc::clone(&pool));
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .strategy("threaded", threaded.build().unwrap())
        .strategy("pool", PoolStrategy { pool })
        .build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator)
}

/// A threaded node waiting in `block_on` on the shared pool's one thread (which helps the pool
/// meanwhile), until the sender is used.
async fn a_node_waiting_on_the_pool(
    coordinator: &Coordinator,
) -> (RequestHandle<()>, futures::channel::oneshot::Sender<()>) {
    let (waiting, waits) = mpsc::channel();
    let (release, released) = futures::channel::oneshot::channel::<()>();
    let waiter = Task::blocking("Z", "waits", move || {
        waiting.send(()).unwrap();
        let _ = coordinator::block_on(released);
        Ok::<_, BoxError>(())
    });
    let waiter = coordinator.spawn(waiter, "threaded", SubmitOptions::new());
    let waiter = waiter.await.unwrap();
    waits.recv_timeout(Duration::from_secs(5)).unwrap();
    (waiter, release)
}

/// A threaded node waits for a pool task it submitted, which its own thread then runs from its
/// own queue while it waits: the task sees its own node, not the waiting one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_task_its_waiting_parent_runs_from_its_own_queue_sees_its_own_node() {
    let (publisher, coordinator) = shared_pool();
    let submitter = coordinator.clone();
    let waits = Task::blocking("Z", "waits for its pool child", move || {
        let reads = Task::blocking("C", "reads its node", || {
            Ok::<_, BoxError>(coordinator::current_node().map(|node| node.to_string()))
        });
        let reads = submitter.try_spawn(reads, "pool", SubmitOptions::new())?;
        Ok::<_, BoxError>(coordinator::block_on(reads)?)
    });
    let seen = coordinator.submit(waits, "threaded");
    let seen = tokio::time::timeout(Duration::from_secs(20), seen).await;
    let seen = seen.expect("the tree ends").unwrap();
    let node = coordinator.with_state(|state| {
        let job = state.get("C").map(|job| job.child_node_id().to_string());
        (
            job,
            state.get("Z").map(|job| job.child_node_id().to_string()),
        )
    });
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_ne!(node.0, node.1);
    assert_eq!(seen, node.0, "C saw its own node");
}

/// Work a node hands to `rayon::spawn` runs in no node's scope, also when a thread waiting in
/// another node's `block_on` picked up that node and then its detached work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_work_of_a_node_a_waiting_thread_helped_runs_in_no_nodes_scope() {
    let (publisher, coordinator) = shared_pool();
    let (waiter, release) = a_node_waiting_on_the_pool(&coordinator).await;
    let (detached_ran, detached) = mpsc::channel();
    let hands_off = Task::blocking("A", "hands work to rayon", move || {
        rayon::spawn(move || {
            let sent = task_core::context::broadcast("A's detached work").is_ok();
            let node = coordinator::current_node().map(|node| node.to_string());
            detached_ran.send((node, sent)).unwrap();
        });
        Ok::<_, BoxError>(())
    });
    coordinator.submit(hands_off, "threaded").await.unwrap();
    let seen = detached.recv_timeout(Duration::from_secs(5)).unwrap();
    release.send(()).unwrap();
    waiter.await.unwrap();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(seen, (None, false), "the detached work ran as a node");
}
