//! A `submit_many` batch under its mode's concurrency limit: accepted whole whatever its size,
//! its tasks run in order as places free, never more at once than the limit.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::{
    Batch, BoxError, Coordinator, ExecutionMode, JobResult, RequestCompletionPublisher,
    SubmitOptions, Task,
};
use support::Recorder;

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}

fn limited(places: usize) -> (RequestCompletionPublisher, Coordinator) {
    let builder = Coordinator::builder().with_async();
    support::started_from(builder.limit(ExecutionMode::ASYNC, places))
}

/// Shuts the coordinator and the bus down, then checks that each of `requests` requests had
/// exactly one terminal message.
async fn shut_down_with_one_message_each(
    publisher: RequestCompletionPublisher,
    coordinator: Coordinator,
    recorder: Recorder,
    requests: usize,
) {
    within("shutdown", coordinator.shutdown()).await;
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!(terminal.len(), requests);
    assert!(terminal.values().all(|&n| n == 1), "{terminal:?}");
}

/// What the tasks of a test saw: how many ran at once at most, and which started, in order.
#[derive(Clone, Default)]
struct Runs {
    running: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    started: Arc<Mutex<Vec<u64>>>,
}

impl Runs {
    /// Task `i` of batch `prefix`: it notes its start, runs for `ms`, and returns `i`.
    fn task(&self, prefix: &str, i: u64, ms: u64) -> Task<u64> {
        let runs = self.clone();
        Task::from_fn(format!("{prefix}{i}"), "counted", move || async move {
            let now = runs.running.fetch_add(1, Ordering::SeqCst) + 1;
            runs.most.fetch_max(now, Ordering::SeqCst);
            runs.started.lock().unwrap().push(i);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            runs.running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(i)
        })
    }

    fn started(&self) -> Vec<u64> {
        self.started.lock().unwrap().clone()
    }
}

/// A task that returns `i` once `gate` has a permit for it.
fn gated(id: &str, i: u64, gate: &Arc<tokio::sync::Semaphore>) -> Task<u64> {
    let gate = Arc::clone(gate);
    Task::from_fn(id.to_string(), "gated", move || async move {
        gate.acquire().await?.forget();
        Ok::<_, BoxError>(i)
    })
}

