//! Shutdown and the system detail.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, RequestCompletionPublisher, Task,
};
use support::{CountingInline, Recorder, started, value_task};

#[tokio::test]
async fn shutdown_shuts_every_strategy_down_exactly_once() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let shared = Arc::new(CountingInline::default());
    let other = Arc::new(CountingInline::default());
    let coordinator = Coordinator::builder()
        .shared_strategy("a", shared.clone())
        .shared_strategy("b", shared.clone())
        .shared_strategy("c", other.clone())
        .build();
    coordinator.start(&publisher).unwrap();
    assert!(coordinator.is_accepting());
    coordinator.shutdown().await;
    coordinator.shutdown().await;
    assert_eq!(shared.shutdowns.load(Ordering::SeqCst), 1);
    assert_eq!(other.shutdowns.load(Ordering::SeqCst), 1);
    assert!(!coordinator.is_accepting());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_running_requests_and_each_still_ends_once() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let slow = Task::from_fn("slow", "slow", || async move {
        released.await.ok();
        Ok::<_, BoxError>(9_u8)
    });
    let (call, shutting) = running_then_shutting_down(&coordinator, slow).await;
    assert!(
        coordinator
            .submit(value_task("late", 1), "async")
            .await
            .unwrap_err()
            .is_shut_down()
    );
    assert!(!shutting.is_finished());
    release.send(()).unwrap();
    shutting.await.unwrap();
    // By the time shutdown returns, the running request is closed.
    assert_eq!(coordinator.counts().open, 0);
    assert_eq!(call.await.unwrap().unwrap(), 9);
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().get("slow"), Some(&1));
    assert!(!recorder.terminal_counts().contains_key("late"));
}

/// Submits `task` from a task of its own and, once it is open, begins a shutdown with a grace of
/// 30 s: the call, and the shutdown, which no longer accepts new requests when this returns.
async fn running_then_shutting_down<O: std::fmt::Debug + Send + Sync + 'static>(
    coordinator: &Coordinator,
    task: Task<O>,
) -> (
    tokio::task::JoinHandle<Result<O, coordinator::SubmitError>>,
    tokio::task::JoinHandle<()>,
) {
    let id = task.request_id().clone();
    let c = coordinator.clone();
    let call = tokio::spawn(async move { c.submit(task, "async").await });
    while coordinator.job(&id).is_none() {
        tokio::task::yield_now().await;
    }
    let c = coordinator.clone();
    let shutting =
        tokio::spawn(async move { c.shutdown_with_grace(Duration::from_secs(30)).await });
    while coordinator.is_accepting() {
        tokio::task::yield_now().await;
    }
    (call, shutting)
}

