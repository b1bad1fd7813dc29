//! Submitting tasks: results, failures, rejections, exactly-once outcomes.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, JobStatus, RequestCompletionMessage,
    RequestCompletionPublisher, Task,
};
use coordinator::{SubmitError, SubmitOptions, TakenOutput};
use support::{CountingInline, Recorder, started, value_task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_returns_the_typed_result_with_the_job_closed_and_the_message_published() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    #[derive(Clone, Debug, PartialEq)]
    struct Summary {
        words: usize,
    }
    let task = Task::from_fn("123", "summarize", || async {
        Ok::<_, BoxError>(Summary { words: 3 })
    });
    let node_id = task.node_id().clone();
    let summary = coordinator
        .submit(task, ExecutionMode::ASYNC)
        .await
        .unwrap();
    assert_eq!(summary, Summary { words: 3 });

    let job = coordinator.job("123").unwrap();
    assert_eq!(job.status(), JobStatus::Closed);
    assert_eq!(job.result(), Some(JobResult::Success));
    assert_eq!(job.child_node_id(), &node_id);
    assert!(job.parent_node_id().is_none());
    assert!(job.end_time().unwrap() >= job.start_time());

    publisher.shutdown().await;
    let messages = recorder.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].to_string(),
        "summarize DONE with result Summary { words: 3 }"
    );
}

#[tokio::test]
async fn failures_and_panics_close_the_job_as_failed_and_the_coordinator_keeps_working() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let failing: Task<()> = Task::from_fn("f", "flaky", || async { Err("upstream down") });
    let err = coordinator.submit(failing, "async").await.unwrap_err();
    assert!(!err.is_rejected());
    assert!(err.task_error().unwrap().is_node_error());

    let panicking: Task<()> = Task::from_fn("p", "broken", || async {
        panic!("index out of bounds");
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    });
    let err = coordinator.submit(panicking, "async").await.unwrap_err();
    let task_error = err.task_error().unwrap();
    assert!(task_error.is_panic());
    assert_eq!(task_error.message(), "node panicked: index out of bounds");

    assert_eq!(
        coordinator
            .submit(value_task("ok", 5), "async")
            .await
            .unwrap(),
        5
    );
    let counts = coordinator.counts();
    assert_eq!(
        (counts.open, counts.closed, counts.succeeded, counts.failed),
        (0, 3, 1, 2)
    );
    assert_eq!(
        coordinator.job("p").unwrap().result(),
        Some(JobResult::Failure)
    );
    // Each failed job keeps its error, in the snapshot too; a success has none.
    let failed = coordinator.job("f").unwrap();
    assert_eq!(failed.error().map(|e| e.message()), Some("upstream down"));
    assert!(coordinator.job("ok").unwrap().error().is_none());
    let detail = serde_json::to_value(coordinator.system_detail()).unwrap();
    let jobs = detail["jobs"].as_array().unwrap();
    let panicked = jobs.iter().find(|j| j["request_id"] == "p").unwrap();
    assert_eq!(
        panicked["error"]["message"],
        "node panicked: index out of bounds"
    );

    publisher.shutdown().await;
    let log: Vec<String> = recorder.messages().iter().map(|m| m.to_string()).collect();
    assert_eq!(log[0], "flaky FAILED with error upstream down");
    assert_eq!(
        log[1],
        "broken FAILED with error node panicked: index out of bounds"
    );
}

