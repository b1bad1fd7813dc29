//! The threaded mode through the coordinator, and nested work that must not deadlock the pool.

mod support;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, SubmitOptions, Task,
    ThreadedExecutionStrategy, block_on,
};
use support::Recorder;

/// A coordinator whose threaded mode has a pool of 2 threads and at most 2 top-level tasks.
fn started_with_small_pool() -> (RequestCompletionPublisher, Coordinator) {
    let threaded = ThreadedExecutionStrategy::builder().threads(2);
    support::started_threaded(threaded.max_in_flight(2).thread_name("pool"))
}

/// An async node that, above depth 0, submits `width` children in threaded mode and waits for
/// all of them. Returns the number of nodes in its subtree.
fn tree(c: Coordinator, id: String, depth: u32, width: u32) -> Task<u64> {
    Task::from_fn(id.clone(), "tree", move || async move {
        if depth == 0 {
            return Ok::<_, BoxError>(1);
        }
        let children = (0..width).map(|i| {
            let child = tree(c.clone(), format!("{id}.{i}"), depth - 1, width);
            let c = c.clone();
            async move { c.submit(child, ExecutionMode::THREADED).await }
        });
        let counts = futures::future::try_join_all(children).await?;
        Ok(1 + counts.iter().sum::<u64>())
    })
}

