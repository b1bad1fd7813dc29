//! The completion a strategy is handed: whatever the strategy does with it (drops it, holds it,
//! delivers from a thread of no runtime, panics), each request ends exactly once.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, JobResult, RequestCompletionPublisher, RequestHandle, SubmitOptions,
    Task, TaskExecutionStrategy, ThreadedExecutionStrategy, Value, block_on,
};
use support::{Recorder, started, value_task};
use task_core::{BoxFuture, Completion, ErasedTask};

/// What a [`Launching`] strategy does with each task it launches.
#[derive(Clone, Copy)]
enum Launch {
    /// Drops the task and its completion at once.
    Drop,
    /// Keeps the completion, to deliver later by hand.
    Hold,
    /// Runs the task on a thread of its own, outside any runtime.
    OnPlainThread,
    /// Panics in `execute`.
    Panic,
}

/// A strategy that does with each task what `how` says.
struct Launching {
    how: Launch,
    held: Mutex<Vec<Completion>>,
}

impl Launching {
    fn new(how: Launch) -> Self {
        Self {
            how,
            held: Mutex::default(),
        }
    }
}

impl TaskExecutionStrategy for Launching {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        match self.how {
            Launch::Drop => {}
            Launch::Hold => self.held.lock().unwrap().push(completion),
            Launch::OnPlainThread => {
                std::thread::spawn(move || {
                    completion.complete(futures::executor::block_on(task.run_inline()));
                });
            }
            Launch::Panic => panic!("the strategy broke"),
        }
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn started_with(
    mode: &'static str,
    strategy: Arc<dyn TaskExecutionStrategy>,
) -> (RequestCompletionPublisher, Coordinator, Recorder) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let recorder = Recorder::attach(&publisher);
    let coordinator = Coordinator::builder()
        .shared_strategy(mode, strategy)
        .build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator, recorder)
}

/// A coordinator whose "held" mode keeps every completion, and a request `id` spawned on it.
async fn spawned_and_held(
    id: &str,
) -> (
    Arc<Launching>,
    RequestCompletionPublisher,
    Coordinator,
    Recorder,
    RequestHandle<u64>,
) {
    let strategy = Arc::new(Launching::new(Launch::Hold));
    let (publisher, coordinator, recorder) = started_with("held", strategy.clone());
    let handle = coordinator
        .spawn(value_task(id, 1), "held", SubmitOptions::new())
        .await
        .unwrap();
    (strategy, publisher, coordinator, recorder, handle)
}

#[tokio::test]
async fn a_launched_task_whose_completion_is_dropped_fails_instead_of_hanging() {
    let (publisher, coordinator, recorder) =
        started_with("drops", Arc::new(Launching::new(Launch::Drop)));
    let error = coordinator
        .submit(value_task("lost", 1), "drops")
        .await
        .unwrap_err();
    let error = error.task_error().expect("a failure, not a rejection");
    assert!(error.is_strategy_error(), "{error}");
    assert!(error.to_string().contains("without an outcome"), "{error}");
    assert_eq!(
        coordinator.job("lost").unwrap().result(),
        Some(JobResult::Failure)
    );

    // A strategy that panics in `execute`: a failure, not a panic of the caller nor a hang.
    let (panics_publisher, panics, panics_recorder) =
        started_with("panics", Arc::new(Launching::new(Launch::Panic)));
    let error = panics
        .submit(value_task("x", 1), "panics")
        .await
        .unwrap_err();
    assert!(error.task_error().unwrap().is_strategy_error(), "{error}");
    assert!(
        error.to_string().contains("the strategy panicked"),
        "{error}"
    );

    coordinator.shutdown().await;
    panics.shutdown().await;
    publisher.shutdown().await;
    panics_publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["lost"], 1);
    assert_eq!(panics_recorder.terminal_counts()["x"], 1);
}