/// A caller's error says the result its job closed with, whichever way it failed; a rejection,
/// which recorded no job, says none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_error_says_what_its_job_closed_with() {
    let (publisher, coordinator) = started();
    let failing: Task<()> = Task::from_fn("failed", "flaky", || async { Err("down") });
    let pending = |id| Task::from_fn(id, "slow", std::future::pending::<Result<(), BoxError>>);
    let options = SubmitOptions::new().timeout(std::time::Duration::from_millis(20));
    let handle = coordinator.spawn(pending("cancelled"), "async", SubmitOptions::new());
    let handle = handle.await.unwrap();
    handle.cancel();
    let errors = [
        coordinator.submit(failing, "async").await.unwrap_err(),
        coordinator
            .submit_with(pending("timed"), "async", options)
            .await
            .unwrap_err(),
        handle.await.unwrap_err(),
    ];
    let closed = ["failed", "timed", "cancelled"].map(|id| coordinator.job(id).unwrap().result());
    let said = errors.each_ref().map(SubmitError::job_result);
    assert_eq!(said, closed);
    assert_eq!(
        said,
        [
            JobResult::Failure,
            JobResult::TimedOut,
            JobResult::Cancelled
        ]
        .map(Some)
    );
    let rejected = coordinator
        .submit(value_task("", 1), "async")
        .await
        .unwrap_err();
    assert!(rejected.is_rejected());
    assert_eq!(rejected.job_result(), None);
    publisher.shutdown().await;
}

/// One failure among a batch's outputs, collected into one `Result` as a fan-in does, says
/// which request it was.
#[tokio::test]
async fn a_failure_among_a_batch_says_whose_it_is() {
    let (_publisher, coordinator) = started();
    let tasks = (0..5).map(|i| {
        Task::from_fn(format!("item-{i}"), "step", move || async move {
            if i == 3 {
                return Err::<u32, BoxError>("disk full".into());
            }
            Ok(i)
        })
    });
    let batch = coordinator.submit_many(tasks, "async", SubmitOptions::new());
    let outputs = batch.unwrap().all().await;
    let error = outputs
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    assert_eq!(error.request_id().map(|id| id.as_str()), Some("item-3"));
    assert_eq!(error.to_string(), "request `item-3`: disk full");
    // A rejection that names its request says it too; one of the whole submission does not.
    let open = Task::from_fn("open", "s", std::future::pending::<Result<(), BoxError>>);
    let handle = coordinator.try_spawn(open, "async", SubmitOptions::new());
    let again = Task::from_fn("open", "s", || async { Ok::<_, BoxError>(()) });
    let duplicate = coordinator.submit(again, "async").await.unwrap_err();
    assert_eq!(duplicate.request_id().map(|id| id.as_str()), Some("open"));
    let unknown = coordinator
        .submit(value_task("x", 1), "nowhere")
        .await
        .unwrap_err();
    assert_eq!(unknown.request_id(), None);
    handle.unwrap().cancel();
}