/// A blocking node that submits one child and blocks its pool thread until the child is done.
fn chain(c: Coordinator, depth: u32) -> Task<u32> {
    Task::blocking(format!("chain-{depth}"), "chain", move || {
        if depth == 0 {
            return Ok::<_, BoxError>(0);
        }
        let child = chain(c.clone(), depth - 1);
        let below = block_on(c.submit(child, ExecutionMode::THREADED))?;
        Ok(below + 1)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threaded_nodes_run_under_the_threaded_mode_and_report_outcomes() {
    let (publisher, coordinator) = started_with_small_pool();
    let recorder = Recorder::attach(&publisher);
    let task = Task::blocking("cpu", "primes", || {
        let count = (2..20_000_u32)
            .filter(|n| (2..*n).take_while(|d| d * d <= *n).all(|d| n % d != 0))
            .count();
        Ok::<_, BoxError>(count)
    });
    assert_eq!(coordinator.submit(task, "threaded").await.unwrap(), 2262);
    let boom: Task<()> = Task::blocking("boom", "boom", || -> Result<(), BoxError> {
        panic!("bad input")
    });
    let err = coordinator.submit(boom, "threaded").await.unwrap_err();
    assert!(err.task_error().unwrap().is_panic());
    let detail = coordinator.system_detail();
    assert_eq!(detail.modes["threaded"].succeeded, 1);
    assert_eq!(detail.modes["threaded"].failed, 1);
    publisher.shutdown().await;
    assert_eq!(recorder.terminal_counts().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_waiting_for_a_chain_of_children_deeper_than_the_pool_does_not_deadlock() {
    let (_publisher, coordinator) = started_with_small_pool();
    let depth = 12;
    let top = chain(coordinator.clone(), depth);
    let top_node = top.node_id().clone();
    assert_eq!(coordinator.submit(top, "threaded").await.unwrap(), depth);
    let counts = coordinator.counts();
    assert_eq!(
        (counts.closed, counts.succeeded),
        (u64::from(depth) + 1, u64::from(depth) + 1)
    );
    // Parents are recorded from the pool thread the child was submitted on.
    let child = coordinator.job(&format!("chain-{}", depth - 1)).unwrap();
    assert_eq!(child.parent_node_id(), Some(&top_node));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_wider_and_deeper_than_the_pool_does_not_deadlock() {
    let (_publisher, coordinator) = started_with_small_pool();
    // 1 + 4 + 16 + 64 = 85 nodes, 21 of them parents waiting on children, on 2 threads.
    let root = tree(coordinator.clone(), "root".into(), 3, 4);
    assert_eq!(coordinator.submit(root, "threaded").await.unwrap(), 85);
    assert_eq!(coordinator.counts().closed, 85);
    assert_eq!(coordinator.counts().open, 0);
    let grandchild = coordinator.job("root.2.3").unwrap();
    let child = coordinator.job("root.2").unwrap();
    assert_eq!(grandchild.parent_node_id(), Some(child.child_node_id()));
}

/// Thousands of blocking nodes queued at once on a pool of 2 with no `max_in_flight`, each
/// waiting in `block_on` for an async child: a waiting thread takes the queued nodes on top of
/// its waiting one only up to a depth, so its stack never overflows (it did: the test process
/// aborted, at about 500 nodes deep in a debug build).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_queued_nodes_waiting_in_block_on_do_not_overflow_a_threads_stack() {
    let threaded = ThreadedExecutionStrategy::builder().threads(2);
    let (_publisher, coordinator) = support::started_threaded(threaded);
    let agents = (0..3_000).map(|i| {
        let on = coordinator.clone();
        let agent = Task::blocking(format!("agent-{i}"), "agent", move || {
            let tool = Task::from_fn(format!("agent-{i}/tool"), "tool", || async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                Ok::<_, BoxError>(1_u64)
            });
            Ok::<_, BoxError>(block_on(on.submit(tool, ExecutionMode::ASYNC))? + 1)
        });
        coordinator.submit(agent, ExecutionMode::THREADED)
    });
    let answers = futures::future::try_join_all(agents).await.unwrap();
    assert_eq!(answers.iter().sum::<u64>(), 6_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_top_level_trees_at_once_beyond_the_in_flight_limit() {
    let (_publisher, coordinator) = started_with_small_pool();
    let trees = (0..6).map(|t| {
        let c = coordinator.clone();
        async move {
            c.submit(tree(c.clone(), format!("t{t}"), 2, 3), "threaded")
                .await
        }
    });
    let sizes = futures::future::try_join_all(trees).await.unwrap();
    assert_eq!(sizes, vec![13; 6]);
    assert_eq!(coordinator.counts().closed, 6 * 13);
}

/// A coordinator whose threaded mode runs at most one task at a time, in a pool of 4 threads.
fn started_with_one_place() -> (RequestCompletionPublisher, Coordinator) {
    support::started_threaded(
        ThreadedExecutionStrategy::builder()
            .threads(4)
            .max_in_flight(1),
    )
}

/// An async agent fanning tools out to the pool: its node holds no place there, so each tool
/// takes one, and `max_in_flight(1)` runs them one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_counts_the_tools_an_async_agent_fans_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    let (publisher, coordinator) = started_with_one_place();
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let c = coordinator.clone();
    let agent = Task::from_fn("agent", "agent", move || async move {
        let tools = (0..4).map(|i| {
            let (now, peak) = (Arc::clone(&now), Arc::clone(&peak));
            let tool = Task::blocking(format!("tool-{i}"), "tool", move || {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(running, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(i)
            });
            c.submit(tool, ExecutionMode::THREADED)
        });
        let done = futures::future::try_join_all(tools).await?;
        Ok::<_, BoxError>((done, peak.load(Ordering::SeqCst)))
    });
    let answer = coordinator.submit(agent, ExecutionMode::ASYNC);
    let answer = tokio::time::timeout(Duration::from_secs(30), answer).await;
    let (done, peak) = answer.expect("the agent ends").unwrap();
    assert_eq!(done, vec![0, 1, 2, 3], "every tool ran");
    assert_eq!(peak, 1, "max_in_flight(1) let {peak} tools run at once");
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A tree that leaves the pool and comes back (a threaded node waiting for an async child,
/// which waits for a threaded grandchild) shares the place its root holds, under
/// `max_in_flight(1)`: the grandchild never waits for a place its own ancestor holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_that_leaves_the_pool_and_comes_back_does_not_wait_for_its_own_place() {
    use std::time::Duration;

    let (publisher, coordinator) = started_with_one_place();
    let c = coordinator.clone();
    let root = Task::blocking("root", "root", move || {
        let c2 = c.clone();
        let middle = Task::from_fn("middle", "middle", move || async move {
            let leaf = Task::blocking("leaf", "leaf", || Ok::<_, BoxError>(40));
            let leaf = c2.submit(leaf, ExecutionMode::THREADED).await?;
            Ok::<_, BoxError>(leaf + 1)
        });
        let middle = block_on(c.submit(middle, ExecutionMode::ASYNC))?;
        Ok::<_, BoxError>(middle + 1)
    });
    let answer = coordinator.submit(root, ExecutionMode::THREADED);
    let answer = tokio::time::timeout(Duration::from_secs(30), answer).await;
    assert_eq!(answer.expect("no deadlock").unwrap(), 42);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A child's next attempt is submitted from a timer task, not from its parent's thread: the
/// parent, waiting on the pool's one thread, still runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_child_of_a_parent_waiting_on_a_one_thread_pool_completes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    // The parent holds the one place: the child's attempts, its parent's, take none.
    let one = ThreadedExecutionStrategy::builder()
        .threads(1)
        .max_in_flight(1);
    let (publisher, coordinator) = support::started_threaded(one);
    let tries = Arc::new(AtomicU32::new(0));
    let c = coordinator.clone();
    let parent = Task::blocking("parent", "parent", move || {
        let child = Task::replayable_blocking("child", "child", move || {
            if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                Err::<u32, BoxError>("transient".into())
            } else {
                Ok(7)
            }
        });
        let retry = coordinator::RetryPolicy::new(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(1));
        let options = coordinator::SubmitOptions::new().retry(retry);
        block_on(c.submit_with(child, "threaded", options)).map_err(BoxError::from)
    });
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        coordinator.submit(parent, "threaded"),
    )
    .await
    .expect("the parent ends: its child's second attempt ran");
    assert_eq!(answer.unwrap(), 7);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// An async node that waits for a child with `block_on`.
fn waiting_async_parent(c: Coordinator, id: &str) -> Task<u32> {
    let child_id = format!("{id}-child");
    Task::from_fn(id.to_owned(), "parent", move || async move {
        let child = Task::from_fn(child_id, "child", || async { Ok::<_, BoxError>(2_u32) });
        Ok::<_, BoxError>(block_on(c.submit(child, ExecutionMode::ASYNC))? + 1)
    })
}

/// `block_on` in async nodes, one on each of the runtime's two workers: the runtime's other tasks
/// (the children) go on elsewhere meanwhile, and both parents get their answers.
#[test]
fn async_nodes_waiting_in_block_on_do_not_stop_the_runtime() {
    let (done, answered) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = support::runtime(2);
        let answers = runtime.block_on(async {
            let (publisher, coordinator) = started_with_small_pool();
            let parents = ["p0", "p1"].map(|id| {
                let c = coordinator.clone();
                tokio::spawn(async move {
                    c.submit(waiting_async_parent(c.clone(), id), ExecutionMode::ASYNC)
                        .await
                })
            });
            let answers = futures::future::join_all(parents).await;
            coordinator.shutdown().await;
            publisher.shutdown().await;
            answers
        });
        let _ = done.send(
            answers
                .into_iter()
                .map(|a| a.unwrap().ok())
                .collect::<Vec<_>>(),
        );
    });
    let answers = answered
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the runtime keeps running while nodes wait in block_on");
    assert_eq!(answers, [Some(3), Some(3)]);
}

/// On a current-thread runtime `block_on` parks the runtime's only thread, which a child on the
/// threaded pool does not need: waiting for one there works, from the runtime's own thread.
#[tokio::test(flavor = "current_thread")]
async fn block_on_waits_for_a_threaded_child_on_a_current_thread_runtime() {
    let (publisher, coordinator) = started_with_small_pool();
    let child = Task::blocking("child", "child", || Ok::<_, BoxError>(2_u32));
    let answer = block_on(coordinator.submit(child, ExecutionMode::THREADED));
    assert_eq!(answer.unwrap(), 2);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A blocking node cannot be stopped from outside; it sees its request's timeout (or
/// cancellation) through `current_node_cancelled`, and stops early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_node_sees_its_request_ended_and_stops_early() {
    let (publisher, coordinator) = started_with_small_pool();
    let (stopped, saw) = std::sync::mpsc::channel();
    let task = Task::blocking("long", "long", move || {
        assert!(!coordinator::current_node_cancelled(), "not yet");
        let started = std::time::Instant::now();
        while !coordinator::current_node_cancelled() {
            if started.elapsed() > std::time::Duration::from_secs(30) {
                return Err(BoxError::from("never told"));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = stopped.send(());
        Ok::<_, BoxError>(())
    });
    // Started long before it: a node not started by then would never start.
    let options = SubmitOptions::new().timeout(std::time::Duration::from_secs(1));
    let error = coordinator
        .submit_with(task, ExecutionMode::THREADED, options)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    let told =
        tokio::task::spawn_blocking(move || saw.recv_timeout(std::time::Duration::from_secs(30)));
    told.await.unwrap().expect("the node saw its request end");
    assert!(!coordinator::current_node_cancelled(), "outside a node");
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A mode's limit counts the nodes still running: a blocking node whose request timed out runs
/// on (its thread cannot be interrupted), and keeps its place until it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_node_keeps_its_place_until_it_stops() {
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(2)
        .build()
        .unwrap();
    let builder = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded)
        .limit(ExecutionMode::THREADED, 1);
    let (publisher, coordinator) = support::started_from(builder);
    let first_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = std::sync::Arc::clone(&first_done);
    let (release, released) = std::sync::mpsc::channel::<()>();
    let first = Task::blocking("first", "slow", move || {
        // Runs on past its request's end, until the test lets it go.
        let _ = released.recv_timeout(std::time::Duration::from_secs(30));
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok::<_, BoxError>(false)
    });
    let options = SubmitOptions::new().timeout(std::time::Duration::from_secs(1));
    let error = coordinator
        .submit_with(first, ExecutionMode::THREADED, options)
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    // Answered while its node runs on: the next request waits for that node's place.
    let done = std::sync::Arc::clone(&first_done);
    let second = Task::blocking("second", "after", move || {
        Ok::<_, BoxError>(done.load(std::sync::atomic::Ordering::SeqCst))
    });
    let second = tokio::spawn({
        let coordinator = coordinator.clone();
        async move { coordinator.submit(second, ExecutionMode::THREADED).await }
    });
    // It waits for the place (a node that did not would have read `false` by now) until the
    // first node stops.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    release.send(()).unwrap();
    let second = tokio::time::timeout(std::time::Duration::from_secs(30), second).await;
    assert!(
        second.unwrap().unwrap().unwrap(),
        "the second node started while the first still ran"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A coordinator's limit on the threaded mode over a strategy whose `max_in_flight` is smaller:
/// requests that end (cancelled, timed out) while their tasks wait in the strategy's queue let
/// their places go at once, not when the node holding the strategy's place ends: new requests
/// are accepted although that node still runs, and the limits still bound what runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_ended_while_queued_in_the_strategy_free_their_places_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(2)
        .max_in_flight(1)
        .build()
        .unwrap();
    let builder = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded)
        .limit(ExecutionMode::THREADED, 3);
    let (publisher, coordinator) = support::started_from(builder);
    let (running, peak, started) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = |id: &str| {
        let (running, peak, started, gate) = (
            Arc::clone(&running),
            Arc::clone(&peak),
            Arc::clone(&started),
            Arc::clone(&gate),
        );
        Task::blocking(id.to_string(), "held", move || {
            started.fetch_add(1, Ordering::SeqCst);
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let permit = futures::executor::block_on(gate.acquire()).map_err(|e| e.to_string())?;
            permit.forget();
            running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        })
    };
    let none = SubmitOptions::new;
    // The long node takes the strategy's one place (and one of the coordinator's three).
    let long = coordinator
        .try_spawn(held("long"), ExecutionMode::THREADED, none())
        .unwrap();
    let hang_guard = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while started.load(Ordering::SeqCst) < 1 && std::time::Instant::now() < hang_guard {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "the long node never started"
    );
    // Two more take the coordinator's other places and wait in the strategy's queue: one is
    // cancelled there, the other times out there.
    let cancelled = coordinator
        .try_spawn(held("cancelled"), ExecutionMode::THREADED, none())
        .unwrap();
    let timeout = std::time::Duration::from_millis(50);
    let timed_out = coordinator
        .try_spawn(
            held("times-out"),
            ExecutionMode::THREADED,
            none().timeout(timeout),
        )
        .unwrap();
    cancelled.cancel();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert!(timed_out.await.unwrap_err().is_timeout());
    // Only the long node runs: the two places of the requests that never started are free.
    let next = |id: &str| coordinator.try_spawn(held(id), ExecutionMode::THREADED, none());
    let (second, third) = (next("second"), next("third"));
    let refused = [&second, &third]
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.is_busy()))
        .count();
    assert_eq!(running.load(Ordering::SeqCst), 1);
    gate.add_permits(3);
    long.await.unwrap();
    for handle in [second, third].into_iter().flatten() {
        handle.await.unwrap();
    }
    assert_eq!(
        refused, 0,
        "refused busy while only one node ran: places kept by requests that never started"
    );
    assert_eq!(peak.load(Ordering::SeqCst), 1, "max_in_flight(1) held");
    assert_eq!(
        started.load(Ordering::SeqCst),
        3,
        "the ended ones never started"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shorter_shutdown_returns_within_its_own_grace() {
    use std::time::Duration;

    let (publisher, coordinator) = started_with_small_pool();
    // A blocking node that ignores its request's end: it runs on after its request timed out,
    // so the strategy's shutdown waits for it.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let stuck = Task::blocking("stuck", "stuck", move || {
        let _ = released.recv();
        Ok::<_, BoxError>(())
    });
    let options = SubmitOptions::new().timeout(Duration::from_millis(20));
    let ended = coordinator.submit_with(stuck, "threaded", options).await;
    assert!(ended.unwrap_err().is_timeout());
    // The first shutdown has a long grace: it drains at once, then waits for the strategy.
    let first = tokio::spawn({
        let coordinator = coordinator.clone();
        async move {
            coordinator
                .shutdown_with_grace(Duration::from_secs(600))
                .await
        }
    });
    let strategy_closing = || !coordinator.system_detail().modes["threaded"].accepting;
    while !strategy_closing() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The second asks for no grace: it returns within its own, not the first one's.
    let second = coordinator.shutdown_with_grace(Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("a shutdown with no grace returns within about its settle time");
    // The second cut the first one's wait too: it returns while the node still runs.
    tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("the first shutdown returns with the second")
        .unwrap();
    release.send(()).unwrap();
    publisher.shutdown().await;
}
