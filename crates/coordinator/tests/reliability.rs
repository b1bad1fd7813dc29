//! Timeouts, cancellation, retries, concurrency limits and retention through the coordinator.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, CoordinatorBuilder, ExecutionMode, JobResult,
    RequestCompletionPublisher, Retention, RetryPolicy, SubmitError, SubmitOptions, Task,
    ThreadedExecutionStrategy,
};
use support::{Recorder, started, started_from, value_task};

/// Sets its flag when dropped: shows that a node is gone (its future dropped, or its task never
/// run), not left running.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (10 s at most) until `flag` is set. A launched request's cancelled outcome is published
/// at once; its node's future is dropped when its task next runs, a moment later.
async fn dropped_soon(flag: &AtomicBool) -> bool {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !flag.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
    })
    .await
    .is_ok()
}

/// `builder` with the async mode and a mode "limited" (async too) of one place.
fn one_limited_place(builder: CoordinatorBuilder) -> CoordinatorBuilder {
    builder
        .with_async()
        .strategy("limited", coordinator::AsyncExecutionStrategy::new())
        .limit("limited", 1)
}

/// The answer to `submitted`, which must come within 30 s: a tree waiting for a place its own
/// ancestor holds never answers.
async fn without_deadlock<T>(submitted: impl Future<Output = Result<T, SubmitError>>) -> T {
    let answered = tokio::time::timeout(Duration::from_secs(30), submitted).await;
    answered.expect("no deadlock").unwrap()
}

fn sleeper(id: &str, dropped: Arc<AtomicBool>) -> Task<()> {
    // Made with the task, so that the flag is set when the node goes, run or not.
    let flag = DropFlag(dropped);
    Task::from_fn(id.to_string(), "sleeper", move || async move {
        let _flag = flag;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(())
    })
}