/// A batch of `n` tasks on a mode limited to one place: `{prefix}0` holds it until the gate
/// returned opens, and `{prefix}1`.. (counted in the `Runs` returned, 1 ms each) wait for it.
fn behind_a_held_place(
    coordinator: &Coordinator,
    prefix: &str,
    n: u64,
) -> (Batch<u64>, Arc<tokio::sync::Semaphore>, Runs) {
    let (gate, runs) = (Arc::new(tokio::sync::Semaphore::new(0)), Runs::default());
    let first = std::iter::once(gated(&format!("{prefix}0"), 0, &gate));
    let tasks = first.chain((1..n).map(|i| runs.task(prefix, i, 1)));
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    (batch.expect("a batch is accepted"), gate, runs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_its_modes_limit_runs_whole_never_more_at_once_than_the_limit() {
    let (publisher, coordinator) = limited(3);
    let runs = Runs::default();
    let tasks = (0..60).map(|i| runs.task("a", i, 2));
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let outputs = within("the batch", batch.unwrap().all()).await;
    let outputs: Vec<u64> = outputs.into_iter().map(Result::unwrap).collect();
    assert_eq!(outputs, (0..60).collect::<Vec<_>>());
    let most = runs.most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} ran at once under a limit of 3");
    let detail = coordinator.system_detail();
    assert_eq!((detail.counts.closed, detail.counts.open), (60, 0));
    within("shutdown", coordinator.shutdown()).await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_for_places_starts_its_tasks_in_order() {
    // One place: a task starts only once the one before it has ended.
    let (publisher, coordinator) = limited(1);
    let runs = Runs::default();
    let tasks = (0..30).map(|i| runs.task("o", i, 1));
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    within("the batch", batch.unwrap().all()).await;
    assert_eq!(runs.started(), (0..30).collect::<Vec<_>>());
    assert_eq!(runs.most.load(Ordering::SeqCst), 1);
    within("shutdown", coordinator.shutdown()).await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_batch_tasks_timeout_counts_from_its_start() {
    // Twenty tasks of 50 ms one at a time take a second; each has 500 ms from its own start.
    let (publisher, coordinator) = limited(1);
    let runs = Runs::default();
    let tasks = (0..20).map(|i| runs.task("t", i, 50));
    let options = SubmitOptions::new().timeout(Duration::from_millis(500));
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, options);
    let outputs = within("the batch", batch.unwrap().all()).await;
    for output in outputs {
        output.expect("no task timed out while it waited for its place");
    }
    within("shutdown", coordinator.shutdown()).await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_task_cancelled_while_it_waits_ends_at_once_and_never_starts() {
    let (publisher, coordinator) = limited(1);
    let recorder = Recorder::attach(&publisher);
    let (batch, gate, runs) = behind_a_held_place(&coordinator, "c", 5);
    let mut handles = batch.into_handles();
    // Waiting for the place `c0` holds: open, and cancelled by its id.
    assert_eq!(coordinator.job("c2").unwrap().result(), None);
    assert!(coordinator.cancel("c2"));
    let cancelled = within("the cancelled task's answer", handles.remove(2)).await;
    assert!(cancelled.unwrap_err().is_cancelled());
    let job = coordinator.job("c2").unwrap();
    assert_eq!(job.result(), Some(JobResult::Cancelled));
    gate.add_permits(1);
    for (handle, i) in handles.into_iter().zip([0, 1, 3, 4]) {
        assert_eq!(within("a task", handle).await.unwrap(), i);
    }
    assert_eq!(
        runs.started(),
        [1, 3, 4],
        "the cancelled task never started"
    );
    shut_down_with_one_message_each(publisher, coordinator, recorder, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_tasks_waiting_when_shutdown_begins_run_within_its_grace() {
    // Accepted work drains: the waiting tasks take their places as they free, in order.
    let (publisher, coordinator) = limited(1);
    let recorder = Recorder::attach(&publisher);
    let (batch, gate, runs) = behind_a_held_place(&coordinator, "s", 4);
    let shutdown = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            coordinator
                .shutdown_with_grace(Duration::from_secs(30))
                .await
        }
    });
    // Shutdown has begun: a new request is refused, the batch's are not.
    while coordinator.is_accepting() {
        tokio::task::yield_now().await;
    }
    let late = coordinator.try_spawn(
        runs.task("late", 9, 1),
        ExecutionMode::ASYNC,
        SubmitOptions::new(),
    );
    assert!(late.unwrap_err().is_shut_down());
    gate.add_permits(1);
    let outputs = within("the batch", batch.all()).await;
    let outputs: Vec<u64> = outputs.into_iter().map(Result::unwrap).collect();
    assert_eq!(outputs, [0, 1, 2, 3]);
    assert_eq!(runs.started(), [1, 2, 3]);
    within("shutdown", shutdown).await.unwrap();
    shut_down_with_one_message_each(publisher, coordinator, recorder, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_tasks_still_waiting_at_the_shutdown_deadline_end_cancelled_never_started() {
    let (publisher, coordinator) = limited(1);
    let recorder = Recorder::attach(&publisher);
    let (batch, _gate, runs) = behind_a_held_place(&coordinator, "d", 4);
    let grace = Duration::from_millis(200);
    within("shutdown", coordinator.shutdown_with_grace(grace)).await;
    for output in within("the batch", batch.all()).await {
        let error = output.unwrap_err();
        assert!(error.is_cancelled(), "{error}");
        assert!(error.to_string().contains("deadline"), "{error}");
    }
    assert!(runs.started().is_empty(), "{:?} started", runs.started());
    shut_down_with_one_message_each(publisher, coordinator, recorder, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_coordinator_ends_the_batch_tasks_waiting_for_a_place() {
    let (publisher, coordinator) = limited(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let tasks = (0..4).map(|i| gated(&format!("d{i}"), i, &gate));
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let handles = batch.unwrap().into_handles();
    drop(coordinator);
    for handle in handles {
        let error = within("an answer", handle).await.unwrap_err();
        assert!(error.to_string().contains("dropped"), "{error}");
    }
    publisher.shutdown().await;
}

#[test]
fn batch_tasks_waiting_when_their_runtime_shuts_down_end_cancelled() {
    let (publisher, coordinator) = limited(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // The one place is held by a request on a runtime that stays.
    let stays = support::runtime(1);
    let holder = stays.block_on(async {
        let holder = gated("holder", 9, &gate);
        coordinator
            .spawn(holder, ExecutionMode::ASYNC, SubmitOptions::new())
            .await
    });
    let goes = support::runtime(1);
    let handles = goes.block_on(async {
        let tasks = (0..3).map(|i| gated(&format!("r{i}"), i, &gate));
        let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
        batch.unwrap().into_handles()
    });
    drop(goes);
    let answers = stays.block_on(within("the answers", futures::future::join_all(handles)));
    for error in answers.into_iter().map(Result::unwrap_err) {
        assert!(error.is_cancelled(), "{error}");
        assert!(error.to_string().contains("runtime"), "{error}");
    }
    gate.add_permits(1);
    let holder = stays.block_on(within("the holder", holder.unwrap()));
    assert_eq!(holder.unwrap(), 9);
    assert_eq!(coordinator.system_detail().counts.open, 0);
    stays.block_on(async {
        within("shutdown", coordinator.shutdown()).await;
        publisher.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_batch_starts_none_of_its_waiting_tasks() {
    // Each round: 4 places held by running tasks, 16 waiting; the batch is cancelled. Ending a
    // running one frees a place: none of the waiting ones may take it.
    for round in 0..20 {
        let (publisher, coordinator) = limited(4);
        let runs = Runs::default();
        let tasks = (0..20).map(|i| runs.task(&format!("b{round}-"), i, 10_000));
        let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
        let batch = batch.unwrap();
        while runs.started().len() < 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        batch.cancel();
        for output in within("the batch", batch.all()).await {
            assert!(output.unwrap_err().is_cancelled());
        }
        // A task started after the cancel would be seen within its first poll.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut started = runs.started();
        started.sort_unstable();
        assert_eq!(started, [0, 1, 2, 3], "round {round}");
        within("shutdown", coordinator.shutdown()).await;
        publisher.shutdown().await;
    }
}

/// A value a task's body keeps that panics when dropped (unless already unwinding): a user's
/// `Drop` written that way.
struct PanicsWhenDropped;

impl Drop for PanicsWhenDropped {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the task's body panics when dropped");
        }
    }
}

/// A task whose body panics when dropped unrun.
fn panics_when_dropped(id: &str) -> Task<u64> {
    let kept = PanicsWhenDropped;
    Task::from_fn(id.to_string(), "drop-panics", move || {
        std::mem::forget(kept);
        async { Ok::<_, BoxError>(1) }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_whose_body_panics_when_dropped_stops_no_other_task_of_its_batch() {
    let (publisher, coordinator) = limited(1);
    let recorder = Recorder::attach(&publisher);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let tasks = [
        gated("p0", 0, &gate),
        panics_when_dropped("p1"),
        gated("p2", 2, &gate),
    ];
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let mut handles = batch.unwrap().into_handles();
    // Cancelled while it waits: its task is let go unrun, and its `Drop` panics.
    assert!(coordinator.cancel("p1"));
    let cancelled = within("the cancelled task", handles.remove(1)).await;
    assert!(cancelled.unwrap_err().is_cancelled());
    gate.add_permits(2);
    assert_eq!(within("p0", handles.remove(0)).await.unwrap(), 0);
    let after = within("p2", handles.remove(0)).await;
    assert_eq!(
        after.unwrap(),
        2,
        "the task after the panicking one still runs"
    );
    shut_down_with_one_message_each(publisher, coordinator, recorder, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_shutdown_deadline_every_waiting_task_ends_though_one_body_panics_when_dropped() {
    let (publisher, coordinator) = limited(1);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let tasks = [
        gated("q0", 0, &gate),
        panics_when_dropped("q1"),
        gated("q2", 2, &gate),
        gated("q3", 3, &gate),
    ];
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let handles = batch.unwrap().into_handles();
    let grace = Duration::from_millis(200);
    within("shutdown", coordinator.shutdown_with_grace(grace)).await;
    for handle in handles {
        let error = within("an answer", handle).await.unwrap_err();
        assert!(error.is_cancelled(), "{error}");
    }
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_cancelled_let_go_of_their_bodies_at_once() {
    // The bodies keep a handle of the coordinator, as a node that submits children does: once
    // they are cancelled, dropping the application's last handle ends what still runs.
    let (publisher, coordinator) = limited(1);
    let forever = Task::from_fn("w0", "forever", || async {
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(0)
    });
    let waiting = (1..4).map(|i| {
        let kept = coordinator.clone();
        Task::from_fn(format!("w{i}"), "keeps", move || async move {
            drop(kept);
            Ok::<_, BoxError>(i)
        })
    });
    let tasks = std::iter::once(forever).chain(waiting);
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let mut handles = batch.unwrap().into_handles();
    let running = handles.remove(0);
    // The batch's driver is waiting for the place `w0` holds by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for handle in &handles {
        handle.cancel();
    }
    for handle in handles {
        let error = within("a cancelled task", handle).await.unwrap_err();
        assert!(error.is_cancelled(), "{error}");
    }
    drop(coordinator);
    let answer = tokio::time::timeout(Duration::from_secs(10), running).await;
    let error = answer
        .expect("the coordinator's last handle went: the running task ends")
        .unwrap_err();
    assert!(error.to_string().contains("dropped"), "{error}");
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_task_cancelled_behind_another_lets_go_of_its_body_at_once() {
    // Only the middle one of three waiting tasks keeps a handle of the coordinator, and only it
    // is cancelled: once it is, dropping the application's last handle ends everything, though
    // the task in front of it still waits.
    let (publisher, coordinator) = limited(1);
    let forever = Task::from_fn("m0", "forever", || async {
        std::future::pending::<()>().await;
        Ok::<_, BoxError>(0)
    });
    let plain = |i: u64| {
        Task::from_fn(format!("m{i}"), "plain", move || async move {
            Ok::<_, BoxError>(i)
        })
    };
    let kept = coordinator.clone();
    let keeps = Task::from_fn("m2", "keeps", move || async move {
        drop(kept);
        Ok::<_, BoxError>(2)
    });
    let tasks = [forever, plain(1), keeps, plain(3)];
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let mut handles = batch.unwrap().into_handles();
    let cancelled = handles.remove(2);
    cancelled.cancel();
    let error = within("the cancelled task", cancelled).await.unwrap_err();
    assert!(error.is_cancelled(), "{error}");
    drop(coordinator);
    for (handle, id) in handles.into_iter().zip(["m0", "m1", "m3"]) {
        let answer = tokio::time::timeout(Duration::from_secs(10), handle).await;
        let error = answer
            .unwrap_or_else(|_| panic!("{id}: the coordinator's last handle went, yet it is open"))
            .unwrap_err();
        assert!(error.to_string().contains("dropped"), "{id}: {error}");
    }
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_a_batch_as_completed_can_cancel_the_rest() {
    // The common reader: the first failure ends the loop, and the rest must not run on.
    let (publisher, coordinator) = limited(2);
    let runs = Runs::default();
    let failing = Task::from_fn("f0", "fails", || async {
        Err::<u64, _>(BoxError::from("no"))
    });
    let rest = (1..10).map(|i| runs.task("f", i, 10_000));
    let tasks = std::iter::once(failing).chain(rest);
    let batch = coordinator.submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new());
    let mut outputs = batch.unwrap().as_completed();
    let read = async {
        while let Some((i, output)) = futures::StreamExt::next(&mut outputs).await {
            if output.is_err() {
                return i;
            }
        }
        usize::MAX
    };
    assert_eq!(within("the failure", read).await, 0);
    outputs.cancel();
    let rest: Vec<_> = within("the rest", futures::StreamExt::collect::<Vec<_>>(outputs)).await;
    assert_eq!(rest.len(), 9);
    assert!(
        rest.iter()
            .all(|(_, o)| o.as_ref().unwrap_err().is_cancelled())
    );
    // At most the one place the failure freed was taken before the cancel.
    assert!(runs.started().len() <= 2, "{:?} started", runs.started());
    within("shutdown", coordinator.shutdown()).await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_requests_waiting_for_a_place_are_counted_apart_from_those_in_flight() {
    let (publisher, coordinator) = limited(1);
    let waiting = |coordinator: &Coordinator| {
        let counts = coordinator.system_detail().requests["async"];
        (counts.in_flight, counts.waiting)
    };
    let (batch, gate, _runs) = behind_a_held_place(&coordinator, "w", 5);
    // Accepted whole: one holds the place, four wait for it.
    assert_eq!(waiting(&coordinator), (5, 4));
    assert!(coordinator.cancel("w2"));
    within("the cancelled request to leave the queue", async {
        while waiting(&coordinator) != (4, 3) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    gate.add_permits(1);
    within("the batch", batch.all()).await;
    assert_eq!(waiting(&coordinator), (0, 0));
    within("shutdown", coordinator.shutdown()).await;
    publisher.shutdown().await;
}

/// `cancel` reaches a `spawn` (or `submit`) still waiting for a place under the limit, which
/// is not recorded yet: it returns cancelled at once, its node never runs, nothing is recorded
/// or published, and the place goes to the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_a_submission_waiting_for_a_place() {
    let (publisher, coordinator) = limited(1);
    let recorder = Recorder::attach(&publisher);
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let holder = coordinator
        .try_spawn(
            gated("holder", 0, &gate),
            ExecutionMode::ASYNC,
            SubmitOptions::new(),
        )
        .unwrap();
    let ran = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&ran);
    let queued = Task::from_fn("queued", "charge-card", move || async move {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok::<_, BoxError>(1_u64)
    });
    let c = coordinator.clone();
    let waiting = tokio::spawn(async move {
        c.spawn(queued, ExecutionMode::ASYNC, SubmitOptions::new())
            .await
    });
    // Once it waits, `cancel` finds it.
    within("the submission to wait", async {
        while !coordinator.cancel("queued") {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let error = within("the cancelled submission", waiting)
        .await
        .unwrap()
        .unwrap_err();
    assert!(error.is_cancelled() && error.is_rejected(), "{error}");
    assert!(coordinator.job("queued").is_none(), "nothing recorded");
    assert!(!coordinator.cancel("queued"), "nothing left to cancel");
    gate.add_permits(1);
    assert_eq!(within("the holder", holder).await.unwrap(), 0);
    let again = Task::from_fn("queued", "charge-card", || async {
        Ok::<_, BoxError>(2_u64)
    });
    let again = coordinator.submit(again, ExecutionMode::ASYNC);
    assert_eq!(within("the next request", again).await.unwrap(), 2);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "the cancelled node never ran"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().get("queued"), Some(&1));
}

/// `cancel` that comes once the place was handed to a waiting `spawn` but before that wait saw
/// it: the cancellation wins, the node never runs, and the place goes back to the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_wins_over_a_place_handed_to_a_waiting_submission_not_yet_polled() {
    let (publisher, coordinator) = limited(1);
    for round in 0..20 {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let holder = gated(&format!("holder-{round}"), 0, &gate);
        let holder =
            (coordinator.try_spawn(holder, ExecutionMode::ASYNC, SubmitOptions::new())).unwrap();
        let id = format!("queued-{round}");
        let ran = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&ran);
        let queued = Task::from_fn(id.clone(), "charge-card", move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(1_u64)
        });
        // Polled once: it waits for the place, then is not polled until after the cancel.
        let mut waiting =
            Box::pin(coordinator.spawn(queued, ExecutionMode::ASYNC, SubmitOptions::new()));
        let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll(noop).is_pending(), "it waits");
        gate.add_permits(1);
        assert_eq!(within("the holder", holder).await.unwrap(), 0);
        assert!(coordinator.cancel(&id), "the waiting submission is found");
        let error = within("the cancelled submission", waiting)
            .await
            .unwrap_err();
        assert!(error.is_cancelled(), "{error}");
        assert!(coordinator.job(&id).is_none(), "nothing recorded");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the node never ran");
    }
    // The places went back: the next request runs at once.
    let next = Task::from_fn("next", "next", || async { Ok::<_, BoxError>(5_u64) });
    let next = coordinator.try_spawn(next, ExecutionMode::ASYNC, SubmitOptions::new());
    assert_eq!(within("the next request", next.unwrap()).await.unwrap(), 5);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