#[tokio::test]
async fn an_outcome_delivered_after_cancellation_is_ignored() {
    let (strategy, publisher, coordinator, recorder, handle) = spawned_and_held("held").await;
    assert!(
        coordinator.job("held").unwrap().result().is_none(),
        "still open"
    );
    handle.cancel();
    // Answered at once, though the strategy has not delivered anything.
    assert!(handle.await.unwrap_err().is_cancelled());
    assert_eq!(
        coordinator.job("held").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    // The run ends later with a value: nothing changes.
    let completion = strategy.held.lock().unwrap().pop().unwrap();
    assert!(completion.is_cancelled());
    completion.complete(Ok(Value::new(1_u64)));
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["held"], 1);
    let counts = coordinator.counts();
    assert_eq!((counts.cancelled, counts.succeeded), (1, 0));
}

#[tokio::test]
async fn an_outcome_delivered_by_hand_closes_the_job_and_answers_the_caller() {
    let (strategy, publisher, coordinator, recorder, handle) = spawned_and_held("h").await;
    let completion = strategy.held.lock().unwrap().pop().unwrap();
    assert!(!completion.is_cancelled());
    completion.complete(Ok(Value::new(7_u64)));
    assert_eq!(handle.await.unwrap(), 7);
    assert_eq!(
        coordinator.job("h").unwrap().result(),
        Some(JobResult::Success)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["h"], 1);
}

/// An output of another type than its typed caller's fails the request, job and caller alike,
/// and the terminal message says so.
#[tokio::test]
async fn an_output_of_the_wrong_type_fails_job_and_caller_alike() {
    let (strategy, publisher, coordinator, recorder, handle) = spawned_and_held("w").await;
    let completion = strategy.held.lock().unwrap().pop().unwrap();
    completion.complete(Ok(Value::new("text")));
    let error = handle.await.unwrap_err();
    let job = coordinator.job("w").unwrap();
    assert_eq!(job.result(), Some(JobResult::Failure));
    let said = job.error().map(|e| e.message().to_owned());
    assert_eq!(said.as_deref(), Some("expected a u64 result, got \"text\""));
    assert!(
        error.to_string().contains("expected a u64 result"),
        "{error}"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["w"], 1);
}

/// An output whose `Debug` and `Drop` panic (user code).
struct Hostile;

impl std::fmt::Debug for Hostile {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("Debug of an output")
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("Drop of an output");
        }
    }
}

/// The same when that output's `Debug` and `Drop` panic: the request still ends, once.
#[tokio::test]
async fn an_output_of_the_wrong_type_that_panics_when_shown_or_dropped_still_ends_its_request() {
    let (strategy, publisher, coordinator, recorder, handle) = spawned_and_held("p").await;
    let completion = strategy.held.lock().unwrap().pop().unwrap();
    completion.complete(Ok(Value::new(Hostile)));
    let error = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the caller is answered")
        .unwrap_err();
    assert!(
        error.to_string().contains("expected a u64 result"),
        "{error}"
    );
    assert_eq!(
        coordinator.job("p").unwrap().result(),
        Some(JobResult::Failure)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["p"], 1);
}

#[tokio::test]
async fn an_outcome_delivered_from_a_thread_of_no_runtime_ends_the_request() {
    let (publisher, coordinator, recorder) =
        started_with("plain", Arc::new(Launching::new(Launch::OnPlainThread)));
    let handles: Vec<_> = (0..50)
        .map(|i| {
            coordinator.try_spawn(
                value_task(&format!("p{i}"), i),
                "plain",
                SubmitOptions::new(),
            )
        })
        .collect::<Result<_, _>>()
        .unwrap();
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i as u64);
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!(terminal.len(), 50);
    assert!(terminal.values().all(|&n| n == 1));
}