fn quick_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_task_past_its_timeout_is_dropped_and_closed_as_timed_out() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let dropped = Arc::new(AtomicBool::new(false));
    let options = SubmitOptions::new().timeout(Duration::from_millis(50));
    let error = coordinator
        .submit_with(sleeper("slow", dropped.clone()), "async", options)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(!error.is_rejected());
    assert!(
        dropped_soon(&dropped).await,
        "the node's future was dropped"
    );
    let job = coordinator.job("slow").unwrap();
    assert_eq!(job.result(), Some(JobResult::TimedOut));
    let detail = serde_json::to_value(coordinator.system_detail()).unwrap();
    assert_eq!(detail["requests"]["async"]["timed_out"], 1);
    assert_eq!(detail["requests"]["async"]["in_flight"], 0);
    assert!(job.duration().unwrap() >= Duration::from_millis(50));
    assert_eq!(coordinator.counts().timed_out, 1);
    // A fast task with the same timeout is untouched.
    let fast = coordinator
        .submit_with(
            value_task("fast", 7),
            "async",
            SubmitOptions::new().timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(fast, 7);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().get("slow"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threaded_task_past_its_timeout_answers_at_the_deadline_and_its_late_result_is_discarded()
{
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let recorder = Recorder::attach(&publisher);
    let coordinator = Coordinator::builder()
        .strategy(
            ExecutionMode::THREADED,
            ThreadedExecutionStrategy::builder()
                .threads(1)
                .build()
                .unwrap(),
        )
        .build();
    coordinator.start(&publisher).unwrap();
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let finished = Arc::new(AtomicBool::new(false));
    let done = finished.clone();
    let task = Task::blocking("busy", "busy", move || {
        // Blocks its thread until released: it cannot be stopped, only abandoned.
        let _ = hold.recv_timeout(Duration::from_secs(30));
        done.store(true, Ordering::SeqCst);
        Ok::<_, BoxError>(1_u8)
    });
    // Started long before it: a node not started by then would never start.
    let options = SubmitOptions::new().timeout(Duration::from_secs(1));
    let error = coordinator
        .submit_with(task, ExecutionMode::THREADED, options)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(
        !finished.load(Ordering::SeqCst),
        "the caller was answered before the node finished"
    );
    release.send(()).unwrap();
    // The pool thread finishes later; its result goes nowhere and nothing changes.
    let after = value_task("after", 2).into_erased();
    let value = coordinator
        .submit_erased(after, ExecutionMode::THREADED)
        .await
        .unwrap();
    assert_eq!(value.downcast_ref::<u64>(), Some(&2));
    assert!(finished.load(Ordering::SeqCst));
    assert_eq!(
        coordinator.job("busy").unwrap().result(),
        Some(JobResult::TimedOut)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().get("busy"), Some(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_cancels_its_request_and_the_children_it_submitted() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let child_dropped = Arc::new(AtomicBool::new(false));
    let child_started = Arc::new(tokio::sync::Notify::new());
    let c = coordinator.clone();
    let flag = child_dropped.clone();
    let started_signal = child_started.clone();
    let parent = Task::from_fn("parent", "parent", move || async move {
        let child = Task::from_fn("child", "sleeper", move || async move {
            let _flag = DropFlag(flag);
            started_signal.notify_one();
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, BoxError>(())
        });
        // The child is submitted from inside the parent: it gets the parent as its parent.
        c.submit(child, "async").await?;
        Ok::<_, BoxError>(())
    });
    let handle = coordinator
        .spawn(parent, ExecutionMode::ASYNC, SubmitOptions::new())
        .await
        .unwrap();
    assert_eq!(handle.request_id().as_str(), "parent");
    child_started.notified().await;
    handle.cancel();
    assert!(handle.is_cancelled());
    let error = handle.await.unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    // The child ends too, cancelled, without anyone cancelling it by name.
    while coordinator.counts().open > 0 {
        tokio::task::yield_now().await;
    }
    let child = coordinator.job("child").unwrap();
    assert_eq!(child.result(), Some(JobResult::Cancelled));
    let parent_node = coordinator.job("parent").unwrap().child_node_id().clone();
    assert_eq!(child.parent_node_id(), Some(&parent_node));
    // Each says why: the parent was cancelled, the child with its parent.
    let why = |id| {
        coordinator
            .job(id)
            .unwrap()
            .error()
            .unwrap()
            .message()
            .to_owned()
    };
    assert_eq!(why("parent"), "the request was cancelled");
    // Its parent named by its request, as the user knows it, and by its node.
    let with_parent = format!(
        "the request was cancelled with its parent, request `parent` (node `{parent_node}`)"
    );
    assert_eq!(why("child"), with_parent);
    assert!(
        dropped_soon(&child_dropped).await,
        "the child's node is dropped"
    );
    assert_eq!(coordinator.counts().cancelled, 2);
    let per_mode = coordinator.system_detail().requests["async"];
    assert_eq!((per_mode.in_flight, per_mode.cancelled), (0, 2));
    // Cancelling a request that already ended changes nothing, and says so.
    let done = coordinator
        .spawn(
            value_task("done", 1),
            ExecutionMode::ASYNC,
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    while coordinator.counts().open > 0 {
        tokio::task::yield_now().await;
    }
    done.cancel();
    assert!(!done.is_cancelled());
    assert_eq!(done.await.unwrap(), 1);
    assert_eq!(
        coordinator.job("done").unwrap().result(),
        Some(JobResult::Success)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!(
        (terminal["parent"], terminal["child"], terminal["done"]),
        (1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_naming_its_open_parent_from_outside_its_scope_is_cancelled_with_it() {
    let (_publisher, coordinator) = started();
    let parent_dropped = Arc::new(AtomicBool::new(false));
    let parent = sleeper("parent", parent_dropped);
    let parent_node = parent.node_id().clone();
    let parent_handle = coordinator
        .spawn(parent, "async", SubmitOptions::new())
        .await
        .unwrap();
    // Submitted from outside the parent's node (a task it spawned would be the same): only the
    // explicit parent id links the two.
    let child_dropped = Arc::new(AtomicBool::new(false));
    let child_started = Arc::new(tokio::sync::Notify::new());
    let (flag, started_signal) = (child_dropped.clone(), child_started.clone());
    let child = Task::from_fn("child", "sleeper", move || async move {
        let _flag = DropFlag(flag);
        started_signal.notify_one();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(())
    })
    .with_parent(parent_node.clone());
    let child_handle = coordinator
        .spawn(child, "async", SubmitOptions::new())
        .await
        .unwrap();
    // A node id no open request runs links to nothing.
    let stranger =
        sleeper("stranger", Arc::new(AtomicBool::new(false))).with_parent("no-such-node".into());
    let stranger_handle = coordinator
        .spawn(stranger, "async", SubmitOptions::new())
        .await
        .unwrap();
    child_started.notified().await;
    parent_handle.cancel();
    assert!(parent_handle.await.unwrap_err().is_cancelled());
    let error = tokio::time::timeout(Duration::from_secs(10), child_handle)
        .await
        .expect("the child is cancelled with its parent")
        .unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    // Its run stops too.
    assert!(
        dropped_soon(&child_dropped).await,
        "the child's node is dropped"
    );
    let child = coordinator.job("child").unwrap();
    assert_eq!(child.result(), Some(JobResult::Cancelled));
    assert_eq!(child.parent_node_id(), Some(&parent_node));
    assert!(coordinator.job("stranger").unwrap().result().is_none());
    stranger_handle.cancel();
    assert!(stranger_handle.await.unwrap_err().is_cancelled());
    // Once the parent has ended, naming it links a new child to nothing either.
    let late = value_task("late", 5).with_parent(parent_node);
    assert_eq!(coordinator.submit(late, "async").await.unwrap(), 5);
}

#[tokio::test]
async fn cancel_by_id_reaches_only_open_requests_and_cancelling_a_child_spares_its_parent() {
    let (_publisher, coordinator) = started();
    assert!(!coordinator.cancel("nobody"));
    let dropped = Arc::new(AtomicBool::new(false));
    let handle = coordinator
        .spawn(sleeper("s", dropped), "async", SubmitOptions::new())
        .await
        .unwrap();
    assert!(coordinator.cancel("s"));
    assert!(handle.await.unwrap_err().is_cancelled());
    assert!(
        !coordinator.cancel("s"),
        "closed requests cannot be cancelled"
    );

    // A parent whose child is cancelled sees the child's error and decides for itself.
    let c = coordinator.clone();
    let parent = Task::from_fn("p", "parent", move || async move {
        let child = c
            .spawn(
                sleeper("c", Arc::new(AtomicBool::new(false))),
                "async",
                SubmitOptions::new(),
            )
            .await?;
        child.cancel();
        let error = child.await.unwrap_err();
        Ok::<_, BoxError>(error.is_cancelled())
    });
    assert!(coordinator.submit(parent, "async").await.unwrap());
    assert_eq!(
        coordinator.job("p").unwrap().result(),
        Some(JobResult::Success)
    );
    coordinator.shutdown().await;
}

#[tokio::test]
async fn retries_rerun_failed_attempts_and_count_them_on_the_job() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let flaky = Task::replayable_fn("flaky", "flaky", move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n < 3 {
                Err(format!("attempt {n} failed"))
            } else {
                Ok(n)
            }
        }
    });
    let value = coordinator
        .submit_with(flaky, "async", SubmitOptions::new().retry(quick_retry(5)))
        .await
        .unwrap();
    assert_eq!(value, 3);
    let job = coordinator.job("flaky").unwrap();
    assert_eq!(
        (job.attempts(), job.result()),
        (3, Some(JobResult::Success))
    );

    // Exhausted: the last error is the outcome, every attempt counted.
    let always = Task::replayable_fn("always", "always", || async { Err::<(), _>("still down") });
    let error = coordinator
        .submit_with(always, "async", SubmitOptions::new().retry(quick_retry(3)))
        .await
        .unwrap_err();
    assert_eq!(error.task_error().unwrap().message(), "still down");
    assert_eq!(coordinator.job("always").unwrap().attempts(), 3);

    // Retries asked of a task that can run only once: rejected, nothing recorded, alone or in a
    // batch; a policy of one attempt asks for none.
    let once = || Task::<()>::from_fn("once", "once", || async { Err("no") });
    let rejected = coordinator
        .submit_with(once(), "async", SubmitOptions::new().retry(quick_retry(3)))
        .await
        .unwrap_err();
    assert!(
        rejected.is_not_replayable() && rejected.is_rejected(),
        "{rejected}"
    );
    assert!(
        rejected.to_string().contains("Task::replayable_fn"),
        "{rejected}"
    );
    let batch = [
        Task::replayable_fn("fine", "fine", || async { Ok::<(), BoxError>(()) }),
        once(),
    ];
    let options = SubmitOptions::new().retry(quick_retry(3));
    let rejected = coordinator
        .submit_many(batch, "async", options)
        .err()
        .unwrap();
    assert!(rejected.is_not_replayable());
    assert!(coordinator.job("once").is_none() && coordinator.job("fine").is_none());
    coordinator
        .submit_with(once(), "async", SubmitOptions::new().retry(quick_retry(1)))
        .await
        .unwrap_err();
    assert_eq!(coordinator.job("once").unwrap().attempts(), 1);

    // An error the policy does not retry ends the request at once.
    let policy = quick_retry(5).retry_if(|e| e.is_worker_lost());
    let not_retried =
        Task::replayable_fn("strict", "strict", || async { Err::<(), _>("node error") });
    coordinator
        .submit_with(not_retried, "async", SubmitOptions::new().retry(policy))
        .await
        .unwrap_err();
    assert_eq!(coordinator.job("strict").unwrap().attempts(), 1);

    coordinator.shutdown().await;
    publisher.shutdown().await;
    // However many attempts, one terminal message per request.
    let terminal = recorder.terminal_counts();
    assert_eq!(terminal.len(), 4);
    assert!(terminal.values().all(|&n| n == 1), "{terminal:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_every_attempt_and_the_backoff() {
    let (_publisher, coordinator) = started();
    let always = Task::replayable_fn("r", "r", || async { Err::<(), _>("down") });
    let options = SubmitOptions::new().timeout(Duration::from_secs(1)).retry(
        RetryPolicy::new(1000)
            .backoff(Duration::from_millis(20), Duration::from_millis(20))
            .without_jitter(),
    );
    let error = coordinator
        .submit_with(always, "async", options)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let attempts = coordinator.job("r").unwrap().attempts();
    assert!((2..1000).contains(&attempts), "{attempts} attempts");
    coordinator.shutdown().await;
}

/// A deadline that ends a retried request says why its last failed attempt failed, cause by
/// cause, to the caller and in the job, whether it falls in a backoff or in the next attempt:
/// nothing else would.
#[tokio::test(start_paused = true)]
async fn a_deadline_after_a_failed_attempt_says_why_it_failed() {
    #[derive(Debug, thiserror::Error)]
    #[error("the upload failed")]
    struct Upload(#[source] std::io::Error);

    let (_publisher, coordinator) = started();
    let timeout = |ms| SubmitOptions::new().timeout(Duration::from_millis(ms));
    let policy = |backoff| {
        RetryPolicy::new(5)
            .backoff(backoff, backoff)
            .without_jitter()
    };
    let submit = |task, options| coordinator.submit_with(task, "async", options);
    let upload = || Upload(std::io::Error::other("disk full"));
    // In the backoff after attempt 1.
    let always = Task::replayable_fn(
        "backoff",
        "r",
        move || async move { Err::<(), _>(upload()) },
    );
    let options = timeout(300).retry(policy(Duration::from_secs(10)));
    let error = submit(always, options).await.unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let text = error.to_string();
    assert!(
        text.ends_with("after attempt 1 failed: the upload failed: disk full"),
        "{text}"
    );
    let job = coordinator.job("backoff").unwrap();
    assert_eq!(job.result(), Some(JobResult::TimedOut));
    assert_eq!(job.error(), error.task_error());
    // In attempt 2, which hangs after attempt 1 failed.
    let tries = Arc::new(AtomicU32::new(0));
    let hangs = Task::replayable_fn("second", "r", move || {
        let tries = Arc::clone(&tries);
        async move {
            if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err::<(), BoxError>("upstream down".into());
            }
            std::future::pending().await
        }
    });
    let options = timeout(300).retry(policy(Duration::from_millis(10)));
    let error = submit(hangs, options).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.ends_with("after attempt 1 failed: upstream down"),
        "{text}"
    );
    // An attempt that ran past its attempt timeout says so once.
    let slow = Task::replayable_fn("slow", "r", || {
        std::future::pending::<Result<(), BoxError>>()
    });
    let attempts = policy(Duration::from_secs(10)).attempt_timeout(Duration::from_millis(100));
    let error = submit(slow, timeout(300).retry(attempts))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        text.ends_with("after attempt 1 did not end within its attempt timeout of 100ms"),
        "{text}"
    );
    // With no attempt before, nothing more.
    let once = Task::from_fn("once", "s", std::future::pending::<Result<(), BoxError>>);
    let error = submit(once, timeout(300)).await.unwrap_err();
    assert!(!error.to_string().contains("after"), "{error}");
    coordinator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_makes_submit_wait_and_try_spawn_busy() {
    let (publisher, coordinator) =
        started_from(Coordinator::builder().with_async().limit("async", 2));
    let (release, gate) = tokio::sync::watch::channel(false);
    let gated = |id: &str| {
        let mut gate = gate.clone();
        Task::from_fn(id.to_string(), "gated", move || async move {
            gate.wait_for(|open| *open).await?;
            Ok::<_, BoxError>(())
        })
    };
    let a = coordinator
        .spawn(gated("a"), "async", SubmitOptions::new())
        .await
        .unwrap();
    let b = coordinator
        .try_spawn(gated("b"), "async", SubmitOptions::new())
        .unwrap();
    // Full: the non-waiting form is refused, recording nothing.
    let busy = coordinator
        .try_spawn(gated("c"), "async", SubmitOptions::new())
        .unwrap_err();
    assert!(busy.is_busy() && busy.is_rejected(), "{busy}");
    assert!(coordinator.job("c").is_none());
    // A parent id naming no open request takes a place of its own; one naming an open
    // request's node shares that request's place, wherever the child is submitted from.
    let stray = gated("stray").with_parent(coordinator::NodeId::new("no-such-node"));
    let stray = coordinator.try_spawn(stray, "async", SubmitOptions::new());
    assert!(stray.unwrap_err().is_busy());
    let open_parent = coordinator.job("a").unwrap().child_node_id().clone();
    let adopted = gated("adopted").with_parent(open_parent);
    let adopted = coordinator.try_spawn(adopted, "async", SubmitOptions::new());
    let adopted = adopted.unwrap();
    // The waiting form waits, unrecorded, until a place frees.
    let c = coordinator.clone();
    let gated_d = gated("d");
    let waiting = tokio::spawn(async move { c.submit(gated_d, "async").await });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(coordinator.job("d").is_none());
    assert_eq!(coordinator.counts().open, 3);
    // Children of a running request do not need a place (they would deadlock their parent).
    let c = coordinator.clone();
    let child_runs = Task::from_fn("parent", "parent", move || async move {
        let child = Task::from_fn("child", "child", || async { Ok::<_, BoxError>(5) });
        c.submit(child, "async").await.map_err(BoxError::from)
    });
    release.send(true).unwrap();
    a.await.unwrap();
    b.await.unwrap();
    adopted.await.unwrap();
    waiting.await.unwrap().unwrap();
    assert_eq!(coordinator.submit(child_runs, "async").await.unwrap(), 5);
    coordinator.shutdown().await;
    // Waiting for a place after shutdown began is a rejection.
    let late = coordinator
        .try_spawn(gated("late"), "async", SubmitOptions::new())
        .unwrap_err();
    assert!(late.is_shut_down());
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_rejects_submissions_waiting_for_a_place() {
    let (publisher, coordinator) = started_from(
        Coordinator::builder()
            .with_async()
            .limit("async", 1)
            .shutdown_grace(Duration::from_millis(50)),
    );
    let dropped = Arc::new(AtomicBool::new(false));
    let _hog = coordinator
        .spawn(
            sleeper("hog", dropped.clone()),
            "async",
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    let c = coordinator.clone();
    let waiting = tokio::spawn(async move { c.submit(value_task("w", 1), "async").await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = coordinator.clone();
    let shutdown =
        tokio::spawn(async move { c.shutdown_with_grace(Duration::from_secs(60)).await });
    // Refused as shutdown begins, not when a place frees (here: never, until the hog ends).
    let refused = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    let error = refused.expect("refused at once").unwrap().unwrap_err();
    assert!(error.is_shut_down(), "{error}");
    assert!(coordinator.job("w").is_none());
    coordinator.cancel("hog");
    shutdown.await.unwrap();
    assert_eq!(
        coordinator.job("hog").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    assert!(dropped.load(Ordering::SeqCst));
    publisher.shutdown().await;
}

#[tokio::test]
async fn keep_last_retention_bounds_the_table_and_keeps_the_totals() {
    let (publisher, coordinator) = started_from(
        Coordinator::builder()
            .with_async()
            .retention(Retention::KeepLast(10)),
    );
    for i in 0..100 {
        coordinator
            .submit(value_task(&format!("t{i}"), i), "async")
            .await
            .unwrap();
    }
    let counts = coordinator.counts();
    assert_eq!((counts.succeeded, counts.evicted), (100, 90));
    assert_eq!(coordinator.with_state(|s| s.len()), 10);
    assert!(coordinator.job("t0").is_none());
    assert!(coordinator.job("t99").is_some());
    assert_eq!(coordinator.system_detail().jobs.len(), 10);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A deadline waits on the runtime the request was submitted on. When that runtime shuts down
/// first, nothing would keep the deadline: the request ends cancelled at once, saying why,
/// rather than staying open until its node returns (a threaded node runs on regardless).
#[test]
fn a_request_whose_runtime_shuts_down_before_its_deadline_ends_cancelled() {
    let main = support::runtime(1);
    let (publisher, coordinator) = main.block_on(async {
        let publisher = RequestCompletionPublisher::new();
        publisher.start().unwrap();
        let pool = ThreadedExecutionStrategy::builder().threads(1).build();
        let coordinator = Coordinator::builder()
            .strategy(ExecutionMode::THREADED, pool.unwrap())
            .build();
        coordinator.start(&publisher).unwrap();
        (publisher, coordinator)
    });
    let recorder = Recorder::attach(&publisher);
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (started, running) = std::sync::mpsc::channel::<()>();
    let task = Task::blocking("held", "held", move || {
        started.send(()).unwrap();
        let _ = hold.recv_timeout(Duration::from_secs(30));
        Ok::<_, BoxError>(1_u8)
    });
    let short = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let timeout = SubmitOptions::new().timeout(Duration::from_secs(60));
    let handle = short.block_on(coordinator.spawn(task, ExecutionMode::THREADED, timeout));
    // Running on its pool thread, where nothing can stop it.
    running.recv().unwrap();
    drop(short);
    let job = coordinator.job("held").expect("recorded");
    assert_eq!(job.result(), Some(JobResult::Cancelled), "ended at once");
    assert!(
        job.error()
            .unwrap()
            .message()
            .contains("shut down before its deadline")
    );
    let answer = main.block_on(handle.unwrap());
    assert!(answer.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    main.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
    // The node's late result changed nothing: one terminal message, the cancellation.
    assert_eq!(recorder.terminal_counts().get("held"), Some(&1));
    assert_eq!(
        coordinator.job("held").unwrap().result(),
        Some(JobResult::Cancelled)
    );
}

/// Deadlines and backoffs are tokio timers on the caller's runtime. Without a time driver, what
/// needs no timer works; a submit that needs one panics in the caller with tokio's message, as
/// `tokio::time::timeout` would, and records nothing.
#[test]
fn a_runtime_without_timers_runs_what_needs_none_and_refuses_a_timer_before_recording() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (publisher, coordinator) = runtime.block_on(async { started() });
    let plain = runtime.block_on(coordinator.submit(value_task("plain", 7), "async"));
    assert_eq!(plain.unwrap(), 7);
    let needing_a_timer = [
        SubmitOptions::new().timeout(Duration::from_secs(5)),
        SubmitOptions::new().retry(quick_retry(2)),
    ];
    for (n, options) in needing_a_timer.into_iter().enumerate() {
        let id = format!("timed-{n}");
        let task = Task::replayable_fn(id.clone(), "value", || async { Ok::<_, BoxError>(1) });
        let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(coordinator.submit_with(task, "async", options))
        }));
        let payload = submitted.expect_err("no time driver: the submit panics");
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(
            message.contains("enable_time"),
            "tokio's message: {message}"
        );
        assert!(coordinator.job(&id).is_none(), "nothing recorded");
    }
    assert_eq!(coordinator.system_detail().jobs.len(), 1);
    runtime.block_on(async {
        // Nothing in flight: shutdown needs no timer either.
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

/// A request's place under the limit is back before its caller hears of its end: the next
/// request, submitted as soon as the last answer came, one by one or as a whole batch, is
/// never refused busy while nothing is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_request_after_an_answer_finds_its_place_free() {
    let (publisher, coordinator) =
        started_from(Coordinator::builder().with_async().limit("async", 4));
    let options = SubmitOptions::new;
    for i in 0..5_000 {
        let task = value_task(&format!("one-{i}"), i);
        let handle = coordinator.try_spawn(task, "async", options());
        let handle = handle.unwrap_or_else(|e| panic!("request {i}: {e}"));
        handle.await.unwrap();
    }
    for round in 0..1_000 {
        let tasks = (0..4).map(|i| value_task(&format!("batch-{round}-{i}"), i));
        let batch = coordinator.submit_many(tasks, "async", options());
        let batch = batch.unwrap_or_else(|e| panic!("batch {round}: {e}"));
        assert!(batch.all().await.iter().all(Result::is_ok));
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// Runs `parent` on `on`, whose mode "limited" allows 1 request tree at once, and returns how
/// many requests of that mode ran at once at most: each of them counts itself in `running`.
async fn peak_under_a_limit_of_one(
    on: &Coordinator,
    parent: Task<()>,
    parent_mode: &'static str,
    running: Arc<[AtomicU32; 2]>,
) -> u32 {
    on.submit(parent, parent_mode).await.unwrap();
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        while on.counts().open > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    settled.await.expect("every request ends");
    running[1].load(Ordering::SeqCst)
}

/// A request of mode "limited" that counts itself running for 50 ms.
fn counted(id: String, running: &Arc<[AtomicU32; 2]>) -> Task<()> {
    let running = Arc::clone(running);
    Task::from_fn(id, "counted", move || async move {
        let now = running[0].fetch_add(1, Ordering::SeqCst) + 1;
        running[1].fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        running[0].fetch_sub(1, Ordering::SeqCst);
        Ok::<_, BoxError>(())
    })
}

/// The limit bounds request trees: children a parent of another mode fans out each take a place,
/// and children that outlive their parent in the mode keep its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_holds_for_children_of_other_modes_and_children_outliving_their_parent() {
    let (publisher, coordinator) = started_from(one_limited_place(Coordinator::builder()));
    // An async parent fans out 8 children to the limited mode, then awaits them.
    let running: Arc<[AtomicU32; 2]> = Arc::default();
    let (inside, counting) = (coordinator.clone(), Arc::clone(&running));
    let fan_out = Task::from_fn("fan-out", "fan-out", move || async move {
        let mut children = Vec::new();
        for i in 0..8 {
            let child = counted(format!("child-{i}"), &counting);
            children.push(inside.spawn(child, "limited", SubmitOptions::new()).await?);
        }
        for child in children {
            child.await?;
        }
        Ok::<_, BoxError>(())
    });
    let peak = peak_under_a_limit_of_one(&coordinator, fan_out, "async", running).await;
    assert_eq!(peak, 1, "children of another mode each take a place");
    // A limited parent leaves 4 children running, then another request comes.
    let running: Arc<[AtomicU32; 2]> = Arc::default();
    let (inside, counting) = (coordinator.clone(), Arc::clone(&running));
    let leaves = Task::from_fn("leaves", "leaves", move || async move {
        for i in 0..4 {
            let child = counted(format!("left-{i}"), &counting);
            drop(inside.spawn(child, "limited", SubmitOptions::new()).await?);
        }
        Ok::<_, BoxError>(())
    });
    let next = counted("next".into(), &running);
    let (c, next_mode) = (coordinator.clone(), "limited");
    let next = async move { c.submit(next, next_mode).await.unwrap() };
    let (peak, ()) = tokio::join!(
        peak_under_a_limit_of_one(&coordinator, leaves, "limited", Arc::clone(&running)),
        next
    );
    // The children share one place among them; the next request waits for all of them.
    assert!(peak <= 4, "{peak} at once");
    let next_started = coordinator.job("next").unwrap().start_time();
    for i in 0..4 {
        let child_ended = coordinator.job(&format!("left-{i}")).unwrap().end_time();
        assert!(
            child_ended.unwrap() <= next_started,
            "the next waited for child {i}"
        );
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// Cancelling a parent leaves a child that already ended as it ended: it does not read as
/// cancelled (`RequestHandle::is_cancelled` stays false for a request that ended first).
#[tokio::test]
async fn a_child_that_ended_keeps_its_outcome_when_its_parent_is_cancelled() {
    let (publisher, coordinator) = started();
    let inside = coordinator.clone();
    let (handed, child) = tokio::sync::oneshot::channel();
    let parent = Task::from_fn("parent", "parent", move || async move {
        let child = Task::from_fn("child", "child", || async { Ok::<_, BoxError>(7_u64) });
        let child = inside.spawn(child, "async", SubmitOptions::new()).await?;
        let _ = handed.send(child);
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    });
    let parent = coordinator.spawn(parent, "async", SubmitOptions::new());
    let parent = parent.await.unwrap();
    let mut child = child.await.unwrap();
    assert_eq!((&mut child).await.unwrap(), 7);
    parent.cancel();
    assert!(parent.await.unwrap_err().is_cancelled());
    assert!(!child.is_cancelled(), "the child had ended with its value");
    let job = coordinator.job("child").unwrap();
    assert_eq!(job.result(), Some(JobResult::Success));
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A tree that leaves the limited mode and comes back to it (an agent, a tool on another mode,
/// a model call from the tool in the agent's mode) shares its root's place all the way down:
/// under a limit of 1 it completes: the grandchild never waits for its grandparent's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_that_leaves_its_limited_mode_and_comes_back_shares_its_place() {
    let (publisher, coordinator) = started_from(one_limited_place(Coordinator::builder()));
    let inside = coordinator.clone();
    let agent = Task::from_fn("agent", "agent", move || async move {
        let again = inside.clone();
        let tool = Task::from_fn("tool", "tool", move || async move {
            let model = Task::from_fn("model", "model", || async { Ok::<_, BoxError>(7_u32) });
            Ok::<_, BoxError>(again.submit(model, "limited").await?)
        });
        Ok::<_, BoxError>(inside.submit(tool, "async").await?)
    });
    assert_eq!(
        without_deadlock(coordinator.submit(agent, "limited")).await,
        7
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// An agent in a limited mode hands its work to a tool in another mode, which passes it on to
/// a worker it spawns and ends. The worker, open beneath the agent through the tool that ended,
/// calls back into the limited mode: its tree's place is the agent's, so it does not wait for it
/// while the agent waits for the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_back_in_its_limited_mode_through_a_request_that_ended_shares_its_place() {
    let (publisher, coordinator) = started_from(one_limited_place(Coordinator::builder()));
    let inside = coordinator.clone();
    let agent = Task::from_fn("agent", "agent", move || async move {
        let (in_tool, in_worker) = (inside.clone(), inside.clone());
        let tool = Task::from_fn("tool", "tool", move || async move {
            let worker = Task::from_fn("worker", "worker", move || async move {
                // Once the tool has ended, the worker's nearest open ancestor is the agent.
                while in_worker.job("tool").and_then(|job| job.result()).is_none() {
                    tokio::task::yield_now().await;
                }
                let model = Task::from_fn("model", "model", || async { Ok::<_, BoxError>(7_u32) });
                Ok::<_, BoxError>(in_worker.submit(model, "limited").await?)
            });
            // The work goes on in the worker: the tool hands its handle back and ends.
            Ok::<_, BoxError>(in_tool.spawn(worker, "async", SubmitOptions::new()).await?)
        });
        let worker = inside.submit(tool, "async").await?;
        Ok::<_, BoxError>(worker.await?)
    });
    assert_eq!(
        without_deadlock(coordinator.submit(agent, "limited")).await,
        7
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// An agent in one coordinator's limited mode asks a tool of another coordinator, which calls
/// back into the agent's limited mode. The call's parent (the tool) is open in the other
/// coordinator only: its tree's place is still the agent's, found up through the tool, so it
/// does not wait for it while the agent waits for the tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_back_in_its_limited_mode_through_another_coordinator_shares_its_place() {
    let (px, x) = started_from(one_limited_place(Coordinator::builder()));
    let (py, y) = started();
    let (in_x, in_y) = (x.clone(), y.clone());
    let agent = Task::from_fn("agent", "agent", move || async move {
        let back = in_x.clone();
        let tool = Task::from_fn("tool", "tool", move || async move {
            let model = Task::from_fn("model", "model", || async { Ok::<_, BoxError>(7_u32) });
            Ok::<_, BoxError>(back.submit(model, "limited").await?)
        });
        Ok::<_, BoxError>(in_y.submit(tool, ExecutionMode::ASYNC).await?)
    });
    assert_eq!(without_deadlock(x.submit(agent, "limited")).await, 7);
    y.shutdown().await;
    x.shutdown().await;
    py.shutdown().await;
    px.shutdown().await;
}

/// Runs `submit` in a blocking node whose request times out after `timeout` (it cannot be
/// stopped; `timeout` leaves the node the time to start and to submit), on a coordinator whose
/// "limited" mode has one place, held by another request all along; gives back what `submit`
/// returned, which must come within 30 s, before that place is freed.
async fn beside_a_held_place<T: Send + 'static>(
    timeout: Duration,
    submit: impl FnOnce(&Coordinator) -> T + Send + 'static,
) -> (RequestCompletionPublisher, Coordinator, T) {
    let (publisher, coordinator) =
        started_from(one_limited_place(Coordinator::builder().strategy(
            ExecutionMode::THREADED,
            ThreadedExecutionStrategy::builder().build().unwrap(),
        )));
    let holder = coordinator
        .spawn(
            sleeper("holder", Arc::new(AtomicBool::new(false))),
            "limited",
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    let (sent, submitted) = tokio::sync::oneshot::channel();
    let inside = coordinator.clone();
    let parent = Task::blocking("parent", "parent", move || {
        let _ = sent.send(submit(&inside));
        Ok::<_, BoxError>(())
    });
    let options = SubmitOptions::new().timeout(timeout);
    let timed_out = coordinator
        .submit_with(parent, ExecutionMode::THREADED, options)
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out}");
    let submitted = tokio::time::timeout(Duration::from_secs(30), submitted).await;
    holder.cancel();
    let submitted = submitted.expect("the child waited for the place").unwrap();
    (publisher, coordinator, submitted)
}

/// A blocking node whose request timed out submits a child to a limited mode whose one place
/// another request holds. The child is born cancelled with its parent: it ends at once instead
/// of first waiting for that place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_of_a_timed_out_parent_does_not_wait_for_a_place_it_would_never_use() {
    let (publisher, coordinator, (child, batch)) =
        beside_a_held_place(Duration::from_secs(1), |inside| {
            while inside.job("parent").and_then(|job| job.result()) != Some(JobResult::TimedOut) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let child = value_task("child", 1);
            let one = coordinator::block_on(inside.submit(child, "limited"));
            // A batch from the same node: accepted, every member born cancelled, none busy.
            let tasks = (0..3).map(|i| value_task(&format!("batch-{i}"), i));
            let batch = inside.submit_many(tasks, "limited", SubmitOptions::new());
            (one, batch.map(|batch| coordinator::block_on(batch.all())))
        })
        .await;
    let error = child.unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    let batch = batch.expect("the batch is accepted, not busy");
    assert_eq!(batch.len(), 3);
    for answer in batch {
        let error = answer.unwrap_err();
        assert!(error.is_cancelled(), "{error}");
    }
    assert_eq!(
        coordinator.job("child").and_then(|job| job.result()),
        Some(JobResult::Cancelled)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A blocking node submits a child to a limited mode whose one place another request holds, and
/// the child waits; then the node's request times out. The waiting child stops waiting and ends
/// cancelled with its parent, at once, while the place is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_waiting_for_a_place_ends_when_its_parent_is_cancelled() {
    let (publisher, coordinator, child) = beside_a_held_place(Duration::from_secs(1), |inside| {
        coordinator::block_on(inside.submit(value_task("child", 1), "limited"))
    })
    .await;
    let error = child.unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A parent awaits a child that submits a long grandchild, drops its handle and ends: nothing
/// holds the ended child's record any more. The parent's cancellation still reaches the
/// grandchild (found by the chaos test, `tests/chaos.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_parent_reaches_the_children_of_a_child_that_ended() {
    let (publisher, coordinator) = started();
    let (c, child_ended) = (coordinator.clone(), Arc::new(tokio::sync::Notify::new()));
    let ended = Arc::clone(&child_ended);
    let grandchild_dropped = Arc::new(AtomicBool::new(false));
    let dropped = Arc::clone(&grandchild_dropped);
    let parent = Task::from_fn("parent", "parent", move || async move {
        let c2 = c.clone();
        let child = Task::from_fn("child", "child", move || async move {
            // Submitted from inside the child, its handle dropped: the child ends at once.
            let grandchild = sleeper("grandchild", dropped);
            drop(
                c2.spawn(grandchild, ExecutionMode::ASYNC, SubmitOptions::new())
                    .await?,
            );
            Ok::<_, BoxError>(())
        });
        c.submit(child, ExecutionMode::ASYNC).await?;
        ended.notify_one();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, BoxError>(())
    });
    let handle = coordinator
        .spawn(parent, ExecutionMode::ASYNC, SubmitOptions::new())
        .await
        .unwrap();
    child_ended.notified().await;
    let child = coordinator.job("child").unwrap();
    assert_eq!(child.result(), Some(JobResult::Success));
    handle.cancel();
    assert!(handle.await.unwrap_err().is_cancelled());
    // Cancelled with the tree, at once: the cancellation returned before the handle was answered.
    let grandchild = coordinator.job("grandchild").unwrap();
    assert_eq!(
        grandchild.result(),
        Some(JobResult::Cancelled),
        "{grandchild:?}"
    );
    assert!(
        dropped_soon(&grandchild_dropped).await,
        "the grandchild's node is dropped"
    );
    assert_eq!(coordinator.counts().open, 0);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A node whose copies panic when dropped once one of them has run.
#[derive(Clone)]
struct PanicsWhenDropped(Arc<AtomicBool>);

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if self.0.load(Ordering::SeqCst) && !std::thread::panicking() {
            panic!("a node copy that panics when dropped");
        }
    }
}

impl coordinator::Node for PanicsWhenDropped {
    type Output = u8;

    async fn invoke(self) -> Result<u8, BoxError> {
        let armed = Arc::clone(&self.0);
        // This copy never drops; the one the retry policy keeps does, armed.
        std::mem::forget(self);
        armed.store(true, Ordering::SeqCst);
        Ok(7)
    }
}

/// The copy of a task a retry policy keeps is the user's: when its `Drop` panics as the request
/// ends, the request still ends once, its caller answered and its job closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_copy_that_panics_when_dropped_does_not_keep_its_request_open() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let retried = SubmitOptions::new().retry(RetryPolicy::new(2));
    let bomb = PanicsWhenDropped(Arc::new(AtomicBool::new(false)));
    let answer = coordinator.submit_with(Task::replayable("bomb", bomb), "async", retried);
    let answer = tokio::time::timeout(Duration::from_secs(10), answer).await;
    assert_eq!(answer.expect("the caller is answered").unwrap(), 7);
    assert_eq!(coordinator.counts().open, 0, "{:?}", coordinator.counts());
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().get("bomb"), Some(&1));
}

/// A child of an open request waits for a place of its own in a limited mode; shutdown begins,
/// and the place frees before the waiting submission next runs. It is refused as shut down all
/// the same: during the grace a task needing a place of its own is not accepted, whichever of
/// the two its wait sees first.
#[tokio::test]
async fn a_waiting_child_whose_place_frees_as_shutdown_begins_is_still_refused() {
    let mut accepted = Vec::new();
    for round in 0..32 {
        let (publisher, coordinator) = started_from(one_limited_place(Coordinator::builder()));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let held = Arc::clone(&gate);
        let hog = Task::from_fn("hog", "hog", move || async move {
            let _ = held.acquire().await;
            Ok::<_, BoxError>(())
        });
        let hog = coordinator
            .spawn(hog, "limited", SubmitOptions::new())
            .await
            .unwrap();
        let inside = coordinator.clone();
        let parent = Task::from_fn("parent", "parent", move || async move {
            let child = inside.submit(value_task("child", 1), "limited").await;
            Ok::<_, BoxError>(child.map_err(|error| error.is_shut_down()))
        });
        let parent = coordinator
            .spawn(parent, "async", SubmitOptions::new())
            .await
            .unwrap();
        // The child is waiting for the hog's place.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        assert!(coordinator.job("child").is_none());
        // The place frees and shutdown begins before the waiting child runs again.
        gate.add_permits(1);
        let c = coordinator.clone();
        let shutdown =
            tokio::spawn(async move { c.shutdown_with_grace(Duration::from_secs(60)).await });
        hog.await.unwrap();
        let child = parent.await.unwrap();
        if child.is_ok() {
            accepted.push(round);
        } else {
            assert_eq!(child, Err(true), "refused as shut down");
        }
        shutdown.await.unwrap();
        publisher.shutdown().await;
    }
    assert!(
        accepted.is_empty(),
        "accepted after shutdown began in rounds {accepted:?}"
    );
}
