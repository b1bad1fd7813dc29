//! Launched requests: strategies that run a task by themselves and deliver its outcome through a
//! `Completion`. Whatever the strategy does with it, each request ends exactly once.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, JobResult, RequestCompletionMessage, RequestCompletionPublisher,
    RequestHandle, SubmitOptions, Task, TaskExecutionStrategy, ThreadedExecutionStrategy, Value,
    block_on,
};
use futures::StreamExt;
use support::{Recorder, value_task};
use task_core::{BoxFuture, Completion, ErasedTask, Outcome, TaskError};

/// What a [`Launching`] strategy does with each task it launches.
#[derive(Clone, Copy)]
enum Launch {
    /// Drops the task and its completion at once.
    Drop,
    /// Keeps the completion, to deliver later by hand.
    Hold,
    /// Runs the task on a thread of its own, outside any runtime.
    OnPlainThread,
}

/// A strategy that launches every task and does with it what `how` says.
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
    fn execute(&self, _task: ErasedTask) -> BoxFuture<'_, Outcome> {
        Box::pin(async { Err(TaskError::strategy("every task should have been launched")) })
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn can_launch(&self, _task: &ErasedTask) -> bool {
        true
    }

    fn launch(&self, task: ErasedTask, completion: Completion) {
        match self.how {
            Launch::Drop => {}
            Launch::Hold => self.held.lock().unwrap().push(completion),
            Launch::OnPlainThread => {
                std::thread::spawn(move || {
                    completion.complete(futures::executor::block_on(task.run_inline()));
                });
            }
        }
    }
}

/// A strategy that says it launches but does not implement `launch`.
struct ClaimsToLaunch;

impl TaskExecutionStrategy for ClaimsToLaunch {
    fn execute(&self, task: ErasedTask) -> BoxFuture<'_, Outcome> {
        Box::pin(task.run_inline())
    }

    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn can_launch(&self, _task: &ErasedTask) -> bool {
        true
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

    // A strategy that claims to launch but does not implement it: unsupported, not a hang.
    let (claims_publisher, claims, _) = started_with("claims", Arc::new(ClaimsToLaunch));
    let error = claims
        .submit(value_task("x", 1), "claims")
        .await
        .unwrap_err();
    assert!(error.task_error().unwrap().is_unsupported(), "{error}");

    coordinator.shutdown().await;
    claims.shutdown().await;
    publisher.shutdown().await;
    claims_publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["lost"], 1);
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

/// Runs 50 requests made by `task` on `mode` through a bus with a ring of 2 and a subscriber
/// that reads nothing until every request has run: the outcomes wait for room, none is lost.
async fn outcomes_wait_for_room(
    coordinator: Coordinator,
    publisher: RequestCompletionPublisher,
    mode: &'static str,
    task: impl Fn(usize) -> Task<u64>,
) {
    let mut slow = publisher.subscribe_stream().unwrap();
    coordinator.start(&publisher).unwrap();
    let mut handles = Vec::new();
    for i in 0..50 {
        let handle = coordinator
            .spawn(task(i), mode, SubmitOptions::new())
            .await
            .unwrap();
        handles.push(handle);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        coordinator.counts().opened > 0,
        "outcomes wait for the slow subscriber"
    );
    let reader = tokio::spawn(async move {
        let mut terminal = 0;
        while let Some(message) = slow.next().await {
            terminal += usize::from(message.is_terminal());
        }
        terminal
    });
    for (i, handle) in handles.into_iter().enumerate() {
        assert_eq!(handle.await.unwrap(), i as u64);
    }
    assert_eq!(coordinator.counts().succeeded, 50);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(reader.await.unwrap(), 50, "one terminal message each");
}

