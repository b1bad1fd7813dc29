//! A request's end racing what else happens to it: a cancellation against its opening, a
//! submission against shutdown, a retry against the user's own code, a backoff against the
//! coordinator going away.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, Node, RequestCompletionMessage, RequestCompletionPublisher, RetryPolicy,
    SubmitOptions, Task, TaskExecutionStrategy,
};
use support::{Recorder, started};
use task_core::{BoxFuture, Completion, ErasedTask};

/// A node that always fails, and whose third copy panics as it is made.
struct BadClone(Arc<AtomicUsize>);

impl Clone for BadClone {
    fn clone(&self) -> Self {
        if self.0.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
            panic!("the third copy of this node cannot be made");
        }
        BadClone(Arc::clone(&self.0))
    }
}

impl Node for BadClone {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Err("try again".into())
    }
}

/// The copy for a retry's next attempt is the user's code: when it panics, the request ends
/// with that panic, once, instead of waiting forever for an attempt that cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_panics_between_attempts_ends_the_request() {
    let (publisher, coordinator) = started();
    let recorder = Recorder::attach(&publisher);
    let task = Task::replayable("copied", BadClone(Arc::new(AtomicUsize::new(0))));
    let quick = Duration::from_millis(1);
    let policy = RetryPolicy::new(3).backoff(quick, quick);
    let options = SubmitOptions::new().retry(policy);
    let handle = coordinator.spawn(task, "async", options).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), handle).await;
    let error = answered.expect("answered").unwrap_err();
    let cause = error.task_error().unwrap();
    assert!(cause.is_panic(), "{error}");
    assert!(cause.message().contains("third copy"), "{error}");
    assert_eq!(coordinator.counts().open, 0);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts()["copied"], 1);
}

/// A node that always fails, counting its runs, whose third copy (made, once its first attempt
/// failed, for the attempt after the second) waits until `release` is set (10 s at most), then
/// panics if asked to.
#[derive(Default)]
struct SlowCopy {
    copies: Arc<AtomicUsize>,
    runs: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
    panics: bool,
}

impl Clone for SlowCopy {
    fn clone(&self) -> Self {
        if self.copies.fetch_add(1, Ordering::SeqCst) + 1 == 3 {
            let start = std::time::Instant::now();
            while !self.release.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(!self.panics, "the copy failed");
        }
        SlowCopy {
            copies: Arc::clone(&self.copies),
            runs: Arc::clone(&self.runs),
            release: Arc::clone(&self.release),
            panics: self.panics,
        }
    }
}

impl Node for SlowCopy {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Err("try again".into())
    }
}