/// Shutdown drains: during its grace period a request still running may submit the children it
/// needs to finish (one at a time or in a batch), while a request from outside any node is
/// refused; once the request has ended, so is a task naming it as parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_finishing_during_shutdown_may_submit_its_children() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let c = coordinator.clone();
    let agent = Task::from_fn("agent", "agent", move || async move {
        released.await.ok();
        let one = c.submit(value_task("tool", 1), "async").await?;
        let more = [value_task("tool-a", 10), value_task("tool-b", 100)];
        let more = c.submit_many(more, "async", coordinator::SubmitOptions::new())?;
        let more: Vec<u64> = more.all().await.into_iter().collect::<Result<_, _>>()?;
        Ok::<_, BoxError>(one + more.iter().sum::<u64>())
    });
    let agent_id = agent.node_id().clone();
    let (call, shutting) = running_then_shutting_down(&coordinator, agent).await;
    let late = coordinator.submit(value_task("late", 1), "async").await;
    assert!(late.unwrap_err().is_shut_down());
    release.send(()).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
    assert_eq!(answer.expect("the agent ends").unwrap().unwrap(), 111);
    tokio::time::timeout(Duration::from_secs(10), shutting)
        .await
        .expect("shutdown returns once the agent and its children ended")
        .unwrap();
    assert_eq!(coordinator.counts().open, 0);
    let orphan = value_task("orphan", 1).with_parent(agent_id);
    let orphan = coordinator.submit(orphan, "async").await;
    assert!(orphan.unwrap_err().is_shut_down(), "its parent has ended");
    publisher.shutdown().await;
    let ended = recorder.terminal_counts();
    for id in ["agent", "tool", "tool-a", "tool-b"] {
        assert_eq!(ended.get(id), Some(&1), "{id}");
    }
    assert!(!ended.contains_key("late") && !ended.contains_key("orphan"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_what_is_still_open_at_the_deadline() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let (_keep, never) = tokio::sync::oneshot::channel::<()>();
    let stuck = Task::from_fn("stuck", "stuck", || async move {
        never.await.ok();
        Ok::<_, BoxError>(())
    });
    let c = coordinator.clone();
    let call = tokio::spawn(async move { c.submit(stuck, "async").await });
    while coordinator.job("stuck").is_none() {
        tokio::task::yield_now().await;
    }
    coordinator
        .shutdown_with_grace(Duration::from_millis(50))
        .await;
    // Nothing is left open: the stuck request was cancelled, its caller told, its message sent.
    let counts = coordinator.counts();
    assert_eq!((counts.open, counts.cancelled), (0, 1));
    assert_eq!(
        coordinator.job("stuck").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    let error = call.await.unwrap().unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    assert!(error.to_string().contains("shutdown deadline"), "{error}");
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().get("stuck"), Some(&1));
}

/// Parents that swallow their child's failure, open at the deadline with their children: each
/// parent ends cancelled, never as a success made of its child's cancellation (every request
/// still open is marked before any of them ends, whatever order the table lists them in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_deadline_no_parent_ends_on_its_own_after_its_child_was_cancelled() {
    const PARENTS: usize = 1_000;
    let (publisher, coordinator) = started();
    for i in 0..PARENTS {
        let inside = coordinator.clone();
        let parent = Task::from_fn(format!("parent-{i}"), "parent", move || async move {
            let child = Task::from_fn(format!("child-{i}"), "child", || async {
                std::future::pending::<()>().await;
                Ok::<_, BoxError>(())
            });
            // The failure is handled: the parent succeeds whatever its child did.
            let _ = inside.submit(child, "async").await;
            Ok::<_, BoxError>(())
        });
        drop(
            coordinator
                .try_spawn(parent, "async", Default::default())
                .unwrap(),
        );
    }
    while coordinator.counts().open < 2 * PARENTS as u64 {
        tokio::task::yield_now().await;
    }
    coordinator
        .shutdown_with_grace(Duration::from_millis(20))
        .await;
    let ended_well = (0..PARENTS)
        .filter(|i| {
            let job = coordinator.job(&format!("parent-{i}")).unwrap();
            job.result() != Some(JobResult::Cancelled)
        })
        .count();
    assert_eq!(ended_well, 0, "parents not cancelled at the deadline");
    publisher.shutdown().await;
}

#[tokio::test]
async fn system_detail_is_a_serializable_snapshot() {
    let (_publisher, coordinator) = started();
    coordinator
        .submit(value_task("a", 1), ExecutionMode::ASYNC)
        .await
        .unwrap();
    let failing: Task<()> = Task::from_fn("b", "bad", || async { Err("no") });
    coordinator
        .submit(failing, ExecutionMode::ASYNC)
        .await
        .unwrap_err();
    let detail = coordinator.system_detail();
    assert!(detail.accepting);
    assert_eq!(detail.jobs.len(), 2);
    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["counts"]["succeeded"], 1);
    assert_eq!(json["counts"]["failed"], 1);
    assert_eq!(json["jobs"][0]["request_id"], "a");
    assert_eq!(json["jobs"][0]["result"], "success");
    assert_eq!(json["jobs"][1]["node_name"], "bad");
    assert_eq!(json["jobs"][1]["result"], "failure");
    assert_eq!(json["modes"]["async"]["succeeded"], 1);
    assert_eq!(json["modes"]["async"]["failed"], 1);
    assert_eq!(json["modes"]["async"]["accepting"], true);
    // A reader of the snapshot (a dashboard's client, a log) reads it back whole.
    let back: coordinator::SystemDetail = serde_json::from_value(json).unwrap();
    assert_eq!(back, detail);
}

