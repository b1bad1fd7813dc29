//! A retry policy's attempt timeout: an attempt that hangs is stopped and retried, while the
//! request's own timeout still covers every attempt.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use coordinator::{
    BoxError, ExecutionMode, JobResult, RetryPolicy, SubmitOptions, Task,
    ThreadedExecutionStrategy, current_node, current_node_cancelled,
};
use support::{Recorder, started, started_threaded};

/// Up to `attempts` attempts of at most 1 s each, 1 ms apart: the time an attempt that does
/// not hang takes to answer, even on a loaded machine.
fn hang_guard(attempts: u32) -> SubmitOptions {
    let policy = RetryPolicy::new(attempts)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .attempt_timeout(ATTEMPT);
    SubmitOptions::new().retry(policy)
}

/// The attempt timeout of `hang_guard`.
const ATTEMPT: Duration = Duration::from_secs(1);

/// Fails rather than hangs when `future` never finishes.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_attempt_that_hangs_is_stopped_and_the_next_one_answers() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let (calls, child_started) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let (counter, started_flag) = (Arc::clone(&calls), Arc::clone(&child_started));
    let parent = coordinator.clone();
    let step = Task::replayable_fn("step", "llm-call", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let (started_flag, parent) = (Arc::clone(&started_flag), parent.clone());
        async move {
            if n == 1 {
                // The first attempt hangs, and so does the child it submitted.
                let child = Task::from_fn("step/child", "hangs", || async {
                    std::future::pending::<Result<(), BoxError>>().await
                });
                let child = parent.try_spawn(child, ExecutionMode::ASYNC, SubmitOptions::new());
                started_flag.store(child.is_ok(), Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(n)
        }
    });
    let answer = coordinator.submit_with(step, ExecutionMode::ASYNC, hang_guard(3));
    assert_eq!(within("the request", answer).await.unwrap(), 2);
    assert!(
        child_started.load(Ordering::SeqCst),
        "the first attempt's child ran"
    );
    let job = coordinator.job("step").unwrap();
    assert_eq!(
        (job.attempts(), job.result()),
        (2, Some(JobResult::Success))
    );
    // The hung attempt's child was cancelled with it.
    let child = coordinator.job("step/child").unwrap();
    assert_eq!(child.result(), Some(JobResult::Cancelled));
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let counts = recorder.terminal_counts();
    assert_eq!((counts["step"], counts["step/child"]), (1, 1), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_that_all_hang_end_the_request_timed_out_after_the_last() {
    let (publisher, coordinator) = started();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let step = Task::replayable_fn("hangs", "hangs", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<(), BoxError>>()
    });
    let error = within(
        "the request",
        coordinator.submit_with(step, ExecutionMode::ASYNC, hang_guard(3)),
    )
    .await
    .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(error.to_string().contains("attempt 3"), "{error}");
    let job = coordinator.job("hangs").unwrap();
    assert_eq!(
        (job.attempts(), job.result()),
        (3, Some(JobResult::TimedOut))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // The request's own timeout still covers every attempt: it ends the request at once, and
    // no attempt follows.
    let counter = Arc::clone(&calls);
    let step = Task::replayable_fn("bounded", "hangs", move || {
        counter.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<(), BoxError>>()
    });
    let options = hang_guard(100).timeout(ATTEMPT * 5 / 2);
    let error = within(
        "the request",
        coordinator.submit_with(step, ExecutionMode::ASYNC, options),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("the request did not end"),
        "{error}"
    );
    let attempts = coordinator.job("bounded").unwrap().attempts();
    assert!(
        (2..=3).contains(&attempts),
        "{attempts} attempts in 2.5 s of 1 s each"
    );

    // A policy that retries no timeouts ends the request with the first attempt's.
    let step = Task::replayable_fn("no-retry", "hangs", || {
        std::future::pending::<Result<(), BoxError>>()
    });
    let policy = RetryPolicy::new(3)
        .attempt_timeout(Duration::from_millis(20))
        .retry_if(|error| !error.is_timeout());
    let options = SubmitOptions::new().retry(policy);
    let error = within(
        "the request",
        coordinator.submit_with(step, ExecutionMode::ASYNC, options),
    )
    .await
    .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert_eq!(coordinator.job("no-retry").unwrap().attempts(), 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A blocking node is told through `current_node_cancelled`; the next attempt starts only once
/// the first has returned, so a limit of one thread never runs two attempts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_attempt_is_told_to_stop_and_the_next_starts_after_it_returned() {
    let threaded = ThreadedExecutionStrategy::builder().threads(1);
    let (publisher, coordinator) = started_threaded(threaded);
    let (calls, running, overlapped) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (counter, running_flag, overlap_flag) = (
        Arc::clone(&calls),
        Arc::clone(&running),
        Arc::clone(&overlapped),
    );
    let step = Task::replayable_blocking("scan", "scan", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if running_flag.swap(true, Ordering::SeqCst) {
            overlap_flag.store(true, Ordering::SeqCst);
        }
        let result = if n == 1 {
            // Runs until told to stop, then a moment more, as a node winding down would.
            while !current_node_cancelled() {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(30));
            Err(BoxError::from("stopped"))
        } else {
            Ok(n)
        };
        running_flag.store(false, Ordering::SeqCst);
        result
    });
    let answer = coordinator.submit_with(step, ExecutionMode::THREADED, hang_guard(3));
    assert_eq!(within("the request", answer).await.unwrap(), 2);
    assert!(
        !overlapped.load(Ordering::SeqCst),
        "two attempts ran at once"
    );
    let job = coordinator.job("scan").unwrap();
    assert_eq!(
        (job.attempts(), job.result()),
        (2, Some(JobResult::Success))
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// What an attempt's node still submits after its attempt timeout is born cancelled, as after a
/// request's own: the chaos test found such a child (and its children) running on after the
/// request had answered timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_submitted_after_its_attempt_expired_is_born_cancelled() {
    let threaded = ThreadedExecutionStrategy::builder().threads(1);
    let (publisher, coordinator) = started_threaded(threaded);
    let child_ran = Arc::new(AtomicBool::new(false));
    let (parent, ran) = (coordinator.clone(), Arc::clone(&child_ran));
    let step = Task::replayable_blocking("late-child", "scan", move || {
        while !current_node_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let ran = Arc::clone(&ran);
        let child = Task::from_fn("late-child/child", "child", move || async move {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        });
        let handle = parent.try_spawn(child, ExecutionMode::ASYNC, SubmitOptions::new());
        let outcome = coordinator::block_on(handle.map_err(BoxError::from)?);
        Err::<(), _>(BoxError::from(format!("stopped; the child: {outcome:?}")))
    });
    let error = within(
        "the request",
        coordinator.submit_with(step, ExecutionMode::THREADED, hang_guard(1)),
    )
    .await
    .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let child = coordinator.job("late-child/child").unwrap();
    assert_eq!(child.result(), Some(JobResult::Cancelled));
    assert!(!child_ran.load(Ordering::SeqCst), "the child never started");
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// An attempt whose run delivered its failure before its attempt timeout passed is not expired
/// while the policy decides (its predicate may take a while): it failed with its own error, and
/// the children it left running outlive it, as any failed attempt's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_that_delivered_before_its_timeout_is_not_expired_after() {
    let (publisher, coordinator) = started();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let parent = coordinator.clone();
    let step = Task::replayable_fn("quick", "quick", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let parent = parent.clone();
        async move {
            if n == 1 {
                let child = Task::from_fn("quick/child", "hangs", || async {
                    std::future::pending::<Result<(), BoxError>>().await
                });
                drop(parent.try_spawn(child, ExecutionMode::ASYNC, SubmitOptions::new())?);
                return Err(BoxError::from("the first attempt fails on its own"));
            }
            Ok::<_, BoxError>(n)
        }
    });
    let (seen, watcher) = (
        Arc::new(std::sync::Mutex::new(Vec::new())),
        coordinator.clone(),
    );
    let errors = Arc::clone(&seen);
    let policy = RetryPolicy::new(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .attempt_timeout(ATTEMPT)
        .retry_if(move |error| {
            errors.lock().unwrap().push(error.to_string());
            // The attempt timeout passes while the policy decides: long enough for the child to
            // be cancelled, were the attempt expired now.
            let since = std::time::Instant::now();
            while since.elapsed() < ATTEMPT * 3 / 2 {
                let child = watcher.job("quick/child").and_then(|job| job.result());
                if child.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            true
        });
    let options = SubmitOptions::new().retry(policy);
    let answer = coordinator.submit_with(step, ExecutionMode::ASYNC, options);
    assert_eq!(within("the request", answer).await.unwrap(), 2);
    let child = coordinator.job("quick/child").unwrap();
    assert_eq!(
        child.result(),
        None,
        "the finished attempt's child was ended"
    );
    assert!(
        seen.lock().unwrap()[0].contains("fails on its own"),
        "{:?}",
        seen.lock().unwrap()
    );
    assert!(coordinator.cancel("quick/child"));
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// The runtime a request was submitted on shuts down while an attempt runs: nothing would stop
/// the attempt at its timeout any more, so the request ends cancelled, as when its deadline's
/// timer goes with that runtime. It stayed open, its node running, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_whose_runtime_shut_down_ends_its_request() {
    let threaded = ThreadedExecutionStrategy::builder().threads(1);
    let (publisher, coordinator) = started_threaded(threaded);
    let step = Task::replayable_blocking("orphaned", "scan", || {
        while !current_node_cancelled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Err::<(), _>(BoxError::from("stopped"))
    });
    let policy = RetryPolicy::new(2).attempt_timeout(Duration::from_secs(600));
    let submitter = coordinator.clone();
    let handle = std::thread::spawn(move || {
        let short_lived = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = SubmitOptions::new().retry(policy);
        let spawned = submitter.spawn(step, ExecutionMode::THREADED, options);
        // Dropped once the request is accepted: its attempt's timer goes with it.
        short_lived.block_on(spawned).unwrap()
    })
    .join()
    .unwrap();
    let error = within("the request", handle).await.unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    assert!(
        error
            .to_string()
            .contains("shut down before its attempt timeout"),
        "{error}"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A request that ends its children (`cancel_children_on_end`) also ends those of each failed
/// attempt before the next one starts: an agent retried after a failure submits its tool calls
/// again under the same ids, and finds none of the failed attempt's still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_of_a_request_ending_its_children_ends_them_before_the_next() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let calls = Arc::new(AtomicU32::new(0));
    let (counter, parent) = (Arc::clone(&calls), coordinator.clone());
    let agent = Task::replayable_fn("agent", "agent", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        let parent = parent.clone();
        async move {
            if n == 1 {
                // The first attempt leaves its tool call hanging, and fails.
                let tool = Task::from_fn("agent/tool", "tool", || async {
                    std::future::pending::<Result<u32, BoxError>>().await
                });
                let _detached =
                    parent.try_spawn(tool, ExecutionMode::ASYNC, SubmitOptions::new())?;
                return Err::<u32, BoxError>("the model's answer did not parse".into());
            }
            let tool = Task::from_fn("agent/tool", "tool", || async { Ok::<_, BoxError>(7) });
            Ok(parent.submit(tool, ExecutionMode::ASYNC).await?)
        }
    });
    let policy = RetryPolicy::new(2).backoff(Duration::from_millis(1), Duration::from_millis(1));
    let options = SubmitOptions::new().retry(policy).cancel_children_on_end();
    let answer = coordinator.submit_with(agent, ExecutionMode::ASYNC, options);
    assert_eq!(within("the request", answer).await.unwrap(), 7);
    assert_eq!(coordinator.job("agent").unwrap().attempts(), 2);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let tools: Vec<String> = recorder
        .messages()
        .iter()
        .filter(|m| m.is_terminal() && m.request_id().is_some_and(|r| r.as_str() == "agent/tool"))
        .map(ToString::to_string)
        .collect();
    assert_eq!(tools.len(), 2, "{tools:?}");
    assert!(tools[0].contains("CANCELLED"), "{tools:?}");
    assert!(tools[1].contains("DONE with result 7"), "{tools:?}");
}

/// What a failed attempt's work submits late, naming the attempt's node as its parent while the
/// request waits out its backoff (work the node handed to `tokio::spawn`), is born cancelled
/// under `cancel_children_on_end`, as the attempt's other children were ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempts_late_child_is_born_cancelled_during_the_backoff() {
    let (publisher, coordinator) = started();
    let (go, late_go) = tokio::sync::oneshot::channel::<()>();
    let late_go = Arc::new(std::sync::Mutex::new(Some(late_go)));
    let (late_tx, late_rx) = tokio::sync::oneshot::channel();
    let late_tx = Arc::new(std::sync::Mutex::new(Some(late_tx)));
    let parent = coordinator.clone();
    let agent = Task::replayable_fn("agent", "agent", move || {
        let (parent, late_go, late_tx) = (parent.clone(), late_go.clone(), late_tx.clone());
        async move {
            let hang = |id: &str| {
                Task::from_fn(id, "tool", || async {
                    std::future::pending::<Result<u32, BoxError>>().await
                })
            };
            let options = SubmitOptions::new;
            let _detached =
                parent.try_spawn(hang("agent/tool"), ExecutionMode::ASYNC, options())?;
            let node = current_node().expect("inside the agent's node");
            let (late_go, late_tx) = (
                late_go.lock().unwrap().take(),
                late_tx.lock().unwrap().take(),
            );
            if let (Some(late_go), Some(late_tx)) = (late_go, late_tx) {
                tokio::spawn(async move {
                    let _ = late_go.await;
                    let late = hang("agent/late").with_parent(node);
                    let _ = late_tx.send(parent.spawn(late, ExecutionMode::ASYNC, options()).await);
                });
            }
            Err::<u32, BoxError>("the model's answer did not parse".into())
        }
    });
    let policy = RetryPolicy::new(2)
        .backoff(Duration::from_secs(600), Duration::from_secs(600))
        .without_jitter();
    let options = SubmitOptions::new().retry(policy).cancel_children_on_end();
    let handle = coordinator
        .try_spawn(agent, ExecutionMode::ASYNC, options)
        .unwrap();
    // The first attempt failed and its tool was ended: the request waits out its backoff.
    within("the first attempt's tool to end", async {
        while coordinator
            .job("agent/tool")
            .and_then(|j| j.result())
            .is_none()
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(
        coordinator.job("agent/tool").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    go.send(()).unwrap();
    let late = within("the late child", late_rx).await.unwrap().unwrap();
    let late = within("the late child's end", late).await.unwrap_err();
    assert!(late.is_cancelled(), "{late}");
    handle.cancel();
    let _ = within("the request", handle).await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