/// A coordinator whose "threaded" mode has a pool of one thread.
fn started_on_one_thread() -> (RequestCompletionPublisher, Coordinator, Recorder) {
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(1)
        .build()
        .unwrap();
    started_with("threaded", Arc::new(threaded))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threaded_task_cancelled_while_queued_never_starts() {
    let (publisher, coordinator, recorder) = started_on_one_thread();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let busy = Task::blocking("busy", "busy", move || wait.recv().map_err(BoxError::from));
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    let queued = Task::blocking("queued", "queued", move || {
        flag.store(true, Ordering::SeqCst);
        Ok::<_, BoxError>(())
    });
    let busy = coordinator
        .spawn(busy, "threaded", SubmitOptions::new())
        .await
        .unwrap();
    let queued = coordinator
        .spawn(queued, "threaded", SubmitOptions::new())
        .await
        .unwrap();
    queued.cancel();
    assert!(queued.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    busy.await.unwrap();
    // The one thread is free again and has passed the cancelled task by.
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert!(!ran.load(Ordering::SeqCst), "a cancelled task never starts");
    assert_eq!(recorder.terminal_counts()["queued"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_submitted_after_its_parent_was_cancelled_is_born_cancelled() {
    let (publisher, coordinator, recorder) = started_on_one_thread();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (report, child_error) = tokio::sync::oneshot::channel();
    let (running, started) = tokio::sync::oneshot::channel();
    let c = coordinator.clone();
    // A blocking parent cannot be stopped; it goes on after its cancellation and submits.
    let parent = Task::blocking("parent", "parent", move || {
        let _ = running.send(());
        wait.recv()?;
        let child = Task::blocking("child", "child", || Ok::<_, BoxError>(1_u64));
        let outcome = block_on(c.submit(child, "threaded"));
        let _ = report.send(outcome);
        Ok::<_, BoxError>(())
    });
    let parent = coordinator
        .spawn(parent, "threaded", SubmitOptions::new())
        .await
        .unwrap();
    started.await.unwrap();
    parent.cancel();
    assert!(parent.await.unwrap_err().is_cancelled());
    release.send(()).unwrap();
    let error = child_error.await.unwrap().unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    let message = error.to_string();
    assert!(
        message.starts_with("request `child`: the request was cancelled with its parent"),
        "{message}"
    );
    assert_eq!(
        coordinator.job("child").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!((terminal["parent"], terminal["child"]), (1, 1));
}

#[tokio::test]
async fn dropping_every_handle_of_a_coordinator_releases_its_strategies_and_answers_its_callers() {
    let strategy = Arc::new(Launching::new(Launch::Hold));
    let released = Arc::downgrade(&strategy);
    let (publisher, coordinator, recorder) = started_with("held", strategy);
    let handle = coordinator
        .spawn(value_task("open", 1), "held", SubmitOptions::new())
        .await
        .unwrap();
    // Dropped without shutdown, with a request still open in its strategy: the request is
    // ended on the coordinator's runtime, and the coordinator released after it.
    drop(coordinator);
    let error = handle.await.unwrap_err();
    assert!(error.task_error().unwrap().is_strategy_error(), "{error}");
    assert!(
        error.to_string().contains("the coordinator was dropped"),
        "{error}"
    );
    // Released by the thread that ended the request, once it has answered and announced it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while released.upgrade().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the strategy (and whatever threads or processes it owns) is released"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The request still has its one terminal message.
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["open"], 1);
}

/// Parents that handle their child's failure, open with their children when the coordinator is
/// dropped: each parent ends failed as the drop says, never as a success made of its child's
/// failure (every open request is marked before any of them ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_coordinators_parents_never_end_on_their_childs_failure() {
    const PARENTS: usize = 1_000;
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    for i in 0..PARENTS {
        let (give, child_handle) = tokio::sync::oneshot::channel::<RequestHandle<()>>();
        let parent = Task::from_fn(format!("parent-{i}"), "parent", move || async move {
            // The failure is handled: the parent succeeds whatever its child did.
            let _ = child_handle.await?.await;
            Ok::<_, BoxError>(())
        });
        let node = parent.node_id().clone();
        let options = SubmitOptions::new;
        drop(coordinator.try_spawn(parent, "async", options()).unwrap());
        let child = Task::from_fn(format!("child-{i}"), "child", || async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        let child = coordinator.try_spawn(child.with_parent(node), "async", options());
        give.send(child.unwrap()).unwrap();
    }
    while coordinator.counts().open < 2 * PARENTS as u64 {
        tokio::task::yield_now().await;
    }
    drop(coordinator);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while recorder.terminal_counts().len() < 2 * PARENTS {
        assert!(std::time::Instant::now() < deadline, "every request ends");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publisher.shutdown().await;
    let succeeded = recorder
        .messages()
        .iter()
        .filter(|m| matches!(m, coordinator::RequestCompletionMessage::Success(_)))
        .count();
    assert_eq!(succeeded, 0, "parents that ended as a success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_request_open_when_its_coordinator_is_dropped_stops_and_is_announced() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    /// Set when the node's future is dropped: its run stopped.
    struct Stopped(Arc<AtomicBool>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let stopped = Arc::new(AtomicBool::new(false));
    let guard = Stopped(Arc::clone(&stopped));
    let slow = Task::from_fn("slow", "slow", move || async move {
        let _guard = guard;
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(())
    });
    let handle = coordinator
        .spawn(slow, "async", SubmitOptions::new())
        .await
        .unwrap();
    drop(coordinator);
    let error = handle.await.unwrap_err();
    assert!(
        error.to_string().contains("the coordinator was dropped"),
        "{error}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !stopped.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert!(stopped.load(Ordering::SeqCst), "the node's run was stopped");
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["slow"], 1);
}

/// Requests ending on their own while the coordinator's last handle is dropped: each still has
/// exactly one terminal message, whichever ends it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_ending_while_the_coordinator_is_dropped_each_have_one_terminal_message() {
    const N: usize = 2_000;
    for round in 0..5 {
        let (publisher, coordinator) = started();
        let recorder = Recorder::attach(&publisher);
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut handles = Vec::with_capacity(N);
        for i in 0..N {
            let gate = Arc::clone(&gate);
            let task = Task::from_fn(format!("r{i}"), "gated", move || async move {
                gate.notified().await;
                Ok::<_, BoxError>(i)
            });
            handles.push(
                coordinator
                    .spawn(task, "async", SubmitOptions::new())
                    .await
                    .unwrap(),
            );
        }
        // Let every node reach its gate, then release them all and drop the coordinator while
        // they end.
        tokio::task::yield_now().await;
        while coordinator.counts().open < N as u64 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        drop(coordinator);
        for handle in handles {
            let _ = handle.await;
        }
        publisher.shutdown().await;
        let counts = recorder.terminal_counts();
        let missing = (0..N)
            .filter(|i| !counts.contains_key(&format!("r{i}")))
            .count();
        let twice = counts.values().filter(|&&n| n > 1).count();
        assert_eq!((missing, twice), (0, 0), "round {round}");
    }
}

/// A request ended because its coordinator was dropped has its children cancelled, in whatever
/// coordinator they run; and it is ended on the coordinator's runtime, not under the locks of
/// the thread that let the last handle go: here the child's coordinator's table lock, which
/// cancelling the child takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_coordinators_requests_cancel_their_children_elsewhere_without_deadlock() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let (a, b) = (
        Coordinator::builder().with_async().build(),
        Coordinator::builder().with_async().build(),
    );
    a.start(&publisher).unwrap();
    b.start(&publisher).unwrap();
    let on_b = b.clone();
    let parent = Task::from_fn("parent", "parent", move || async move {
        let child = Task::from_fn("child", "child", || async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        on_b.submit(child, "async").await?;
        Ok::<_, BoxError>(())
    });
    let handle = a
        .spawn(parent, "async", SubmitOptions::new())
        .await
        .unwrap();
    while b.counts().open < 1 {
        tokio::task::yield_now().await;
    }
    let (b2, (done, returned)) = (b.clone(), std::sync::mpsc::channel());
    std::thread::spawn(move || {
        let open = b2.with_state(move |state| {
            drop(a);
            state.counts().open
        });
        let _ = done.send(open);
    });
    let open = returned
        .recv_timeout(Duration::from_secs(30))
        .expect("with_state returned");
    assert_eq!(open, 1);
    assert!(handle.await.is_err());
    let start = std::time::Instant::now();
    while b.counts().open > 0 && start.elapsed() < Duration::from_secs(30) {
        tokio::task::yield_now().await;
    }
    assert_eq!(b.job("child").unwrap().result(), Some(JobResult::Cancelled));
    b.shutdown().await;
    publisher.shutdown().await;
}

/// A node that captured the last handle lets it go, and returns later: its own outcome stands
/// (the coordinator stays whole until then); the other open requests end failed, announced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_letting_the_last_handle_go_keeps_its_own_outcome() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let gate = Arc::new(tokio::sync::Notify::new());
    let (inside, opened) = (coordinator.clone(), Arc::clone(&gate));
    let own = Task::from_fn("own", "own", move || async move {
        opened.notified().await;
        drop(inside);
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, BoxError>(42_u64)
    });
    let own = coordinator
        .spawn(own, "async", SubmitOptions::new())
        .await
        .unwrap();
    let other = Task::from_fn("other", "other", || async {
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(0_u64)
    });
    let other = coordinator
        .spawn(other, "async", SubmitOptions::new())
        .await
        .unwrap();
    while coordinator.counts().open < 2 {
        tokio::task::yield_now().await;
    }
    // The node's clone is the last handle now.
    drop(coordinator);
    gate.notify_one();
    assert_eq!(own.await.unwrap(), 42);
    let error = other.await.unwrap_err();
    assert!(
        error.to_string().contains("the coordinator was dropped"),
        "{error}"
    );
    publisher.shutdown().await;
    let counts = recorder.terminal_counts();
    assert_eq!((counts["own"], counts["other"]), (1, 1));
}

/// On a runtime of its own, spawns a request that never ends on `coordinator`, drops that last
/// handle, and checks that the caller is answered: the coordinator was dropped.
fn a_request_open_at_the_last_drop_is_answered(coordinator: Coordinator) {
    let working = tokio::runtime::Runtime::new().unwrap();
    working.block_on(async move {
        let slow = Task::from_fn("slow", "slow", || async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        let options = SubmitOptions::new();
        let handle = coordinator.spawn(slow, "async", options).await.unwrap();
        drop(coordinator);
        let answer = tokio::time::timeout(Duration::from_secs(10), handle).await;
        let error = answer.expect("the caller is answered").unwrap_err();
        let said = error.to_string();
        assert!(said.contains("the coordinator was dropped"), "{said}");
    });
}

/// The runtime the coordinator was started on has shut down when its last handle goes: the
/// request open on another runtime still ends, answered and announced once.
#[test]
fn a_request_open_when_the_coordinator_is_dropped_after_its_runtime_ends_announced() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let recorder = Recorder::attach(&publisher);
    let coordinator = Coordinator::builder().with_async().build();
    let first = tokio::runtime::Runtime::new().unwrap();
    first.block_on(async { coordinator.start(&publisher).unwrap() });
    drop(first);
    a_request_open_at_the_last_drop_is_answered(coordinator);
    let last = tokio::runtime::Runtime::new().unwrap();
    last.block_on(publisher.shutdown());
    assert_eq!(recorder.terminal_counts()["slow"], 1);
}

/// The runtime the coordinator was started on is alive but nobody drives it when the last
/// handle goes: the request open on another runtime still ends at once.
#[test]
fn a_request_open_when_the_coordinator_is_dropped_ends_while_its_start_runtime_idles() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().with_async().build();
    let mut idle = tokio::runtime::Builder::new_current_thread();
    let idle = idle.enable_all().build().unwrap();
    idle.block_on(async { coordinator.start(&publisher).unwrap() });
    a_request_open_at_the_last_drop_is_answered(coordinator);
    drop(idle);
}

/// The last handle is dropped inside a current-thread runtime that then never runs again, or
/// that then blocks its thread waiting for the open request: either way the request ends.
#[test]
fn a_request_open_when_the_last_handle_goes_ends_whatever_the_dropping_runtime_does() {
    for then_block in [false, true] {
        let (publisher, coordinator) = started();
        let working = tokio::runtime::Runtime::new().unwrap();
        let never = Task::from_fn("never", "never", || async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        let handle = coordinator.spawn(never, "async", SubmitOptions::new());
        let mut handle = Some(working.block_on(handle).unwrap());
        let mut dropping = tokio::runtime::Builder::new_current_thread();
        let dropping = dropping.enable_all().build().unwrap();
        let answered = dropping.block_on(async {
            drop(coordinator);
            // Blocks this runtime's only thread until the request ends.
            let blocking = then_block.then(|| handle.take()).flatten();
            blocking.map(futures::executor::block_on)
        });
        let answered = match (answered, handle) {
            (Some(answered), _) => answered,
            // This runtime never runs again: the caller waits elsewhere.
            (None, handle) => working.block_on(async {
                let handle = tokio::time::timeout(Duration::from_secs(10), handle.unwrap());
                handle.await.expect("the caller is answered")
            }),
        };
        let said = answered.unwrap_err().to_string();
        assert!(said.contains("the coordinator was dropped"), "{said}");
        working.block_on(publisher.shutdown());
        drop(dropping);
    }
}

/// Following the openings keeps nothing alive: the last handle's drop releases the strategies
/// while a follower's guard lives.
#[tokio::test]
async fn an_openings_follower_does_not_keep_a_dropped_coordinator() {
    let strategy = Arc::new(Launching::new(Launch::Drop));
    let released = Arc::downgrade(&strategy);
    let (publisher, coordinator, _recorder) = started_with("dropping", strategy);
    let follower = coordinator.follow_openings();
    drop(coordinator);
    assert!(released.upgrade().is_none(), "the strategy was released");
    drop(follower);
    publisher.shutdown().await;
}

/// When the caller of a cancelled request is answered, every request of its tree is cancelled
/// already: a strategy about to start a child (a queued task, checking its completion first)
/// never starts it after the parent's caller heard of the cancellation (found by the chaos
/// test, `tests/chaos.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_parents_children_are_cancelled_before_its_caller_is_answered() {
    struct CheckOnWake {
        strategy: Arc<Launching>,
        child_cancelled: AtomicBool,
        woken: AtomicBool,
    }
    impl std::task::Wake for CheckOnWake {
        fn wake(self: Arc<Self>) {
            // Runs as the parent's caller is answered.
            let held = self.strategy.held.lock().unwrap();
            self.child_cancelled
                .store(held[1].is_cancelled(), Ordering::SeqCst);
            self.woken.store(true, Ordering::SeqCst);
        }
    }
    let strategy = Arc::new(Launching::new(Launch::Hold));
    let (publisher, coordinator, _recorder) = started_with("held", strategy.clone());
    let parent = value_task("parent", 1);
    let parent_node = parent.node_id().clone();
    let mut parent = coordinator
        .spawn(parent, "held", SubmitOptions::new())
        .await
        .unwrap();
    // Its child, named from outside its scope.
    let child = value_task("child", 2).with_parent(parent_node);
    let child = coordinator
        .spawn(child, "held", SubmitOptions::new())
        .await
        .unwrap();
    assert_eq!(strategy.held.lock().unwrap().len(), 2);
    let check = Arc::new(CheckOnWake {
        strategy: Arc::clone(&strategy),
        child_cancelled: AtomicBool::new(false),
        woken: AtomicBool::new(false),
    });
    let waker = std::task::Waker::from(Arc::clone(&check));
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(std::pin::Pin::new(&mut parent).poll(&mut cx).is_pending());
    parent.cancel();
    assert!(
        check.woken.load(Ordering::SeqCst),
        "answered as it was cancelled"
    );
    assert!(
        check.child_cancelled.load(Ordering::SeqCst),
        "the child was not cancelled yet when its parent's caller was answered"
    );
    assert!(parent.await.unwrap_err().is_cancelled());
    assert!(child.await.unwrap_err().is_cancelled());
    assert_eq!(coordinator.counts().cancelled, 2);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
