//! A node's scope (the parent of what it submits, the cancellation that reaches it) holds
//! whatever event sink its code runs under: a strategy's own sink, made current inside the
//! completion's scope, or a strategy run on its own inside the node.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, NodeId, SubmitOptions, Task, TaskError,
    current_node, current_node_cancelled,
};
use exec_inline::InlineStrategy;
use support::{started, started_from};
use task_core::context::{self, EventSink, Events};
use task_core::{BoxFuture, Completion, ErasedTask, TaskBody, TaskExecutionStrategy};

/// Fails rather than hangs when `future` never finishes.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

/// Waits until `coordinator`'s job `id` has ended, and returns how.
async fn ended(coordinator: &Coordinator, id: &str) -> JobResult {
    within(&format!("the end of {id}"), async {
        loop {
            if let Some(result) = coordinator.job(id).and_then(|job| job.result()) {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// A task that never ends.
fn hanging(id: &str) -> Task<()> {
    Task::from_fn(id, "hang", std::future::pending::<Result<(), BoxError>>)
}

/// Passes the node's events on with a prefix.
struct Prefix(Option<Events>);

impl EventSink for Prefix {
    fn broadcast(&self, event: Arc<str>) {
        if let Some(events) = &self.0 {
            events.send(format!("[prefixed] {event}"));
        }
    }
}

/// Runs blocking bodies on a thread of its own, under a sink of its own made current inside the
/// completion's scope.
struct Prefixing;

impl TaskExecutionStrategy for Prefixing {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        let (_info, body) = task.into_parts();
        let TaskBody::Blocking(body) = body else {
            return completion.complete(Err(TaskError::unsupported("blocking only")));
        };
        std::thread::spawn(move || {
            let sink: Arc<dyn EventSink> = Arc::new(Prefix(completion.events()));
            let outcome = completion.in_scope(|| {
                context::with_events(sink, || catch_unwind(AssertUnwindSafe(|| body.run())))
                    .unwrap_or_else(|payload| Err(TaskError::panic(payload)))
            });
            completion.complete(outcome);
        });
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn name(&self) -> &str {
        "prefixing"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_with_a_sink_of_its_own_keeps_the_nodes_scope() {
    let builder = Coordinator::builder().with_async();
    let (_publisher, coordinator) = started_from(builder.strategy("prefixing", Prefixing));
    let c = coordinator.clone();
    let (tx, rx) = mpsc::channel();
    let node = Task::blocking("p", "p", move || {
        let _detached = c.try_spawn(
            hanging("p-child"),
            ExecutionMode::ASYNC,
            SubmitOptions::new(),
        )?;
        let _ = tx.send(current_node());
        let started = Instant::now();
        while !current_node_cancelled() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = tx.send(current_node_cancelled().then(|| NodeId::from("cancelled")));
        Ok::<_, BoxError>(())
    });
    let node_id = node.node_id().clone();
    let handle = (coordinator.try_spawn(node, "prefixing", SubmitOptions::new())).unwrap();
    let seen = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(seen, Some(node_id.clone()), "the node's code sees its node");
    let child = coordinator.job("p-child").unwrap();
    assert_eq!(child.parent_node_id(), Some(&node_id));
    handle.cancel();
    let told = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(told.is_some(), "current_node_cancelled tells the node");
    assert_eq!(ended(&coordinator, "p-child").await, JobResult::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declared_on_a_waiting_nodes_thread_is_not_told_that_nodes_cancellation() {
    // A strategy that runs a node of its own on a thread where a coordinator's node waits
    // declares it through `task_core::context`: `current_node` names it, and the waiting node's
    // cancellation is not its own.
    let (_publisher, coordinator) = started();
    let (tx, rx) = mpsc::channel();
    let node = Task::blocking("w", "waiting", move || {
        let _ = tx.send(None);
        let started = Instant::now();
        while !current_node_cancelled() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let inside = {
            let _declared = context::enter_node(NodeId::from("declared"));
            (current_node(), current_node_cancelled())
        };
        let _ = tx.send(Some((inside, current_node_cancelled())));
        Ok::<_, BoxError>(())
    });
    let handle = coordinator
        .try_spawn(node, ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap();
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    handle.cancel();
    let (inside, after) = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(inside, (Some(NodeId::from("declared")), false));
    assert!(
        after,
        "the waiting node is told again once the declared one is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_and_its_child_share_one_place_under_a_strategy_with_a_sink_of_its_own() {
    let builder = Coordinator::builder().with_async();
    let builder = builder
        .strategy("prefixing", Prefixing)
        .limit("prefixing", 1);
    let (_publisher, coordinator) = started_from(builder);
    let c = coordinator.clone();
    let parent = Task::blocking("lp", "parent", move || {
        let child = Task::blocking("lp-child", "child", || Ok::<_, BoxError>(7_u32));
        Ok::<_, BoxError>(futures::executor::block_on(c.submit(child, "prefixing"))?)
    });
    let got = within("the parent", coordinator.submit(parent, "prefixing")).await;
    assert_eq!(got.unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_running_a_strategy_on_its_own_keeps_its_scope() {
    let (_publisher, coordinator) = started();
    let c = coordinator.clone();
    let seen = Arc::new(Mutex::new(None));
    let seen_inside = Arc::clone(&seen);
    let outer = Task::from_fn("outer", "outer", move || async move {
        let inner = Task::blocking("inner", "inner", move || {
            *seen_inside.lock().unwrap() = Some(current_node());
            let _detached =
                c.try_spawn(hanging("child"), ExecutionMode::ASYNC, SubmitOptions::new())?;
            Ok::<_, BoxError>(())
        });
        task_core::run(&InlineStrategy::new(), inner.into_erased()).await?;
        std::future::pending::<Result<(), BoxError>>().await
    });
    let outer_node = outer.node_id().clone();
    let handle = coordinator
        .try_spawn(outer, ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap();
    within("the child", async {
        while coordinator.job("child").is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, Some(Some(outer_node.clone())));
    let child = coordinator.job("child").unwrap();
    assert_eq!(child.parent_node_id(), Some(&outer_node));
    handle.cancel();
    assert_eq!(ended(&coordinator, "child").await, JobResult::Cancelled);
}

/// Runs blocking bodies on a thread of its own, inside a `spawn_local` task of a `LocalSet` that
/// `futures::executor::block_on` drives: a tokio task, on a thread where no tokio runtime is.
struct LocalSetThread;

impl TaskExecutionStrategy for LocalSetThread {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        let (_info, body) = task.into_parts();
        let TaskBody::Blocking(body) = body else {
            return completion.complete(Err(TaskError::unsupported("blocking only")));
        };
        std::thread::spawn(move || {
            let local = tokio::task::LocalSet::new();
            futures::executor::block_on(local.run_until(async move {
                let node = tokio::task::spawn_local(async move {
                    let outcome = completion.in_scope(|| {
                        catch_unwind(AssertUnwindSafe(|| body.run()))
                            .unwrap_or_else(|payload| Err(TaskError::panic(payload)))
                    });
                    completion.complete(outcome);
                });
                node.await.expect("the node's task ends");
            }));
        });
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn name(&self) -> &str {
        "local-set-thread"
    }
}

/// A node polled as a tokio task where no runtime is (a `LocalSet` under another executor) runs
/// in the coordinator's runtime all the same: being inside a tokio task is not being inside a
/// runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_polled_as_a_tokio_task_outside_any_runtime_submits_its_children() {
    let builder = Coordinator::builder().with_async();
    let (_publisher, coordinator) =
        started_from(builder.strategy("local-set-thread", LocalSetThread));
    let on = coordinator.clone();
    let (tx, rx) = mpsc::channel();
    let node = Task::blocking("n", "n", move || {
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        let child = Task::from_fn("n-child", "child", || async { Ok::<_, BoxError>(()) });
        let submitted = on.try_spawn(child, ExecutionMode::ASYNC, SubmitOptions::new());
        let _ = tx.send((runtime, submitted.map(drop).map_err(|e| e.to_string())));
        Ok::<_, BoxError>(())
    });
    coordinator.submit(node, "local-set-thread").await.unwrap();
    let (runtime, submitted) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(runtime, "the node runs inside the coordinator's runtime");
    assert_eq!(submitted, Ok(()), "the node submits its child");
}

/// Once the multi-thread runtime the coordinator was started on has shut down, a node on a
/// custom strategy's own thread (no runtime there) that submits a child is told there is no
/// runtime, rather than having the child accepted onto the dead runtime and lost.
#[test]
fn a_child_from_a_strategys_own_thread_after_the_start_runtime_shut_down_is_refused() {
    let start = tokio::runtime::Runtime::new().unwrap();
    let builder = Coordinator::builder()
        .with_async()
        .strategy("prefixing", Prefixing);
    let (publisher, coordinator) = start.block_on(async { started_from(builder) });
    drop(start);
    let other = tokio::runtime::Runtime::new().unwrap();
    let inside = coordinator.clone();
    let parent = Task::blocking("parent", "parent", move || {
        let child = Task::from_fn("child", "child", || async { Ok::<_, BoxError>(1_u8) });
        let submitted = futures::executor::block_on(inside.submit(child, ExecutionMode::ASYNC));
        Ok::<_, BoxError>(submitted.map_err(|e| e.is_no_runtime()))
    });
    let answer = other.block_on(coordinator.submit(parent, "prefixing"));
    assert_eq!(
        answer.unwrap(),
        Err(true),
        "the child is refused: no runtime"
    );
    assert!(coordinator.job("child").is_none(), "nothing recorded");
    other.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}