/// A failed request reads as what its node returned, after the request's id, and the chain of
/// causes below it says each cause once, as error reports (`anyhow`'s `{:#}`, `eyre`) print it.
#[tokio::test]
async fn a_failure_reads_as_its_cause_and_its_chain_says_each_cause_once() {
    #[derive(Debug, thiserror::Error)]
    #[error("the upload failed")]
    struct Upload(#[source] std::io::Error);

    let (publisher, coordinator) = started();
    let failing: Task<()> = Task::from_fn("u", "upload", || async {
        Err(Upload(std::io::Error::other("disk full")))
    });
    let err = coordinator.submit(failing, "async").await.unwrap_err();
    let mut chain = vec![err.to_string()];
    let mut cause = std::error::Error::source(&err);
    while let Some(error) = cause {
        chain.push(error.to_string());
        cause = error.source();
    }
    assert_eq!(chain, ["request `u`: the upload failed", "disk full"]);
    // `{:#}` says the chain in one line, as the bus's failure line does.
    assert_eq!(
        format!("{err:#}"),
        "request `u`: the upload failed: disk full"
    );
    assert_eq!(err.request_id().map(|id| id.as_str()), Some("u"));
    assert!(err.task_error().unwrap().downcast_ref::<Upload>().is_some());

    let slow: Task<()> = Task::from_fn("s", "slow", std::future::pending::<Result<(), BoxError>>);
    let handle = coordinator
        .try_spawn(slow, "async", SubmitOptions::new())
        .unwrap();
    handle.cancel();
    let err = handle.await.unwrap_err();
    assert!(err.is_cancelled());
    let message = err.task_error().unwrap().message();
    assert_eq!(err.to_string(), format!("request `s`: {message}"));
    assert!(std::error::Error::source(&err).is_none());
    publisher.shutdown().await;
}

#[tokio::test]
async fn an_unconfigured_mode_or_an_empty_id_is_rejected_and_records_nothing() {
    let (publisher, coordinator) = started();
    let mut stream = publisher.subscribe_stream().unwrap();
    let err = coordinator
        .submit(value_task("1", 1), ExecutionMode::PROCESS)
        .await
        .unwrap_err();
    assert!(err.is_unknown_mode());
    assert!(err.is_rejected());
    // The message names the modes there are, and the feature a built-in one needs.
    let message = err.to_string();
    assert!(
        message.starts_with("no execution strategy is registered for mode `process` (registered: "),
        "{message}"
    );
    for name in coordinator.modes() {
        assert!(message.contains(name.as_str()), "{message}");
    }
    assert!(message.contains("feature"), "{message}");
    assert!(coordinator.job("1").is_none());
    // An empty batch for that mode is refused as well, and so is an empty request id.
    let none = std::iter::empty::<Task<u64>>();
    let empty = coordinator.submit_many(none, ExecutionMode::PROCESS, SubmitOptions::new());
    assert!(empty.unwrap_err().is_unknown_mode());
    let nameless = coordinator.submit(value_task("", 0), "async").await;
    let nameless = nameless.unwrap_err();
    assert!(
        nameless.is_empty_id() && nameless.is_rejected(),
        "{nameless}"
    );
    assert!(coordinator.with_state(|s| s.is_empty()));
    assert_eq!(coordinator.counts().open, 0);
    // Nothing was published: the next message on the bus is the next request's.
    coordinator
        .submit(value_task("2", 2), "async")
        .await
        .unwrap();
    let first = stream.recv().await.unwrap().unwrap();
    assert_eq!(first.request_id().unwrap().as_str(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_open_request_id_is_rejected_without_disturbing_the_original() {
    let (_publisher, coordinator) = started();
    duplicate_is_rejected(&coordinator).await;
}

/// The duplicate would have to wait for the place the original holds: it is rejected at once
/// all the same, never run once the original ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_rejected_when_its_modes_limit_is_full() {
    let limited = Coordinator::builder().with_async().limit("async", 1);
    let (_publisher, coordinator) = support::started_from(limited);
    duplicate_is_rejected(&coordinator).await;
}

async fn duplicate_is_rejected(coordinator: &Coordinator) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let slow = Task::from_fn("dup", "slow", || async move {
        released.await.ok();
        Ok::<_, BoxError>("original")
    });
    let c = coordinator.clone();
    let original = tokio::spawn(async move { c.submit(slow, "async").await });
    while coordinator.job("dup").is_none() {
        tokio::task::yield_now().await;
    }
    let node_before = coordinator.job("dup").unwrap().child_node_id().clone();
    let copy = Task::from_fn("dup", "copy", || async { Ok::<_, BoxError>("copy") });
    let submitted = coordinator.submit(copy, "async");
    let err = tokio::time::timeout(std::time::Duration::from_secs(30), submitted).await;
    let err = err.expect("answered at once").unwrap_err();
    assert!(err.is_duplicate() && err.is_rejected(), "{err}");
    let copy = Task::from_fn("dup", "copy", || async { Ok::<_, BoxError>("copy") });
    let err = coordinator.try_spawn(copy, "async", SubmitOptions::new());
    let err = err.expect_err("a duplicate");
    assert!(err.is_duplicate(), "{err}");
    assert_eq!(
        coordinator.job("dup").unwrap().child_node_id(),
        &node_before
    );
    assert_eq!(coordinator.counts().open, 1);
    release.send(()).unwrap();
    assert_eq!(original.await.unwrap().unwrap(), "original");
    // A closed id may be used again.
    assert_eq!(
        coordinator
            .submit(
                Task::from_fn("dup", "again", || async { Ok::<_, BoxError>("again") }),
                "async"
            )
            .await
            .unwrap(),
        "again"
    );
}

#[tokio::test]
async fn submit_before_start_and_after_shutdown_is_rejected() {
    let coordinator = Coordinator::builder().with_async().build();
    let err = coordinator
        .submit(value_task("1", 1), "async")
        .await
        .unwrap_err();
    assert!(err.is_not_started());
    let publisher = RequestCompletionPublisher::new();
    // A publisher never started would refuse every outcome: said at start, not at the first
    // submit, and the coordinator stays unstarted.
    let err = coordinator.start(&publisher).unwrap_err();
    assert!(err.is_publisher_not_started(), "{err}");
    publisher.start().unwrap();
    coordinator.start(&publisher).unwrap();
    assert!(
        coordinator
            .start(&publisher)
            .unwrap_err()
            .is_already_started()
    );
    coordinator.shutdown().await;
    let err = coordinator
        .submit(value_task("2", 2), "async")
        .await
        .unwrap_err();
    assert!(err.is_shut_down());
    assert!(coordinator.with_state(|s| s.is_empty()));

    // A limit of a mode no strategy serves (misspelt) would limit nothing: refused at start.
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let misspelt = Coordinator::builder()
        .with_async()
        .limit("asyncc", 3)
        .build();
    let err = misspelt.start(&publisher).unwrap_err();
    assert!(err.is_unknown_mode(), "{err}");
    assert!(err.to_string().contains("`asyncc`"), "{err}");
    assert!(err.to_string().contains("registered: async"), "{err}");
    publisher.shutdown().await;
}

#[tokio::test]
async fn a_closed_publisher_rejects_new_requests() {
    let (publisher, coordinator) = started();
    publisher.shutdown().await;
    let err = coordinator
        .submit(value_task("1", 1), "async")
        .await
        .unwrap_err();
    assert!(err.is_publisher_closed());
    assert!(coordinator.job("1").is_none());
}

/// Outside any runtime, a coordinator started on a current-thread runtime (which runs tasks only
/// while a thread blocks on it) has nowhere to run a request: it is refused, nothing recorded.
#[test]
fn submit_outside_a_runtime_is_rejected_when_started_on_a_current_thread_one() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().with_async().build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { coordinator.start(&publisher).unwrap() });
    let err =
        futures::executor::block_on(coordinator.submit(value_task("1", 1), "async")).unwrap_err();
    assert!(err.is_no_runtime());
    assert!(coordinator.job("1").is_none());
}

