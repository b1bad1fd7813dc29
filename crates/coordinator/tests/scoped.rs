//! `SubmitOptions::cancel_children_on_end`: nothing a request started outlives it.

mod support;

use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, SubmitOptions, Task, current_node,
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
