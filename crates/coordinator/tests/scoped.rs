//! `SubmitOptions::cancel_children_on_end`: nothing a request started outlives it.

mod support;

use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, NodeId, SubmitOptions, Task, current_node,
};
use support::{Recorder, started};

/// Fails rather than hangs when `future` never finishes.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

/// A workflow that starts three steps that never end and one that fails, then returns at the
/// first failure: the way a workflow gives up early.
fn workflow(id: &str, coordinator: &Coordinator) -> Task<()> {
    let (id, coordinator) = (id.to_owned(), coordinator.clone());
    Task::from_fn(id.clone(), "workflow", move || async move {
        assert!(current_node().is_some());
        let hang = |i| {
            Task::from_fn(format!("{id}/step-{i}"), "step", || async {
                std::future::pending::<Result<(), BoxError>>().await
            })
        };
        let steps = (0..3).map(hang);
        let batch = coordinator.submit_many(steps, ExecutionMode::ASYNC, SubmitOptions::new())?;
        let failing = Task::<()>::from_fn(format!("{id}/check"), "check", || async {
            Err("the check failed")
        });
        coordinator.submit(failing, ExecutionMode::ASYNC).await?;
        drop(batch);
        Ok::<(), BoxError>(())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_with_its_children_cancels_those_still_open() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let scoped = SubmitOptions::new().cancel_children_on_end();
    let error = within(
        "the workflow",
        coordinator.submit_with(
            workflow("scoped", &coordinator),
            ExecutionMode::ASYNC,
            scoped,
        ),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("the check failed"), "{error}");
    for i in 0..3 {
        let step = coordinator.job(&format!("scoped/step-{i}")).unwrap();
        assert_eq!(step.result(), Some(JobResult::Cancelled), "step {i}");
        let why = step.error().unwrap().to_string();
        assert!(why.contains("ended, and its children with it"), "{why}");
    }

    // Without it, the steps outlive the workflow, as before.
    let error = within(
        "the workflow",
        coordinator.submit_with(
            workflow("plain", &coordinator),
            ExecutionMode::ASYNC,
            SubmitOptions::new(),
        ),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("the check failed"), "{error}");
    let open = coordinator.job("plain/step-0").unwrap();
    assert_eq!(open.result(), None, "still running");
    for i in 0..3 {
        assert!(
            coordinator.cancel(&format!("plain/step-{i}")),
            "step {i} was open"
        );
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let counts = recorder.terminal_counts();
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

/// The position of `id`'s terminal message among `messages`.
fn ended_at(messages: &[coordinator::RequestCompletionMessage], id: &str) -> usize {
    messages
        .iter()
        .position(|m| m.is_terminal() && m.request_id().is_some_and(|r| r.as_str() == id))
        .unwrap_or_else(|| panic!("no terminal message for {id}"))
}

/// Children still open when a request that ends with them ends, however it ends (its node
/// returns, or it is cancelled), end before its own end is published: a subscriber hears of
/// theirs first, and its caller, once answered, finds their jobs closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_cancelled_at_the_end_end_before_it_is_published() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let scoped = SubmitOptions::new().cancel_children_on_end();
    for (id, hangs) in [("returns", false), ("cancelled", true)] {
        let parent = coordinator.clone();
        let child_id = format!("{id}/child");
        let child = child_id.clone();
        let task = Task::from_fn(id, "workflow", move || async move {
            let step = Task::from_fn(child, "step", || async {
                std::future::pending::<Result<(), BoxError>>().await
            });
            let handle = parent.try_spawn(step, ExecutionMode::ASYNC, SubmitOptions::new())?;
            drop(handle);
            if hangs {
                std::future::pending::<()>().await;
            }
            Ok::<(), BoxError>(())
        });
        let handle = coordinator
            .try_spawn(task, ExecutionMode::ASYNC, scoped.clone())
            .unwrap();
        if hangs {
            // Cancelled once its child is open.
            within("the child", async {
                while coordinator.job(&child_id).is_none() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            handle.cancel();
        }
        let _ = within("the workflow", handle).await;
        let child = coordinator.job(&child_id).unwrap();
        assert_eq!(child.result(), Some(JobResult::Cancelled), "{child_id}");
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let messages = recorder.messages();
    for id in ["returns", "cancelled"] {
        let (parent, child) = (
            ended_at(&messages, id),
            ended_at(&messages, &format!("{id}/child")),
        );
        assert!(
            child < parent,
            "{id}: its child's end was published after its own (at {child}, it at {parent})"
        );
    }
}

/// Says, as it is dropped, which node it was dropped in.
struct SaysWhere(std::sync::mpsc::Sender<Option<NodeId>>);

impl Drop for SaysWhere {
    fn drop(&mut self) {
        let _ = self.0.send(current_node());
    }
}

/// An async node dropped as its request is cancelled is dropped in its request's scope, as it
/// ran: its `Drop` sees its node (and what it submits there is its child).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_async_node_is_dropped_in_its_scope() {
    let (_publisher, coordinator) = started();
    let (dropped_in, dropped) = std::sync::mpsc::channel();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let task = Task::from_fn("dropped", "waits", move || async move {
        let _says = SaysWhere(dropped_in);
        let _ = started_tx.send(());
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    });
    let node = task.node_id().clone();
    let options = SubmitOptions::new();
    let handle = coordinator.try_spawn(task, ExecutionMode::ASYNC, options);
    let handle = handle.unwrap();
    within("the node's start", started_rx).await.unwrap();
    handle.cancel();
    let seen = dropped.recv_timeout(Duration::from_secs(30));
    assert_eq!(seen, Ok(Some(node)), "dropped in its own scope");
}
