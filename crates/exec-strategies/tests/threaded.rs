//! The threaded strategy: where work runs, panics, backpressure, shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use exec_strategies::ThreadedExecutionStrategy;
use futures::FutureExt;
use task_core::{BoxError, StrategyStats, Task, TaskExecutionStrategy};

mod support;
use support::Probe;

fn thread_name() -> String {
    std::thread::current().name().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_and_async_nodes_run_on_named_pool_threads_with_tokio_available() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(2)
        .thread_name("cpu")
        .build()
        .unwrap();
    assert_eq!(s.threads(), 2);
    let blocking = Task::blocking("1", "where", || Ok::<_, BoxError>(thread_name()));
    let name = task_core::run(&s, blocking.into_erased()).await.unwrap();
    assert!(
        name.downcast_ref::<String>().unwrap().starts_with("cpu-"),
        "{name:?}"
    );
    let asynchronous = Task::from_fn("2", "where", || async {
        // The submitting runtime is entered on the pool thread: tokio timers work.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok::<_, BoxError>(thread_name())
    });
    let name = task_core::run(&s, asynchronous.into_erased())
        .await
        .unwrap();
    assert!(
        name.downcast_ref::<String>().unwrap().starts_with("cpu-"),
        "{name:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_panic_is_a_failure_and_the_pool_thread_survives() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(1)
        .thread_name("solo")
        .build()
        .unwrap();
    let boom: Task<()> = Task::blocking("1", "boom", || -> Result<(), BoxError> {
        panic!("division by zero")
    });
    let err = task_core::run(&s, boom.into_erased()).await.unwrap_err();
    assert!(err.is_panic());
    assert_eq!(err.message(), "node panicked: division by zero");
    let async_boom: Task<()> = Task::from_fn("2", "boom", || async {
        panic!("async boom");
        #[allow(unreachable_code)]
        Ok::<(), BoxError>(())
    });
    assert!(
        task_core::run(&s, async_boom.into_erased())
            .await
            .unwrap_err()
            .is_panic()
    );
    // The one pool thread is still there and still works.
    let after = Task::blocking("3", "after", || Ok::<_, BoxError>(thread_name()));
    let name = task_core::run(&s, after.into_erased()).await.unwrap();
    assert_eq!(
        name.downcast_ref::<String>().map(String::as_str),
        Some("solo-0")
    );
    assert_eq!(s.stats(), StrategyStats::new(0, 1, 2, true));
}

#[tokio::test(flavor = "current_thread")]
async fn waiting_for_a_result_never_blocks_the_runtime_thread() {
    // One runtime thread: if `execute` blocked it, the task that releases the node could never
    // run and this test would hang.
    let s = ThreadedExecutionStrategy::builder()
        .threads(1)
        .build()
        .unwrap();
    let (release, released) = std::sync::mpsc::channel::<u8>();
    let task = Task::blocking("1", "waits", move || {
        Ok::<_, BoxError>(released.recv().map_err(|e| e.to_string())?)
    });
    let releaser = tokio::spawn(async move {
        tokio::task::yield_now().await;
        release.send(7).unwrap();
    });
    let value = task_core::run(&s, task.into_erased()).await.unwrap();
    assert_eq!(value.downcast_ref::<u8>(), Some(&7));
    releaser.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_applies_backpressure() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(4)
        .max_in_flight(2)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut calls = Vec::new();
    for i in 0..5 {
        let (running, peak, gate) = (running.clone(), peak.clone(), gate.clone());
        let task = Task::blocking(format!("t{i}"), "held", move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let permit = futures::executor::block_on(gate.acquire()).map_err(|e| e.to_string())?;
            permit.forget();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(i)
        });
        let s = s.clone();
        calls.push(tokio::spawn(async move {
            task_core::run(&s, task.into_erased()).await
        }));
    }
    while running.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    // Two run; the other three wait outside the pool although the pool has free threads.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(running.load(Ordering::SeqCst), 2);
    gate.add_permits(5);
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_one_holds_when_callers_stop_waiting_and_a_task_cancelled_while_queued_never_starts()
 {
    let s = ThreadedExecutionStrategy::builder()
        .threads(4)
        .max_in_flight(1)
        .build()
        .unwrap();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = |name: &str| {
        let (running, peak, started, gate) =
            (running.clone(), peak.clone(), started.clone(), gate.clone());
        Task::blocking(name, "held", move || {
            started.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let permit = futures::executor::block_on(gate.acquire()).map_err(|e| e.to_string())?;
            permit.forget();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
        .into_erased()
    };
    // The first runs; its caller stops waiting (as after a timeout): the node goes on.
    let first = tokio::spawn(task_core::run(&s, held("first")));
    while running.load(Ordering::SeqCst) < 1 {
        tokio::task::yield_now().await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The second is cancelled while it waits for the place.
    drop(task_core::run(&s, held("second")));
    // The third waits for the place the first node still holds.
    let third = tokio::spawn(task_core::run(&s, held("third")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        running.load(Ordering::SeqCst),
        1,
        "the first node still holds the place"
    );
    gate.add_permits(10);
    third.await.unwrap().unwrap();
    assert_eq!(peak.load(Ordering::SeqCst), 1, "never two nodes at once");
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the cancelled one never started"
    );
}

/// Sets its flag when dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A strategy with one place under `max_in_flight`, which a blocking node holds (it returns 1)
/// until the sender is used; and the node's run.
async fn one_place_held() -> (
    ThreadedExecutionStrategy,
    std::sync::mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<task_core::Value, task_core::TaskError>>,
) {
    let s = ThreadedExecutionStrategy::builder()
        .threads(2)
        .max_in_flight(1)
        .build()
        .unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started, running_now) = tokio::sync::oneshot::channel::<()>();
    let long = Task::blocking("long", "long", move || {
        let _ = started.send(());
        released.recv().ok();
        Ok::<_, BoxError>(1)
    });
    let long = tokio::spawn(task_core::run(&s, long.into_erased()));
    tokio::time::timeout(Duration::from_secs(30), running_now)
        .await
        .expect("the long node never started")
        .unwrap();
    (s, release, long)
}

/// A task cancelled while it waits for a place is let go as it is cancelled (its body dropped,
/// counted out of the strategy), not when the node holding the place ends; the others still
/// wait their turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_while_queued_is_let_go_at_once() {
    let (s, release, long) = one_place_held().await;
    let flags: Vec<_> = (0..3)
        .map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)))
        .collect();
    let mut queued: Vec<_> = flags
        .iter()
        .enumerate()
        .map(|(i, flag)| {
            let held = DropFlag(Arc::clone(flag));
            let task = Task::blocking(format!("q{i}"), "queued", move || {
                let _held = &held;
                Ok::<_, BoxError>(i + 10)
            });
            Some(task_core::run(&s, task.into_erased()))
        })
        .collect();
    assert_eq!(s.stats(), StrategyStats::new(4, 0, 0, true));
    // The middle one is cancelled: its body goes now, while the long node still runs.
    drop(queued[1].take());
    assert!(
        flags[1].load(Ordering::SeqCst),
        "the cancelled task is kept"
    );
    assert!(!flags[0].load(Ordering::SeqCst) && !flags[2].load(Ordering::SeqCst));
    assert_eq!(s.stats(), StrategyStats::new(3, 0, 0, true).with_stopped(1));
    release.send(()).unwrap();
    let long = long.await.unwrap().unwrap();
    assert_eq!(long.downcast_ref::<i32>(), Some(&1));
    for (i, run) in queued.into_iter().enumerate() {
        if let Some(run) = run {
            let value = run.await.unwrap();
            assert_eq!(value.downcast_ref::<usize>(), Some(&(i + 10)));
        }
    }
    assert_eq!(s.stats(), StrategyStats::new(0, 3, 0, true).with_stopped(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_tasks_waits_for_running_ones_and_is_idempotent() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(2)
        .build()
        .unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started, running_now) = tokio::sync::oneshot::channel::<()>();
    let slow = Task::blocking("1", "slow", move || {
        let _ = started.send(());
        released.recv().ok();
        Ok::<_, BoxError>("done")
    });
    let s2 = s.clone();
    let call = tokio::spawn(async move { task_core::run(&s2, slow.into_erased()).await });
    // Running, not merely counted: a task counted just before shutdown may still be refused.
    running_now.await.unwrap();
    let mut shutting = Box::pin(s.shutdown(Duration::from_secs(30)));
    assert!(
        (&mut shutting).now_or_never().is_none(),
        "waits for the running task"
    );
    let late = Task::blocking("2", "late", || Ok::<_, BoxError>(()));
    assert!(
        task_core::run(&s, late.into_erased())
            .await
            .unwrap_err()
            .is_shutdown()
    );
    release.send(()).unwrap();
    shutting.await;
    assert_eq!(
        call.await.unwrap().unwrap().downcast_ref::<&str>(),
        Some(&"done")
    );
    s.shutdown(Duration::from_secs(1)).await;
    assert_eq!(s.stats(), StrategyStats::new(0, 1, 0, false));
}

