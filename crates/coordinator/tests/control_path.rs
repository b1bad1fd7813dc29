//! The control path: the coordinator closes its own jobs and answers its own callers; the bus is
//! for observers, and no observer, however slow, stuck or broken, holds anything up.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, RequestCompletionMessage,
    RequestCompletionPublisher, RequestSuccess, RetryPolicy, SubmitOptions, Task,
    ThreadedExecutionStrategy, Value,
};
use futures::StreamExt;
use support::{Recorder, value_task};

const REQUESTS: u64 = 10_000;

/// A task that returns `value` once its gate (the second part) is given a permit.
fn gated(id: &str, value: u64) -> (Task<u64>, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let task = Task::from_fn(id.to_string(), "waits", move || async move {
        held.acquire().await?.forget();
        Ok::<_, BoxError>(value)
    });
    (task, gate)
}

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

/// 10,000 requests with a timeout, beside whatever subscriber `attach` adds: every caller gets
/// its value, every job closes, and both shutdowns return.
async fn ten_thousand_beside<K>(attach: impl FnOnce(&RequestCompletionPublisher) -> K) -> K {
    ten_thousand_beside_until(attach, || true).await
}

/// The same, shutting down once `settled` says the subscriber has seen what the test needs (a
/// subscriber's shutdown grace is short, and a slow one is not waited for).
async fn ten_thousand_beside_until<K>(
    attach: impl FnOnce(&RequestCompletionPublisher) -> K,
    settled: impl Fn() -> bool,
) -> K {
    let publisher = RequestCompletionPublisher::with_capacity(16);
    publisher.start().unwrap();
    let keep = attach(&publisher);
    let coordinator = Coordinator::builder().with_async().build();
    coordinator.start(&publisher).unwrap();
    let options = SubmitOptions::new().timeout(Duration::from_secs(30));
    let handles: Vec<_> = (0..REQUESTS)
        .map(|i| {
            coordinator
                .try_spawn(
                    value_task(&format!("r{i}"), i),
                    ExecutionMode::ASYNC,
                    options.clone(),
                )
                .unwrap()
        })
        .collect();
    within("the answers", async {
        for (i, handle) in handles.into_iter().enumerate() {
            assert_eq!(handle.await.unwrap(), i as u64);
        }
    })
    .await;
    let counts = coordinator.counts();
    assert_eq!((counts.succeeded, counts.open), (REQUESTS, 0));
    within("the subscriber's settling", async {
        while !settled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within("the coordinator's shutdown", coordinator.shutdown()).await;
    within(
        "the publisher's shutdown",
        publisher.shutdown_with_grace(Duration::from_millis(100)),
    )
    .await;
    keep
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_stream_holds_nothing_up_and_is_told_what_it_missed() {
    let mut unread = ten_thousand_beside(|publisher| publisher.subscribe_stream().unwrap()).await;
    let first = unread.next().await.expect("the stream has items");
    let missed = first.expect_err("a whole buffer behind: told first");
    let mut read = 0_u64;
    while let Some(item) = unread.next().await {
        item.expect("one report, then messages");
        read += 1;
    }
    assert_eq!(
        missed.count() + read,
        REQUESTS,
        "every message read or counted as missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_that_never_returns_holds_nothing_up() {
    let (never, stuck) = std::sync::mpsc::channel::<()>();
    let stuck = std::sync::Mutex::new(stuck);
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    ten_thousand_beside(move |publisher| {
        publisher
            .subscribe(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                // Blocks until the test ends.
                let _ = stuck.lock().unwrap().recv();
            })
            .unwrap()
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "stuck in its first call");
    drop(never);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_callback_holds_nothing_up() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    // Called again after it panicked (its first call may take long: the panic hook prints a
    // backtrace).
    let called_again = || calls.load(Ordering::SeqCst) > 1;
    ten_thousand_beside_until(
        move |publisher| {
            publisher
                .subscribe(move |_| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    panic!("the observer broke");
                })
                .unwrap()
        },
        called_again,
    )
    .await;
}

/// An output that calls the bus as it is dropped.
#[derive(Debug)]
struct CallsTheBus(RequestCompletionPublisher);

impl Drop for CallsTheBus {
    fn drop(&mut self) {
        std::hint::black_box(self.0.lags());
    }
}

/// What `scenario` gives, run on a 2-worker runtime of its own (a failing run may leave its
/// threads stuck on the publisher's lock), or an error when it takes over 60 s.
fn on_a_runtime_of_its_own<T: Send + 'static>(
    scenario: impl Future<Output = T> + Send + 'static,
) -> Result<T, std::sync::mpsc::RecvTimeoutError> {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        let rt = rt.worker_threads(2).enable_all().build().unwrap();
        let _ = done.send(rt.block_on(scenario));
    });
    finished.recv_timeout(Duration::from_secs(60))
}