/// Outside any runtime, once the multi-thread runtime the coordinator was started on has shut
/// down, a request has nowhere to run: it is refused, nothing recorded.
#[test]
fn submit_outside_a_runtime_is_rejected_once_the_start_runtime_shut_down() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().with_async().build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async { coordinator.start(&publisher).unwrap() });
    drop(rt);
    let err =
        futures::executor::block_on(coordinator.submit(value_task("1", 1), "async")).unwrap_err();
    assert!(err.is_no_runtime(), "{err}");
    assert!(coordinator.job("1").is_none());
}

/// Outside any runtime (a thread of the application's, a bus callback), a request runs on the
/// multi-thread runtime the coordinator was started on: one at once, one that waits for its
/// place under a limit, one with a timeout, and a batch.
#[test]
fn submit_outside_a_runtime_runs_on_the_multi_thread_runtime_start_ran_on() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .with_async()
        .limit("async", 1)
        .build();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = rt.block_on(async {
        coordinator.start(&publisher).unwrap();
        let held = Task::from_fn("holder", "held", || async move {
            released.await.ok();
            Ok::<_, BoxError>(0_u64)
        });
        coordinator.try_spawn(held, "async", SubmitOptions::new())
    });
    let holder = holder.expect("the first request takes the one place");
    let task = |id: &str, n| value_task(id, n);
    // The mode is full: `try_spawn` says so, a `submit` waits for the place.
    let err = coordinator
        .try_spawn(task("busy", 1), "async", SubmitOptions::new())
        .unwrap_err();
    assert!(err.is_busy(), "{err}");
    // Polled once here, it waits for the place; then awaited on a thread of its own.
    let mut waited = Box::pin({
        let coordinator = coordinator.clone();
        async move { coordinator.submit(task("waited", 2), "async").await }
    });
    let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        waited.as_mut().poll(noop).is_pending(),
        "it waits for the place"
    );
    let waiting = std::thread::spawn(move || futures::executor::block_on(waited));
    release.send(()).unwrap();
    assert_eq!(futures::executor::block_on(holder).unwrap(), 0);
    assert_eq!(waiting.join().unwrap().unwrap(), 2);
    let timed = SubmitOptions::new().timeout(Duration::from_secs(30));
    let submitted = coordinator.submit_with(task("timed", 3), "async", timed);
    assert_eq!(futures::executor::block_on(submitted).unwrap(), 3);
    let tasks = (0..4).map(|i| task(&format!("batch-{i}"), i));
    let batch = coordinator.submit_many(tasks, "async", SubmitOptions::new());
    let outputs = futures::executor::block_on(batch.unwrap().all());
    let outputs: Vec<u64> = outputs.into_iter().map(Result::unwrap).collect();
    assert_eq!(outputs, [0, 1, 2, 3]);
    rt.block_on(coordinator.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_submits_close_every_job_exactly_once() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    const N: u64 = 10_000;
    let calls = (0..N).map(|i| {
        let coordinator = coordinator.clone();
        async move {
            let id = format!("req-{i}");
            if i % 10 == 0 {
                let task: Task<u64> =
                    Task::from_fn(
                        id,
                        "fails",
                        move || async move { Err(format!("error {i}")) },
                    );
                coordinator
                    .submit(task, "async")
                    .await
                    .map_err(|e| e.to_string())
            } else {
                coordinator
                    .submit(value_task(&id, i), "async")
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    });
    let results = futures::future::join_all(calls).await;
    for (i, result) in results.iter().enumerate() {
        if i % 10 == 0 {
            let expected = format!("request `req-{i}`: error {i}");
            assert_eq!(result.as_ref().unwrap_err(), &expected);
        } else {
            assert_eq!(*result.as_ref().unwrap(), i as u64);
        }
    }
    let counts = coordinator.counts();
    assert_eq!(counts.open, 0);
    assert_eq!(counts.closed, N);
    assert_eq!(counts.failed, N / 10);
    assert_eq!(counts.succeeded, N - N / 10);
    coordinator.with_state(|state| {
        assert_eq!(state.len(), N as usize);
        assert!(state.iter().all(|job| job.status() == JobStatus::Closed));
    });
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!(terminal.len(), N as usize);
    assert!(terminal.values().all(|&c| c == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_stops_waiting_does_not_lose_the_outcome() {
    let (publisher, coordinator) = started();
    let done = publisher.listener(
        |m: &RequestCompletionMessage| m.request_id().is_some_and(|id| id.as_str() == "walk-away"),
        |m| m.to_string(),
    );
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let task = Task::from_fn("walk-away", "slow", || async move {
        released.await.ok();
        Ok::<_, BoxError>(1)
    });
    let mut call = Box::pin(coordinator.submit(task, "async"));
    // Poll once so the request is accepted, then drop the caller's future.
    assert!(futures::FutureExt::now_or_never(&mut call).is_none());
    drop(call);
    release.send(()).unwrap();
    assert_eq!(done.await.unwrap(), "slow DONE with result 1");
    let job = coordinator.job("walk-away").unwrap();
    // The listener can run before the coordinator's own subscriber: wait for the close.
    let mut job = job;
    while job.status() != JobStatus::Closed {
        tokio::task::yield_now().await;
        job = coordinator.job("walk-away").unwrap();
    }
    assert_eq!(job.result(), Some(JobResult::Success));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_submissions_record_the_calling_node_as_parent() {
    let (_publisher, coordinator) = started();
    let c = coordinator.clone();
    let parent = Task::from_fn("parent", "planner", move || async move {
        let child = Task::from_fn("child", "tool", || async { Ok::<_, BoxError>(20) });
        let got = c.submit(child, "async").await?;
        Ok::<_, BoxError>(got + 1)
    });
    let parent_node = parent.node_id().clone();
    assert_eq!(coordinator.submit(parent, "async").await.unwrap(), 21);
    let child = coordinator.job("child").unwrap();
    assert_eq!(child.parent_node_id(), Some(&parent_node));
    assert!(
        coordinator
            .job("parent")
            .unwrap()
            .parent_node_id()
            .is_none()
    );
    // An explicit parent wins.
    let explicit = value_task("explicit", 1).with_parent("caller-node".into());
    coordinator.submit(explicit, "async").await.unwrap();
    assert_eq!(
        coordinator
            .job("explicit")
            .unwrap()
            .parent_node_id()
            .map(|p| p.as_str()),
        Some("caller-node")
    );
}

#[tokio::test]
async fn blocking_nodes_run_under_the_async_mode() {
    let (_publisher, coordinator) = started();
    let task = Task::blocking("cpu", "fib", || {
        fn fib(n: u64) -> u64 {
            if n < 2 { n } else { fib(n - 1) + fib(n - 2) }
        }
        Ok::<_, BoxError>(fib(20))
    });
    assert_eq!(coordinator.submit(task, "async").await.unwrap(), 6765);
}

#[tokio::test]
async fn a_custom_strategy_under_a_custom_mode_name() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let inline = Arc::new(CountingInline::default());
    let coordinator = Coordinator::builder()
        .with_async()
        .shared_strategy("inline", inline.clone())
        .build();
    coordinator.start(&publisher).unwrap();
    assert_eq!(
        coordinator
            .submit(value_task("1", 7), "inline")
            .await
            .unwrap(),
        7
    );
    assert_eq!(inline.executed.load(Ordering::SeqCst), 1);
    assert_eq!(
        coordinator.modes(),
        vec![ExecutionMode::ASYNC, ExecutionMode::from("inline")]
    );
}

#[tokio::test]
async fn handle_item_closes_jobs_only_for_terminal_messages_of_open_requests() {
    use coordinator::{RequestSuccess, TaskError, TaskInfo, Value};
    use pubsub::RequestCreationFailure;
    let (_publisher, coordinator) = started();
    // A creation failure never had a job: ignored, nothing recorded.
    coordinator.handle_item(RequestCompletionMessage::CreationFailure(
        RequestCreationFailure {
            request_id: "never".into(),
            error: TaskError::unsupported("bad args"),
        },
    ));
    // A success for a request this coordinator does not know: ignored.
    let info = TaskInfo::new("stranger".into(), "n".into(), None, "x");
    coordinator.handle_item(
        RequestSuccess {
            info,
            result: Value::new(1),
        }
        .into(),
    );
    assert!(coordinator.with_state(|s| s.is_empty()));
}

#[tokio::test]
async fn a_wrong_result_type_on_the_bus_is_an_error_not_a_panic() {
    use coordinator::{RequestSuccess, Value};
    let (_publisher, coordinator) = started();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let task = Task::from_fn("r", "n", || async move {
        released.await.ok();
        Ok::<_, BoxError>(1_u64)
    });
    let info = task.info().clone();
    let c = coordinator.clone();
    let call = tokio::spawn(async move { c.submit(task, "async").await });
    while coordinator.job("r").is_none() {
        tokio::task::yield_now().await;
    }
    // Someone feeds a forged completion with a value of the wrong type.
    coordinator.handle_item(
        RequestSuccess {
            info,
            result: Value::new("forged"),
        }
        .into(),
    );
    let err = call.await.unwrap().unwrap_err();
    assert!(err.task_error().unwrap().is_strategy_error());
    assert!(err.to_string().contains("expected a u64 result"));
    // The run the completion ended was stopped; its node may be gone already.
    let _ = release.send(());
    let counts = coordinator.counts();
    assert_eq!(
        (counts.closed, counts.failed),
        (1, 1),
        "closed once, by the fed completion, failed as its caller was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_moves_any_output_to_its_caller_and_the_bus_gets_its_text() {
    /// Not `Clone`: only one of it may exist.
    #[derive(Debug)]
    struct Unique(std::sync::Mutex<Vec<u8>>);

    let (publisher, coordinator) = started();
    // A subscriber holds every message it is given, unread, as long as it lives.
    let mut stream = publisher.subscribe_stream().unwrap();
    let (made, buffer) = std::sync::mpsc::channel();
    let task = Task::from_fn("u", "unique", move || async move {
        let bytes = vec![7u8; 3];
        made.send(bytes.as_ptr() as usize).unwrap();
        Ok::<_, BoxError>(Unique(std::sync::Mutex::new(bytes)))
    });
    let unique: Unique = coordinator.submit(task, "async").await.unwrap();
    // The very value the node made: moved, not cloned.
    let bytes = unique.0.into_inner().unwrap();
    assert_eq!(bytes.as_ptr() as usize, buffer.recv().unwrap());
    let Some(Ok(coordinator::RequestCompletionMessage::Success(done))) = stream.recv().await else {
        panic!("a success message first");
    };
    assert!(!done.result.is::<Unique>(), "the caller's alone");
    // A node's output comes back from every typed submission that way.
    let batch = coordinator
        .submit_many(
            (0..3).map(|i| value_task(&format!("b{i}"), i)),
            "async",
            SubmitOptions::new(),
        )
        .unwrap();
    assert_eq!(
        batch
            .all()
            .await
            .into_iter()
            .map(Result::unwrap)
            .sum::<u64>(),
        3
    );
    let spawned = coordinator
        .try_spawn(value_task("t", 9), "async", SubmitOptions::new())
        .unwrap();
    assert_eq!(spawned.await.unwrap(), 9);
    for _ in 0..4 {
        let Some(Ok(coordinator::RequestCompletionMessage::Success(done))) = stream.recv().await
        else {
            panic!("a success message");
        };
        let text = done.result.downcast_ref::<TakenOutput>().unwrap().text();
        assert!(["0", "1", "2", "9"].contains(&text), "{text}");
    }
    let text = done.result.downcast_ref::<TakenOutput>().unwrap().text();
    assert!(text.starts_with("Unique(Mutex { data: [7, 7, 7]"), "{text}");
    // A `Clone` output too is moved, never cloned, however many hold the message; a long text
    // is cut.
    let (made, buffer) = std::sync::mpsc::channel();
    let long = Task::from_fn("l", "long", move || async move {
        let text = "x".repeat(5000);
        made.send(text.as_ptr() as usize).unwrap();
        Ok::<_, BoxError>(text)
    });
    let text = coordinator.submit(long, "async").await.unwrap();
    assert_eq!(
        text.as_ptr() as usize,
        buffer.recv().unwrap(),
        "moved, not cloned"
    );
    let Some(Ok(coordinator::RequestCompletionMessage::Success(done))) = stream.recv().await else {
        panic!("a success message");
    };
    let text = done.result.downcast_ref::<TakenOutput>().unwrap().text();
    assert_eq!(text.len(), TakenOutput::MAX_LEN + '…'.len_utf8());
    assert!(text.ends_with("xx…"), "{text}");
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_whose_debug_panics_still_reaches_its_caller_and_the_bus() {
    /// Its `Debug` panics.
    struct Touchy(u8);
    impl std::fmt::Debug for Touchy {
        fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            panic!("no Debug for Touchy");
        }
    }

    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let task = Task::from_fn("t", "touchy", || async { Ok::<_, BoxError>(Touchy(5)) });
    assert_eq!(coordinator.submit(task, "async").await.unwrap().0, 5);
    assert_eq!(
        coordinator.job("t").unwrap().result(),
        Some(JobResult::Success)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let messages = recorder.messages();
    let texts: Vec<&str> = (messages.iter())
        .filter_map(|m| match m {
            coordinator::RequestCompletionMessage::Success(done) => done
                .result
                .downcast_ref::<TakenOutput>()
                .map(TakenOutput::text),
            _ => None,
        })
        .collect();
    assert_eq!(texts, [TakenOutput::PANICKED]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_is_not_clone_comes_back_shared_with_the_bus() {
    /// Not `Clone`: only one of it may exist.
    #[derive(Debug)]
    struct Unique(std::sync::Mutex<u32>);

    let (publisher, coordinator) = started();
    let mut stream = publisher.subscribe_stream().unwrap();
    let task = Task::from_fn("u", "unique", || async {
        Ok::<_, BoxError>(Unique(std::sync::Mutex::new(7)))
    });
    let unique: Arc<Unique> = coordinator.submit_shared(task, "async").await.unwrap();
    *unique.0.lock().unwrap() += 1;
    let Some(Ok(coordinator::RequestCompletionMessage::Success(done))) = stream.recv().await else {
        panic!("a success message first");
    };
    // The subscriber sees the very value the caller holds.
    let seen = done.result.downcast::<Unique>().unwrap();
    assert!(Arc::ptr_eq(&seen, &unique));
    assert_eq!(*seen.0.lock().unwrap(), 8);
    let wrong: Task<Unique> = Task::from_fn("w", "unique", || async {
        Ok::<_, BoxError>(Unique(std::sync::Mutex::new(0)))
    });
    let erased = coordinator
        .submit_erased(wrong.into_erased(), "async")
        .await
        .unwrap();
    assert!(erased.is::<Unique>());
    // With options: a shared output within its timeout, and one past it.
    let quick = Task::from_fn("q", "unique", || async {
        Ok::<_, BoxError>(Unique(std::sync::Mutex::new(1)))
    });
    let within = coordinator::SubmitOptions::new().timeout(std::time::Duration::from_secs(30));
    let quick = coordinator.submit_shared_with(quick, "async", within).await;
    assert_eq!(*quick.unwrap().0.lock().unwrap(), 1);
    let slow = Task::from_fn("s", "unique", || async {
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        Ok::<_, BoxError>(Unique(std::sync::Mutex::new(2)))
    });
    let short = coordinator::SubmitOptions::new().timeout(std::time::Duration::from_millis(20));
    let slow = coordinator.submit_shared_with(slow, "async", short).await;
    assert!(slow.unwrap_err().is_timeout());
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// Each task of a batch with options of its own: a timeout on one, a retry policy on another,
/// none on the third; the batch is still accepted or rejected whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_task_of_a_batch_may_bring_its_own_options() {
    let (publisher, coordinator) = started();
    let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = Arc::clone(&tries);
    let hangs = Task::from_fn("hangs", "hangs", || async {
        std::future::pending::<Result<u64, BoxError>>().await
    });
    let flaky = Task::replayable_fn("flaky", "flaky", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Err::<u64, _>("the first try fails")
            } else {
                Ok(2)
            }
        }
    });
    let retry = coordinator::RetryPolicy::new(2).backoff(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(1),
    );
    let batch = [
        (
            hangs,
            SubmitOptions::new().timeout(std::time::Duration::from_millis(20)),
        ),
        (flaky, SubmitOptions::new().retry(retry.clone())),
        (value_task("plain", 3), SubmitOptions::new()),
    ];
    let outputs = coordinator
        .submit_many_with(batch, ExecutionMode::ASYNC)
        .unwrap()
        .all()
        .await;
    assert!(outputs[0].as_ref().unwrap_err().is_timeout());
    assert_eq!(
        (outputs[1].as_ref().ok(), outputs[2].as_ref().ok()),
        (Some(&2), Some(&3))
    );
    assert_eq!(coordinator.job("flaky").unwrap().attempts(), 2);

    // A retry policy on a task that cannot run again still rejects the whole batch.
    let once = Task::<u64>::from_fn("once", "once", || async { Ok::<_, BoxError>(1) });
    let rejected = coordinator
        .submit_many_with(
            [
                (value_task("fine", 1), SubmitOptions::new()),
                (once, SubmitOptions::new().retry(retry)),
            ],
            ExecutionMode::ASYNC,
        )
        .err()
        .unwrap();
    assert!(rejected.is_not_replayable(), "{rejected}");
    assert!(coordinator.job("fine").is_none() && coordinator.job("once").is_none());
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