#[test]
fn public_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Coordinator>();
    send_sync::<coordinator::SubmitError>();
    send_sync::<coordinator::StartError>();
    send_sync::<coordinator::SystemDetail>();
    fn send<T: Send>(_: &T) {}
    let (_p, c) = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { started() })
    };
    send(&c.submit(value_task("x", 1), "async"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_request_accepted_just_before_shutdown_still_runs() {
    let (_publisher, coordinator) = started();
    let mut call = Box::pin(coordinator.submit(value_task("edge", 3), "async"));
    // Accepted (recorded, driver spawned) but, on this single thread, not yet run.
    assert!(futures::FutureExt::now_or_never(&mut call).is_none());
    assert!(coordinator.job("edge").is_some());
    coordinator.shutdown().await;
    assert_eq!(call.await.unwrap(), 3);
    assert_eq!(coordinator.counts().succeeded, 1);
}

#[tokio::test]
async fn each_mode_counts_its_own_requests() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .with_async()
        .strategy("one", CountingInline::default())
        .strategy("two", CountingInline::default())
        .strategy("three", CountingInline::default())
        .build();
    coordinator.start(&publisher).unwrap();
    // A different number of successes and failures per mode, interleaved.
    let plan = [
        ("async", 1, 0),
        ("one", 2, 1),
        ("two", 3, 2),
        ("three", 0, 3),
    ];
    for round in 0..3 {
        for (mode, successes, failures) in plan {
            if round < successes {
                let id = format!("{mode}-ok-{round}");
                coordinator.submit(value_task(&id, 1), mode).await.unwrap();
            }
            if round < failures {
                let id = format!("{mode}-bad-{round}");
                let failing: Task<()> = Task::from_fn(id, "bad", || async { Err("no") });
                coordinator.submit(failing, mode).await.unwrap_err();
            }
        }
    }
    let requests = coordinator.system_detail().requests;
    for (mode, successes, failures) in plan {
        let counts = requests[mode];
        assert_eq!(
            (counts.in_flight, counts.succeeded, counts.failed),
            (0, successes as u64, failures as u64),
            "{mode}"
        );
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openings_are_announced_only_when_asked_and_before_anything_else_of_their_request() {
    use coordinator::{RequestCompletionMessage, SubmitOptions};
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    coordinator
        .submit(value_task("quiet", 1), ExecutionMode::ASYNC)
        .await
        .unwrap();
    coordinator.announce_openings(true);
    coordinator
        .submit(value_task("ok", 2), ExecutionMode::ASYNC)
        .await
        .unwrap();
    let slow = Task::from_fn("late", "slow", || async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, BoxError>(0)
    });
    let timeout = SubmitOptions::new().timeout(Duration::from_millis(10));
    let late = coordinator
        .submit_with(slow, ExecutionMode::ASYNC, timeout)
        .await;
    assert!(late.unwrap_err().is_timeout());
    let batch = (0..3).map(|i| value_task(&format!("b{i}"), i));
    coordinator
        .submit_many(batch, ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap()
        .all()
        .await;
    recorder.wait_for(1 + 2 * 5).await;
    let messages = recorder.messages();
    let of = |id: &str| -> Vec<&'static str> {
        messages
            .iter()
            .filter(|m| m.request_id().is_some_and(|r| r.as_str() == id))
            .map(|m| match m {
                RequestCompletionMessage::Creation(c) => {
                    assert_eq!(c.mode, ExecutionMode::ASYNC);
                    "opened"
                }
                m if m.is_terminal() => "ended",
                _ => "other",
            })
            .collect()
    };
    assert_eq!(of("quiet"), ["ended"], "off by default");
    for id in ["ok", "late", "b0", "b1", "b2"] {
        assert_eq!(of(id), ["opened", "ended"], "{id}");
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_whose_shutdown_began_is_never_started_again() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let never_started = Coordinator::builder().with_async().build();
    never_started.shutdown().await;
    let refused = never_started.start(&publisher).unwrap_err();
    assert!(refused.is_shut_down(), "{refused}");
    assert!(!never_started.is_accepting());

    let (publisher, coordinator) = started();
    coordinator.shutdown().await;
    let refused = coordinator.start(&publisher).unwrap_err();
    assert!(refused.is_shut_down(), "{refused}");
}

#[tokio::test]
async fn a_handle_polled_again_after_its_answer_says_so_and_the_job_keeps_its_result() {
    use futures::future::FusedFuture;
    let (_publisher, coordinator) = started();
    let options = coordinator::SubmitOptions::new();
    let mut handle = coordinator
        .spawn(value_task("h", 7), ExecutionMode::ASYNC, options)
        .await
        .unwrap();
    assert!(!handle.is_terminated());
    assert_eq!((&mut handle).await.unwrap(), 7);
    assert!(handle.is_terminated());
    let again = (&mut handle).await.unwrap_err();
    assert!(again.is_polled_after_completion(), "{again}");
    assert_eq!(again.request_id().map(|id| id.as_str()), Some("h"));
    // It says nothing about the request: not a rejection, not a failure of the job.
    assert!(!again.is_rejected());
    assert_eq!(again.job_result(), None);
    let job = coordinator.job("h").unwrap();
    assert_eq!(job.result(), Some(JobResult::Success));
}