#[tokio::test(flavor = "current_thread")]
async fn a_user_supplied_pool_is_used() {
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|i| format!("mine-{i}"))
            .build()
            .unwrap(),
    );
    let s = ThreadedExecutionStrategy::builder()
        .pool(pool)
        .build()
        .unwrap();
    let task = Task::blocking("1", "where", || Ok::<_, BoxError>(thread_name()));
    let name = task_core::run(&s, task.into_erased()).await.unwrap();
    assert_eq!(
        name.downcast_ref::<String>().map(String::as_str),
        Some("mine-0")
    );
}

#[test]
fn block_on_outside_a_pool_just_runs_the_future() {
    assert_eq!(exec_strategies::block_on(async { 1 + 1 }), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_cancelled_while_queued_do_not_pile_up_behind_a_stuck_node() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(2)
        .max_in_flight(1)
        .build()
        .unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let stuck = Task::blocking("stuck", "stuck", move || {
        wait.recv().map_err(BoxError::from)?;
        Ok::<_, BoxError>(())
    });
    let stuck = tokio::spawn(task_core::run(&s, stuck.into_erased()));
    while s.stats().in_flight < 1 {
        tokio::task::yield_now().await;
    }
    let freed = Arc::new(AtomicUsize::new(0));
    struct OnDrop(Arc<AtomicUsize>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    for i in 0..1_000 {
        let guard = OnDrop(Arc::clone(&freed));
        let task = Task::blocking(format!("w{i}"), "w", move || {
            let _guard = &guard;
            Ok::<_, BoxError>(())
        });
        // Cancelled at once, while it waits behind the stuck node.
        drop(task_core::run(&s, task.into_erased()));
    }
    // Swept as the queue grows: what waits stays proportional to what is still wanted.
    assert!(
        freed.load(Ordering::SeqCst) >= 1_000 - 16,
        "freed {}",
        freed.load(Ordering::SeqCst)
    );
    assert!(
        s.stats().in_flight <= 17,
        "in flight {}",
        s.stats().in_flight
    );
    release.send(()).unwrap();
    stuck.await.unwrap().unwrap();
    // The place passed by every cancelled job: none ran, all are counted out.
    s.shutdown(Duration::from_secs(5)).await;
    assert_eq!(s.stats().in_flight, 0);
    assert_eq!(freed.load(Ordering::SeqCst), 1_000);
}

/// A node of one strategy waits in `block_on` on a one-thread pool for work that reaches the
/// pool after its thread fell asleep: handed to a second strategy sharing the pool, then given
/// to the pool directly. Its thread runs both: the strategies sharing a pool share its signal,
/// and a waiting thread looks for work nobody signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waiting_on_a_shared_pool_runs_work_any_strategy_or_the_pool_is_given() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    let pool = Arc::new(pool.unwrap());
    let strategy = || ThreadedExecutionStrategy::builder().pool(Arc::clone(&pool));
    let (first, second) = (strategy().build().unwrap(), strategy().build().unwrap());
    let (to_sibling, from_sibling) = futures::channel::oneshot::channel::<u32>();
    let (to_pool, from_pool) = futures::channel::oneshot::channel::<u32>();
    let parent = Task::blocking("parent", "wait", move || {
        let from_sibling = exec_strategies::block_on(from_sibling)?;
        Ok::<_, BoxError>(from_sibling + exec_strategies::block_on(from_pool)?)
    });
    let parent = tokio::spawn(task_core::run(&first, parent.into_erased()));
    // The pool's one thread is asleep in the parent's `block_on` by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let child = Task::blocking("child", "send", move || {
        Ok::<_, BoxError>(to_sibling.send(7))
    });
    let child = task_core::run(&second, child.into_erased());
    let child = tokio::time::timeout(Duration::from_secs(30), child).await;
    assert!(matches!(child, Ok(Ok(_))), "the child ran: {child:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    pool.spawn(move || {
        let _ = to_pool.send(35);
    });
    let parent = tokio::time::timeout(Duration::from_secs(30), parent).await;
    let parent = parent.expect("the parent ends").unwrap().unwrap();
    assert_eq!(parent.downcast_ref::<u32>(), Some(&42));
}