/// While the copy for the next attempt is made, the request is still waiting: cancelled then,
/// or shut down, it ends (cancelled, or with its last error) and no attempt starts, whether
/// the copy then succeeds or panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_attempt_starts_once_the_request_ended_during_its_copy() {
    for (panics, by_shutdown) in [(false, false), (true, false), (false, true), (true, true)] {
        let (publisher, coordinator) = started();
        let recorder = Recorder::attach(&publisher);
        let node = SlowCopy {
            panics,
            ..SlowCopy::default()
        };
        let (copies, runs) = (Arc::clone(&node.copies), Arc::clone(&node.runs));
        let release = Arc::clone(&node.release);
        let quick = Duration::from_millis(1);
        let options = SubmitOptions::new().retry(RetryPolicy::new(5).backoff(quick, quick));
        let task = Task::replayable("r", node);
        let handle = coordinator.spawn(task, "async", options).await.unwrap();
        // The third copy is under way, and holds up a worker thread until released.
        while copies.load(Ordering::SeqCst) < 3 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let case = format!("panics {panics}, by shutdown {by_shutdown}");
        // The request ends while its copy is made; the copy is let go once the job is closed.
        let let_go = async {
            let start = std::time::Instant::now();
            let ended = loop {
                if coordinator.job("r").unwrap().result().is_some() {
                    break true;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    break false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            release.store(true, Ordering::SeqCst);
            ended
        };
        if by_shutdown {
            let ((), ended) = tokio::join!(coordinator.shutdown(), let_go);
            assert!(ended, "{case}: the request ended while its copy was made");
            let error = handle.await.unwrap_err();
            assert_eq!(error.to_string(), "request `r`: try again", "{case}");
        } else {
            assert!(coordinator.cancel("r"), "{case}");
            assert!(
                let_go.await,
                "{case}: the request ended while its copy was made"
            );
            assert!(handle.await.unwrap_err().is_cancelled(), "{case}");
            coordinator.shutdown().await;
        }
        // Its copy done (or failed) since: the attempt it was for never started.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{case}");
        assert_eq!(coordinator.job("r").unwrap().attempts(), 1, "{case}");
        publisher.shutdown().await;
        assert_eq!(recorder.terminal_counts()["r"], 1, "{case}");
    }
}

/// With openings announced, a request's opening is published before its outcome, even when a
/// cancellation ends it the moment it is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_is_published_before_an_outcome_that_races_it() {
    const ROUNDS: u64 = 20_000;
    let (publisher, coordinator) = started();
    coordinator.announce_openings(true);
    let recorder = Recorder::attach(&publisher);
    let (current, done) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let canceller = {
        let (coordinator, current, done) = (coordinator.clone(), current.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                coordinator.cancel(&format!("r{}", current.load(Ordering::Relaxed)));
            }
        })
    };
    for i in 0..ROUNDS {
        current.store(i, Ordering::Relaxed);
        let task = Task::from_fn(
            format!("r{i}"),
            "waits",
            std::future::pending::<Result<(), BoxError>>,
        );
        let handle = coordinator
            .try_spawn(task, "async", SubmitOptions::new())
            .unwrap();
        // Ended by the canceller; if it missed this one, by this.
        handle.cancel();
        assert!(handle.await.unwrap_err().is_cancelled());
    }
    done.store(true, Ordering::Relaxed);
    canceller.join().unwrap();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let mut opened = HashSet::new();
    let mut ended = 0;
    for message in recorder.messages() {
        let node = message.task_info().map(|info| info.node_id().to_string());
        match message {
            RequestCompletionMessage::Creation(_) => assert!(opened.insert(node.unwrap())),
            m if m.is_terminal() => {
                let node = node.unwrap();
                assert!(opened.contains(&node), "an outcome before its opening: {m}");
                ended += 1;
            }
            _ => {}
        }
    }
    assert_eq!((opened.len() as u64, ended), (ROUNDS, ROUNDS));
}

/// Submissions racing shutdown: each is recorded before shutdown returns (which then waited for
/// it) or refused as shut down; nothing is recorded after shutdown returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_recorded_after_shutdown_returned() {
    for round in 0..200 {
        let (publisher, coordinator) = started();
        let go = Arc::new(AtomicBool::new(true));
        let submitter = {
            let (coordinator, go) = (coordinator.clone(), Arc::clone(&go));
            std::thread::spawn(move || {
                // A worker of its own runs what it submits.
                let mut runtime = tokio::runtime::Builder::new_multi_thread();
                let runtime = runtime.worker_threads(1).enable_all().build();
                let _entered = runtime.as_ref().unwrap().enter();
                let task = |id: String| Task::from_fn(id, "n", || async { Ok::<_, BoxError>(()) });
                let mut n = 0_u64;
                while go.load(Ordering::Relaxed) {
                    n += 1;
                    let refused = if n.is_multiple_of(2) {
                        let one = coordinator.try_spawn(
                            task(format!("t{n}")),
                            "async",
                            SubmitOptions::new(),
                        );
                        one.err()
                    } else {
                        let two = [task(format!("t{n}")), task(format!("u{n}"))];
                        coordinator
                            .submit_many(two, "async", SubmitOptions::new())
                            .err()
                    };
                    assert!(
                        refused.as_ref().is_none_or(|e| e.is_shut_down()),
                        "{refused:?}"
                    );
                }
            })
        };
        tokio::time::sleep(Duration::from_micros(300)).await;
        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        let at_shutdown = coordinator.counts();
        assert_eq!(at_shutdown.open, 0, "round {round}");
        tokio::time::sleep(Duration::from_millis(2)).await;
        go.store(false, Ordering::Relaxed);
        submitter.join().unwrap();
        assert_eq!(coordinator.counts(), at_shutdown, "round {round}");
        publisher.shutdown().await;
    }
}