fn small_bus() -> RequestCompletionPublisher {
    let publisher = RequestCompletionPublisher::with_capacity(2);
    publisher.start().unwrap();
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launched_outcomes_wait_for_room_when_the_bus_is_full() {
    let coordinator = Coordinator::builder().with_async().build();
    outcomes_wait_for_room(coordinator, small_bus(), "async", |i| {
        value_task(&format!("r{i}"), i as u64)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_finished_off_the_runtime_wait_for_room_on_the_coordinators_runtime() {
    // Its threads belong to no runtime: their full-bus waits run on the one the coordinator
    // was started on.
    let coordinator = Coordinator::builder()
        .strategy("plain", Launching::new(Launch::OnPlainThread))
        .build();
    outcomes_wait_for_room(coordinator, small_bus(), "plain", |i| {
        value_task(&format!("r{i}"), i as u64)
    })
    .await;
}

/// Ten requests on a coordinator whose bus has a ring of 2 and a stream subscriber that reads
/// nothing, every outcome delivered on the runtime this runs on: two went through the bus and
/// their jobs closed, eight wait for room.
struct Backlog {
    publisher: RequestCompletionPublisher,
    coordinator: Coordinator,
    slow: pubsub::Subscription<RequestCompletionMessage>,
    handles: Vec<RequestHandle<u64>>,
}

async fn backlog() -> Backlog {
    let strategy = Arc::new(Launching::new(Launch::Hold));
    let publisher = small_bus();
    let slow = publisher.subscribe_stream().unwrap();
    let coordinator = Coordinator::builder()
        .shared_strategy("held", strategy.clone())
        .build();
    coordinator.start(&publisher).unwrap();
    let mut handles = Vec::new();
    for i in 0..10 {
        let task = value_task(&format!("r{i}"), i);
        handles.push(
            coordinator
                .spawn(task, "held", SubmitOptions::new())
                .await
                .unwrap(),
        );
    }
    let held: Vec<Completion> = strategy.held.lock().unwrap().drain(..).collect();
    for (i, completion) in held.into_iter().enumerate() {
        completion.complete(Ok(Value::new(i as u64)));
    }
    while coordinator.counts().closed < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Backlog {
        publisher,
        coordinator,
        slow,
        handles,
    }
}

#[test]
fn outcomes_waiting_for_room_when_their_runtime_stops_close_their_jobs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backlog = rt.block_on(async {
        let backlog = backlog().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let opened = backlog.coordinator.counts().opened;
        assert_eq!(opened, 8, "eight outcomes wait for room");
        backlog
    });
    // The task publishing the waiting outcomes goes with its runtime: it closes their jobs.
    drop(rt);
    let counts = backlog.coordinator.counts();
    assert_eq!((counts.opened, counts.succeeded), (0, 10));
    for (i, handle) in backlog.handles.into_iter().enumerate() {
        assert_eq!(block_on(handle).unwrap(), i as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_still_queued_when_the_publisher_shuts_down_close_their_jobs_directly() {
    let Backlog {
        publisher,
        coordinator,
        mut slow,
        handles,
    } = backlog().await;
    // The publisher shuts down while the third outcome is being published and seven wait
    // behind it in the coordinator's queue; the slow subscriber reads from then on.
    let shutdown = tokio::spawn({
        let publisher = publisher.clone();
        async move { publisher.shutdown().await }
    });
    while publisher.is_running() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut terminal = Vec::new();
    while let Some(message) = slow.next().await {
        if let (true, Some(id)) = (message.is_terminal(), message.request_id()) {
            terminal.push(id.to_string());
        }
    }
    shutdown.await.unwrap();
    // The publish under way finished; the bus refused the rest, whose jobs closed directly.
    assert_eq!(terminal, ["r0", "r1", "r2"]);
    for (i, handle) in handles.into_iter().enumerate() {
        let value = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("every request ends");
        assert_eq!(value.unwrap(), i as u64);
    }
    let counts = coordinator.counts();
    assert_eq!((counts.opened, counts.succeeded), (0, 10));
    coordinator.shutdown().await;
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
    assert_eq!(
        coordinator.job("child").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!((terminal["parent"], terminal["child"]), (1, 1));
}