#[test]
fn a_shared_output_whose_drop_calls_the_bus_holds_nothing_up_beside_an_unread_stream() {
    let finished = on_a_runtime_of_its_own(async {
        let publisher = RequestCompletionPublisher::with_capacity(16);
        publisher.start().unwrap();
        // Each message overwritten on its ring holds the last reference to an output the caller
        // let go of: the publish that overwrites it drops it.
        let _unread = publisher.subscribe_stream().unwrap();
        let coordinator = Coordinator::builder().with_async().build();
        coordinator.start(&publisher).unwrap();
        for i in 0..100 {
            let bus = publisher.clone();
            let shares = move || async move { Ok::<_, BoxError>(CallsTheBus(bus)) };
            let task = Task::from_fn(format!("s{i}"), "shares", shares);
            let shared = coordinator.submit_shared(task, ExecutionMode::ASYNC).await;
            drop(shared.unwrap());
        }
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
    assert!(
        finished.is_ok(),
        "the submits and the shutdowns did not finish"
    );
}

/// An output whose drop waits for its signal, or panics without one.
#[derive(Debug)]
struct DropsLate(Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>);

impl Drop for DropsLate {
    fn drop(&mut self) {
        let Some(signal) = &self.0 else {
            panic!("the output's drop broke");
        };
        let _ = signal.lock().unwrap().recv_timeout(Duration::from_secs(60));
    }
}

/// A shared output let go of by its caller, its last reference on the ring of an unread
/// stream, is dropped by the ending of the next request, which overwrites it: once that
/// request's caller is answered. `signal` gives the output's drop what it waits for.
fn the_next_request_beside_a_dropped_output(signal: Option<std::sync::mpsc::Receiver<()>>) {
    let answered = on_a_runtime_of_its_own(async {
        let publisher = RequestCompletionPublisher::with_capacity(1);
        publisher.start().unwrap();
        std::mem::forget(publisher.subscribe_stream().unwrap());
        let coordinator = Coordinator::builder().with_async().build();
        coordinator.start(&publisher).unwrap();
        let late = DropsLate(signal.map(std::sync::Mutex::new));
        let shares = move || async move { Ok::<_, BoxError>(late) };
        let task = Task::from_fn("shared", "shares", shares);
        drop(coordinator.submit_shared(task, ExecutionMode::ASYNC).await);
        let next = coordinator.submit(value_task("next", 7), ExecutionMode::ASYNC);
        next.await.map_err(|e| e.to_string())
    });
    assert_eq!(
        answered,
        Ok(Ok(7)),
        "the next request's caller got its value"
    );
}

#[test]
fn an_output_dropped_by_the_next_requests_ending_is_dropped_once_its_caller_is_answered() {
    let (release, signal) = std::sync::mpsc::channel();
    // The drop waits until the next caller was answered: it deadlocks were it before.
    the_next_request_beside_a_dropped_output(Some(signal));
    release.send(()).unwrap();
}

#[test]
fn an_output_whose_drop_panics_takes_nothing_from_the_next_request() {
    the_next_request_beside_a_dropped_output(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_on_one_bus_each_get_their_own_outcomes() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let recorder = Recorder::attach(&publisher);
    let a = Coordinator::builder().with_async().build();
    let b = Coordinator::builder().with_async().build();
    a.start(&publisher).unwrap();
    b.start(&publisher).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut from_b = Vec::new();
    for i in 0..100_u64 {
        let gate = Arc::clone(&gate);
        let task = Task::from_fn(format!("shared-{i}"), "b", move || async move {
            gate.acquire().await?.forget();
            Ok::<_, BoxError>(1_000 + i)
        });
        from_b.push(
            b.spawn(task, ExecutionMode::ASYNC, SubmitOptions::new())
                .await
                .unwrap(),
        );
    }
    for i in 0..100_u64 {
        let value = a.submit(value_task(&format!("shared-{i}"), i), ExecutionMode::ASYNC);
        assert_eq!(value.await.unwrap(), i);
    }
    // A's outcomes, on the bus B is attached to, closed none of B's jobs.
    assert_eq!(b.counts().open, 100);
    gate.add_permits(100);
    for (i, handle) in (0..100_u64).zip(from_b) {
        assert_eq!(handle.await.unwrap(), 1_000 + i);
    }
    for coordinator in [&a, &b] {
        let counts = coordinator.counts();
        assert_eq!(
            (counts.succeeded, counts.closed, counts.open),
            (100, 100, 0)
        );
        coordinator.shutdown().await;
    }
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!(terminal.len(), 100);
    assert!(
        terminal.values().all(|&n| n == 2),
        "one from each coordinator"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_item_closes_only_a_job_of_this_coordinator_and_only_once() {
    let (publisher, coordinator) = support::started();
    let recorder = Recorder::attach(&publisher);
    let (task, gate) = gated("fed", 1);
    let handle = coordinator
        .spawn(task, ExecutionMode::ASYNC, SubmitOptions::new())
        .await
        .unwrap();
    let info = coordinator.job("fed").unwrap().info().clone();
    let success = |info: task_core::TaskInfo, value: u64| {
        RequestCompletionMessage::Success(RequestSuccess {
            info,
            result: Value::new(value),
        })
    };
    // Same request id, another node: someone else's request.
    let stranger = value_task("fed", 0).into_erased().info().clone();
    coordinator.handle_item(success(stranger, 7));
    assert_eq!(coordinator.job("fed").unwrap().result(), None, "still open");
    // This coordinator's request: closed, answered, once.
    coordinator.handle_item(success(info.clone(), 42));
    coordinator.handle_item(success(info, 43));
    assert_eq!(handle.await.unwrap(), 42);
    assert_eq!(
        coordinator.job("fed").unwrap().result(),
        Some(JobResult::Success)
    );
    // The run it stopped delivers nothing more.
    gate.add_permits(1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(coordinator.counts().succeeded, 1);
    assert!(
        !recorder.terminal_counts().contains_key("fed"),
        "a completion from the bus is not announced again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_fed_to_handle_item_is_moved_to_its_caller_or_the_request_fails_whole() {
    let (publisher, coordinator) = support::started();
    let success = |info: task_core::TaskInfo, value: u64| {
        RequestCompletionMessage::Success(RequestSuccess {
            info,
            result: Value::new(value),
        })
    };
    for (id, keep) in [("given", false), ("kept", true)] {
        let (task, gate) = gated(id, 1);
        let handle = coordinator
            .spawn(task, ExecutionMode::ASYNC, SubmitOptions::new())
            .await
            .unwrap();
        let info = coordinator.job(id).unwrap().info().clone();
        let message = success(info, 42);
        // Fed from another task, as a bus reader or a replay would.
        let kept = tokio::spawn({
            let coordinator = coordinator.clone();
            async move {
                let kept = keep.then(|| message.clone());
                coordinator.handle_item(message);
                kept
            }
        });
        let answer = handle.await;
        let kept = kept.await.unwrap();
        let job = coordinator.job(id).unwrap();
        match kept {
            // Someone still holds the value the caller would take: the request fails, job and
            // caller alike.
            Some(_message) => {
                let error = answer.unwrap_err();
                assert!(error.to_string().contains("arrived shared"), "{error}");
                assert_eq!(job.result(), Some(JobResult::Failure));
            }
            None => {
                assert_eq!(answer.unwrap(), 42);
                assert_eq!(job.result(), Some(JobResult::Success));
            }
        }
        gate.add_permits(1);
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_too_long_to_add_to_now_saturate_and_every_request_ends_once() {
    let (publisher, coordinator) = support::started();
    let recorder = Recorder::attach(&publisher);
    // A timeout that never comes.
    let forever = SubmitOptions::new().timeout(Duration::MAX);
    let value = coordinator
        .submit_with(value_task("no-deadline", 5), ExecutionMode::ASYNC, forever)
        .await;
    assert_eq!(value.unwrap(), 5);
    let fails = |id: &str| {
        Task::replayable_fn(id.to_string(), "fails", || async {
            Err::<u64, _>("always")
        })
    };
    let endless_backoff = RetryPolicy::new(3)
        .backoff(Duration::MAX, Duration::MAX)
        .without_jitter();
    // A backoff that never ends, under a deadline: the deadline ends it.
    let timed = coordinator
        .spawn(
            fails("backoff-with-timeout"),
            ExecutionMode::ASYNC,
            SubmitOptions::new()
                .timeout(Duration::from_millis(50))
                .retry(endless_backoff.clone()),
        )
        .await
        .unwrap();
    assert!(timed.await.unwrap_err().is_timeout());
    // The same with jitter, and no deadline: shutdown ends it (no attempt starts after shutdown
    // began: it ends with its last attempt's error).
    let waiting = coordinator
        .spawn(
            fails("backoff-forever"),
            ExecutionMode::ASYNC,
            SubmitOptions::new().retry(RetryPolicy::new(3).backoff(Duration::MAX, Duration::MAX)),
        )
        .await
        .unwrap();
    within(
        "shutdown",
        coordinator.shutdown_with_grace(Duration::from_millis(50)),
    )
    .await;
    let error = waiting.await.unwrap_err();
    assert!(error.task_error().unwrap().is_node_error(), "{error}");
    // A grace too long to add to now, with nothing left to wait for.
    within(
        "shutdown again",
        coordinator.shutdown_with_grace(Duration::MAX),
    )
    .await;
    publisher.shutdown_with_grace(Duration::MAX).await;
    let terminal = recorder.terminal_counts();
    for id in ["no-deadline", "backoff-with-timeout", "backoff-forever"] {
        assert_eq!(
            terminal.get(id),
            Some(&1),
            "{id}: exactly one terminal message"
        );
    }
    let counts = coordinator.counts();
    assert_eq!(
        (
            counts.succeeded,
            counts.timed_out,
            counts.failed,
            counts.open
        ),
        (1, 1, 1, 0)
    );
}

/// The longest span that can be added to `from`.
fn room(from: std::time::Instant) -> Duration {
    let fits = |span| from.checked_add(span).is_some();
    let (mut secs, mut step) = (0_u64, 1 << 63);
    while step > 0 {
        if fits(Duration::from_secs(secs + step)) {
            secs += step;
        }
        step /= 2;
    }
    let (mut nanos, mut step) = (0_u32, 1 << 29);
    while step > 0 {
        if nanos + step < 1_000_000_000 && fits(Duration::new(secs, nanos + step)) {
            nanos += step;
        }
        step /= 2;
    }
    Duration::new(secs, nanos)
}

/// A span that can be added to now, but ends within the millisecond a tokio timer rounds its
/// deadline up by (which overflowed, and panicked, in the timer).
fn at_the_end_of_time() -> Duration {
    room(std::time::Instant::now()) - Duration::from_micros(500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_that_end_at_the_end_of_time_are_taken_as_never() {
    let (publisher, coordinator) = support::started();
    let recorder = Recorder::attach(&publisher);
    let sleeps = |id: &str| {
        Task::replayable_fn(id.to_string(), "sleeps", || async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, BoxError>(7_u64)
        })
    };
    let timeout = SubmitOptions::new().timeout(at_the_end_of_time());
    let value = coordinator
        .submit_with(sleeps("timeout"), ExecutionMode::ASYNC, timeout)
        .await;
    assert_eq!(value.unwrap(), 7, "a timeout that never comes");
    let attempts = RetryPolicy::new(2).attempt_timeout(at_the_end_of_time());
    let value = coordinator
        .submit_with(
            sleeps("attempt-timeout"),
            ExecutionMode::ASYNC,
            SubmitOptions::new().retry(attempts),
        )
        .await;
    assert_eq!(value.unwrap(), 7, "an attempt timeout that never comes");
    let backoff = at_the_end_of_time();
    let endless_backoff = RetryPolicy::new(2)
        .backoff(backoff, backoff)
        .without_jitter();
    let fails = Task::replayable_fn("backoff", "fails", || async { Err::<u64, _>("always") });
    let options = SubmitOptions::new().retry(endless_backoff);
    let waiting = coordinator.spawn(fails, ExecutionMode::ASYNC, options);
    let waiting = waiting.await.unwrap();
    // Shutdown waits out a request in flight with a grace that never ends, and ends the one
    // waiting out its backoff.
    let running = coordinator.spawn(
        sleeps("running"),
        ExecutionMode::ASYNC,
        SubmitOptions::new(),
    );
    let running = running.await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    within(
        "shutdown",
        coordinator.shutdown_with_grace(at_the_end_of_time()),
    )
    .await;
    assert_eq!(running.await.unwrap(), 7);
    let error = waiting.await.unwrap_err();
    assert!(error.task_error().unwrap().is_node_error(), "{error}");
    within(
        "the bus's shutdown",
        publisher.shutdown_with_grace(at_the_end_of_time()),
    )
    .await;
    let terminal = recorder.terminal_counts();
    for id in ["timeout", "attempt-timeout", "backoff", "running"] {
        assert_eq!(terminal.get(id), Some(&1), "{id}: one terminal message");
    }
    let counts = coordinator.counts();
    assert_eq!((counts.succeeded, counts.failed, counts.open), (3, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threaded_limit_of_one_holds_under_timeouts_and_cancellations() {
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(4)
        .max_in_flight(1)
        .build()
        .unwrap();
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .strategy(ExecutionMode::THREADED, threaded)
        .build();
    coordinator.start(&publisher).unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let wait = Arc::new(std::sync::Mutex::new(wait));
    let held = |id: &str| {
        let (running, peak, started, wait) = (
            Arc::clone(&running),
            Arc::clone(&peak),
            Arc::clone(&started),
            Arc::clone(&wait),
        );
        Task::blocking(id.to_string(), "held", move || {
            started.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let _ = wait.lock().unwrap().recv();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
    };
    // The first times out while its node runs on (started long before its timeout).
    let timed_out = coordinator
        .submit_with(
            held("times-out"),
            ExecutionMode::THREADED,
            SubmitOptions::new().timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout());
    assert_eq!(running.load(Ordering::SeqCst), 1);
    // The second is cancelled while it waits for the place.
    let cancelled = coordinator
        .spawn(
            held("cancelled"),
            ExecutionMode::THREADED,
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    cancelled.cancel();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    // The third waits for the place the first node still holds.
    let third = coordinator
        .spawn(held("third"), ExecutionMode::THREADED, SubmitOptions::new())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(started.load(Ordering::SeqCst), 1, "the third waits");
    release.send(()).unwrap();
    release.send(()).unwrap();
    third.await.unwrap();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(peak.load(Ordering::SeqCst), 1, "never two nodes at once");
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the cancelled one never started"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_accepted_whole_and_answers_in_order_or_as_completed() {
    let (publisher, coordinator) = support::started();
    let recorder = Recorder::attach(&publisher);
    let tasks = |prefix: &str| {
        let prefix = prefix.to_string();
        (0..1_000_u64).map(move |i| value_task(&format!("{prefix}{i}"), i * 2))
    };
    let all = coordinator
        .submit_many(tasks("a"), ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap();
    assert_eq!(all.len(), 1_000);
    let outputs: Vec<u64> = all.all().await.into_iter().map(Result::unwrap).collect();
    assert_eq!(outputs, (0..1_000).map(|i| i * 2).collect::<Vec<_>>());

    let streamed = coordinator
        .submit_many(tasks("b"), ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap();
    let mut seen = vec![false; 1_000];
    let mut completed = streamed.as_completed();
    while let Some((i, output)) = completed.next().await {
        assert_eq!(output.unwrap(), i as u64 * 2);
        assert!(!std::mem::replace(&mut seen[i], true), "each position once");
    }
    assert!(seen.iter().all(|&s| s));
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    assert_eq!(terminal.len(), 2_000);
    assert!(terminal.values().all(|&n| n == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_a_repeated_or_open_id_is_rejected_whole_with_nothing_recorded() {
    let (publisher, coordinator) = support::started();
    let repeated = ["x", "y", "x"].map(|id| value_task(id, 1));
    let error = coordinator
        .submit_many(repeated, ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap_err();
    assert!(error.is_rejected() && error.is_duplicate(), "{error}");
    assert_eq!(
        error.to_string(),
        "the batch names request `x` more than once"
    );
    assert!(coordinator.with_state(|s| s.is_empty()), "nothing recorded");

    let (open, gate) = gated("open", 7);
    let open = coordinator
        .spawn(open, ExecutionMode::ASYNC, SubmitOptions::new())
        .await
        .unwrap();
    let clashing = ["p", "open"].map(|id| value_task(id, 1));
    let error = coordinator
        .submit_many(clashing, ExecutionMode::ASYNC, SubmitOptions::new())
        .unwrap_err();
    assert!(error.is_duplicate(), "{error}");
    assert!(
        coordinator.job("p").is_none(),
        "nothing of the batch recorded"
    );
    // The open request is undisturbed.
    gate.add_permits(1);
    assert_eq!(open.await.unwrap(), 7);

    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A retry's next attempt starts on the runtime its request was submitted on, not the one the
/// coordinator was started on.
#[test]
fn a_retry_starts_on_the_submitting_runtime() {
    let named = |name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    };
    let (home, submitting) = (named("home"), named("submitting"));
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    // The inline strategy runs a blocking body inside `execute`, where the attempt starts.
    let coordinator = Coordinator::builder()
        .strategy(
            exec_inline::InlineStrategy::MODE,
            exec_inline::InlineStrategy::new(),
        )
        .build();
    home.block_on(async { coordinator.start(&publisher).unwrap() });
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&threads);
    let task = Task::replayable_blocking("flaky", "flaky", move || {
        let mut seen = seen.lock().unwrap();
        seen.push(std::thread::current().name().map(str::to_owned));
        if seen.len() == 1 {
            return Err::<u32, BoxError>("the first attempt fails".into());
        }
        Ok(7)
    });
    let retrying = SubmitOptions::new().retry(
        RetryPolicy::new(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(1))
            .without_jitter(),
    );
    let value = submitting.block_on(async {
        // On a worker of `submitting`, as a task there would be.
        let coordinator = coordinator.clone();
        let submit = async move {
            let mode = exec_inline::InlineStrategy::MODE;
            coordinator.submit_with(task, mode, retrying).await
        };
        tokio::spawn(submit).await.unwrap()
    });
    assert_eq!(value.unwrap(), 7);
    let threads = threads.lock().unwrap().clone();
    assert_eq!(
        threads,
        [Some("submitting".to_owned()), Some("submitting".to_owned())],
        "both attempts start on the runtime the request was submitted on"
    );
    home.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_predicate_that_panics_means_no_retry_and_the_request_still_ends() {
    let (publisher, coordinator) = support::started();
    let task = Task::replayable_fn("p", "fails", || async {
        Err::<u32, BoxError>("the node's error".into())
    });
    let options = SubmitOptions::new()
        .retry(RetryPolicy::new(3).retry_if(|_| panic!("a bug in the predicate")));
    let error = within(
        "the request",
        coordinator.submit_with(task, ExecutionMode::ASYNC, options),
    )
    .await
    .unwrap_err();
    assert!(error.task_error().unwrap().is_node_error(), "{error}");
    assert_eq!(coordinator.job("p").unwrap().attempts(), 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_request_that_already_ended_changes_nothing() {
    let (publisher, coordinator) = support::started();
    let inner = coordinator.clone();
    let (child_handle, handed) = tokio::sync::oneshot::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let parent = Task::from_fn("parent", "parent", move || async move {
        let child = Task::from_fn("child", "child", move || async move {
            released.await?;
            Ok::<_, BoxError>(1_u32)
        });
        let handle = inner
            .spawn(child, ExecutionMode::ASYNC, SubmitOptions::new())
            .await?;
        let _ = child_handle.send(handle);
        Ok::<_, BoxError>(0_u32)
    });
    let parent = coordinator
        .spawn(parent, ExecutionMode::ASYNC, SubmitOptions::new())
        .await
        .unwrap();
    let child = handed.await.unwrap();
    while coordinator.job("parent").unwrap().result().is_none() {
        tokio::task::yield_now().await;
    }
    parent.cancel();
    assert!(!parent.is_cancelled(), "it had ended: nothing changed");
    assert_eq!(parent.await.unwrap(), 0);
    // The child it left running runs on.
    release.send(()).unwrap();
    assert_eq!(child.await.unwrap(), 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