/// A strategy that runs tasks on the coordinator's runtime and says when it is dropped.
struct Tracked(Arc<AtomicBool>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl TaskExecutionStrategy for Tracked {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        completion.spawn(task.run_inline());
    }
    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn name(&self) -> &str {
        "tracked"
    }
}

/// A request waiting out a long backoff does not keep its strategy (its threads, its worker
/// processes) alive once the coordinator is dropped, and its caller is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backoff_does_not_keep_the_strategy_of_a_dropped_coordinator() {
    let dropped = Arc::new(AtomicBool::new(false));
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .strategy("tracked", Tracked(Arc::clone(&dropped)))
        .build();
    coordinator.start(&publisher).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let task = Task::replayable_fn("b", "fails", move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>("no".into()) }
    });
    let hour = Duration::from_secs(3600);
    let policy = RetryPolicy::new(3).backoff(hour, hour).without_jitter();
    let options = SubmitOptions::new().retry(policy);
    let handle = coordinator.spawn(task, "tracked", options).await.unwrap();
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Its failure handled: the request waits out its backoff.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(coordinator.job("b").unwrap().end_time().is_none());
    // Its request is ended on the runtime, and the coordinator released after it.
    drop(coordinator);
    let answered = tokio::time::timeout(Duration::from_secs(10), handle).await;
    assert!(answered.expect("answered").is_err());
    let start = std::time::Instant::now();
    while !dropped.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        dropped.load(Ordering::SeqCst),
        "the strategy outlived its coordinator"
    );
    publisher.shutdown().await;
}

/// Everything at once, at random: retries with tiny backoffs, timeouts of a fraction of a
/// millisecond, cancellations, children awaited or not, a limit, and a 1 ms shutdown over all
/// of it. Every request ends once: one terminal message each, every caller answered, nothing
/// left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_ends_once_whatever_races_it() {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let recorder = Recorder::attach(&publisher);
    let coordinator = Coordinator::builder()
        .with_async()
        .limit("async", 64)
        .build();
    coordinator.start(&publisher).unwrap();
    let mut handles = Vec::new();
    for i in 0..3_000_u64 {
        let inside = coordinator.clone();
        let task = Task::replayable_fn(format!("r{i}"), "flaky", move || {
            let inside = inside.clone();
            async move {
                if i % 3 == 0 {
                    let id = format!("c{i}-{}", fastrand::u64(..));
                    let child = Task::from_fn(id, "child", || async {
                        tokio::time::sleep(Duration::from_micros(fastrand::u64(0..500))).await;
                        Ok::<_, BoxError>(1_u64)
                    });
                    let child = inside.spawn(child, "async", SubmitOptions::new()).await?;
                    if fastrand::bool() {
                        child.await?;
                    }
                }
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..300))).await;
                if fastrand::u8(..) < 100 {
                    return Err::<u64, BoxError>("flaky".into());
                }
                Ok::<_, BoxError>(i)
            }
        });
        let backoff = (Duration::from_micros(10), Duration::from_micros(200));
        let options = SubmitOptions::new()
            .timeout(Duration::from_micros(fastrand::u64(100..3_000)))
            .retry(RetryPolicy::new(3).backoff(backoff.0, backoff.1));
        let handle = coordinator.spawn(task, "async", options).await.unwrap();
        if fastrand::u8(..) < 40 {
            handle.cancel();
        }
        handles.push(handle);
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    coordinator
        .shutdown_with_grace(Duration::from_millis(1))
        .await;
    for handle in handles {
        let answered = tokio::time::timeout(Duration::from_secs(10), handle).await;
        assert!(answered.is_ok(), "every caller is answered");
    }
    let counts = coordinator.counts();
    publisher.shutdown().await;
    let terminal = recorder.terminal_counts();
    let not_once: Vec<_> = terminal.iter().filter(|(_, n)| **n != 1).collect();
    assert!(not_once.is_empty(), "{not_once:?}");
    assert_eq!(counts.open, 0);
    assert_eq!(terminal.len() as u64, counts.closed);
}

/// A node whose copy, once `armed`, waits (a thread's sleep) until `released`, saying first that
/// it is under way.
#[derive(Default)]
struct HeldCopy {
    armed: Arc<AtomicBool>,
    entered: Arc<AtomicBool>,
    released: Arc<AtomicBool>,
}