/// An async node on the threaded strategy is dropped as soon as its request is cancelled, as on
/// the async strategy: it holds no pool thread, and shutdown does not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_node_is_dropped_when_its_request_is_cancelled() {
    /// Sets its flag when the node's future is dropped.
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let strategy = ThreadedExecutionStrategy::builder()
        .threads(1)
        .build()
        .unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let guard = Dropped(Arc::clone(&dropped));
    let parked = Task::from_fn("parked", "park", move || async move {
        let _guard = guard;
        tokio::time::sleep(Duration::from_secs(600)).await;
        Ok::<_, BoxError>(())
    });
    let running = task_core::run(&strategy, parked.into_erased());
    // Dropping the run cancels its request.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), running)
            .await
            .is_err()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dropped.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "the node was dropped");
    let shutdown = tokio::time::timeout(Duration::from_secs(30), strategy.shutdown(Duration::MAX));
    assert!(shutdown.await.is_ok(), "nothing left to wait for");
    let stats = strategy.stats();
    assert_eq!((stats.failed, stats.stopped), (0, 1), "counted as stopped");
}

/// A node waiting in `block_on` helps its pool, and may run half of another node's
/// `rayon::join` meanwhile: that half runs in neither node's scope (as any work a node hands to
/// rayon), never in the waiting node's, so its events do not reach the waiting node's request.
#[test]
fn work_a_waiting_node_helps_with_runs_outside_its_scope() {
    let s = ThreadedExecutionStrategy::builder()
        .threads(2)
        .build()
        .unwrap();
    let (release, wait) = futures::channel::oneshot::channel::<()>();
    let waits = Task::from_fn("A", "waits", move || async move {
        let _ = wait.await;
        Ok::<_, BoxError>(())
    });
    let mut waiting = task_core::run(&s, waits.into_erased());
    std::thread::sleep(Duration::from_millis(100));
    let forks = Task::blocking("B", "forks", || {
        let stolen = std::sync::atomic::AtomicBool::new(false);
        let (b_thread, started) = (thread_name(), std::time::Instant::now());
        let (_, (half_thread, sent)) = rayon::join(
            || {
                // Waits until the other half ran elsewhere: on the thread waiting in `A`.
                while !stolen.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(5) {
                    std::hint::spin_loop();
                }
            },
            || {
                let sent = task_core::context::broadcast("an event of request B's code");
                stolen.store(true, Ordering::SeqCst);
                (thread_name(), sent.is_ok())
            },
        );
        Ok::<_, BoxError>((b_thread != half_thread, sent))
    });
    let forked = futures::executor::block_on(task_core::run(&s, forks.into_erased())).unwrap();
    let (elsewhere, sent) = *forked.downcast_ref::<(bool, bool)>().unwrap();
    release.send(()).unwrap();
    futures::executor::block_on(&mut waiting).unwrap();
    assert!(elsewhere, "the half ran on the thread waiting in A");
    assert!(!sent, "the half found no node to send its event for");
    assert!(
        waiting.take_events().is_empty(),
        "A's request got B's event"
    );
}