impl Clone for HeldCopy {
    fn clone(&self) -> Self {
        if self.armed.load(Ordering::SeqCst) {
            self.entered.store(true, Ordering::SeqCst);
            while !self.released.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        HeldCopy {
            armed: Arc::clone(&self.armed),
            entered: Arc::clone(&self.entered),
            released: Arc::clone(&self.released),
        }
    }
}

impl Node for HeldCopy {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A request submits a batch to a limited mode whose tasks need places of their own, and
/// shutdown begins while the batch is being prepared (here: while its retry copy is made).
/// The batch is refused as shut down: during the grace a task needing a place of its own is not
/// accepted, however late in the batch's admission shutdown began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_needing_places_of_its_own_is_refused_when_shutdown_begins_during_its_admission() {
    let (publisher, coordinator) = support::started_from(
        Coordinator::builder()
            .with_async()
            .strategy("limited", coordinator::AsyncExecutionStrategy::new())
            .limit("limited", 2),
    );
    let node = HeldCopy::default();
    let (armed, entered, released) = (
        Arc::clone(&node.armed),
        Arc::clone(&node.entered),
        Arc::clone(&node.released),
    );
    let inside = coordinator.clone();
    let parent = Task::from_fn("parent", "parent", move || async move {
        let quick = Duration::from_millis(1);
        let options = SubmitOptions::new().retry(RetryPolicy::new(2).backoff(quick, quick));
        let task = Task::replayable("member", node);
        armed.store(true, Ordering::SeqCst);
        match inside.submit_many([task], "limited", options) {
            Ok(batch) => {
                drop(batch.all().await);
                Ok::<_, BoxError>(Ok(()))
            }
            Err(error) => Ok(Err(error.is_shut_down())),
        }
    });
    let parent = coordinator
        .spawn(parent, "async", SubmitOptions::new())
        .await
        .unwrap();
    while !entered.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }
    let c = coordinator.clone();
    let shutdown =
        tokio::spawn(async move { c.shutdown_with_grace(Duration::from_secs(60)).await });
    while coordinator.is_accepting() {
        tokio::task::yield_now().await;
    }
    released.store(true, Ordering::SeqCst);
    let answer = tokio::time::timeout(Duration::from_secs(10), parent).await;
    let batch = answer.expect("the parent ends").unwrap();
    assert_eq!(batch, Err(true), "refused as shut down");
    assert!(coordinator.job("member").is_none());
    shutdown.await.unwrap();
    publisher.shutdown().await;
}

/// A strategy whose first shutdown never ends; it counts the shutdowns asked of it.
struct SlowToStop(Arc<AtomicUsize>);

impl TaskExecutionStrategy for SlowToStop {
    fn execute(&self, task: ErasedTask, completion: Completion) {
        completion.spawn(task.run_inline());
    }
    fn shutdown(&self, _grace: Duration) -> BoxFuture<'_, ()> {
        let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
        Box::pin(async move {
            if first {
                std::future::pending::<()>().await;
            }
        })
    }
    fn name(&self) -> &str {
        "slow"
    }
}

/// A shutdown whose caller stopped waiting for it while it shut the strategies down (a timeout
/// around it) leaves them to the next call; once a call has returned, having shut them down, a
/// later one does not ask them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_shutdown_returned_the_strategies_are_not_asked_again() {
    let asked = Arc::new(AtomicUsize::new(0));
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder()
        .strategy("slow", SlowToStop(Arc::clone(&asked)))
        .build();
    coordinator.start(&publisher).unwrap();
    let abandoned = tokio::time::timeout(Duration::from_millis(100), coordinator.shutdown()).await;
    assert!(
        abandoned.is_err(),
        "the first shutdown of the strategy never ends"
    );
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    tokio::time::timeout(Duration::from_secs(10), coordinator.shutdown())
        .await
        .expect("the second shutdown of the strategy ends at once");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "the strategy was asked again"
    );
    tokio::time::timeout(Duration::from_secs(10), coordinator.shutdown())
        .await
        .expect("nothing is left to shut down");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "a shutdown returned: the strategy is not asked a third time"
    );
    publisher.shutdown().await;
}