/// A node's own `rayon::join` half that its thread runs while the other half waits in
/// `block_on` is the node's: in its scope, as it is when run after a plain wait.
#[test]
fn a_nodes_own_join_half_run_while_it_waits_keeps_its_scope() {
    for helping in [true, false] {
        let s = ThreadedExecutionStrategy::builder()
            .threads(1)
            .build()
            .unwrap();
        let joins = Task::blocking("A", "joins", move || {
            let (tx, rx) = futures::channel::oneshot::channel::<()>();
            let releaser = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let _ = tx.send(());
            });
            let (_, sent) = rayon::join(
                || {
                    let _ = if helping {
                        exec_strategies::block_on(rx)
                    } else {
                        futures::executor::block_on(rx)
                    };
                },
                || task_core::context::broadcast("A's own event").is_ok(),
            );
            releaser.join().unwrap();
            Ok::<_, BoxError>(sent)
        });
        let mut running = task_core::run(&s, joins.into_erased());
        let sent = futures::executor::block_on(&mut running).unwrap();
        assert_eq!(sent.downcast_ref(), Some(&true), "helping: {helping}");
        assert_eq!(running.take_events().len(), 1, "helping: {helping}");
    }
}

/// A task cancelled while it waits for a place is counted out (stopped, no longer in flight)
/// before its completion says its run is over: whatever hears of that (a request waiting for the
/// place it frees) reads current counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_while_queued_is_counted_out_before_its_run_is_over() {
    let (s, release, long) = one_place_held().await;
    let (probe, _outcome) = Probe::of(&s);
    let queued = Task::blocking("queued", "queued", || Ok::<_, BoxError>(2));
    s.execute(queued.into_erased(), probe.completion());
    assert_eq!(s.stats().in_flight, 2);
    probe.cancel();
    let seen = probe.noted();
    let seen = seen.expect("the queued task is let go as it is cancelled");
    assert_eq!((seen.in_flight, seen.stopped), (1, 1), "{seen:?}");
    release.send(()).unwrap();
    long.await.unwrap().unwrap();
}
