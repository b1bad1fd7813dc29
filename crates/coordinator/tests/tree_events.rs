//! `SubmitOptions::with_tree_events`: a caller follows its request and every request below it.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coordinator::{
    BoxError, ExecutionMode, JobResult, RequestHandle, RetryPolicy, SubmitOptions, Task,
    ThreadedExecutionStrategy, TreeEvent, broadcast,
};
use futures::StreamExt;
use support::{started, started_threaded, tree_line as line};
use tokio::sync::Notify;

/// Fails rather than hangs when `future` never finishes.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what} never finished"))
}

/// Reads `n` items of the tree.
async fn read<O>(handle: &mut RequestHandle<O>, n: usize) -> Vec<TreeEvent> {
    let mut events = Vec::new();
    for _ in 0..n {
        let what = format!(
            "the tree event after {:?}",
            events.iter().map(line).collect::<Vec<_>>()
        );
        let event = within(&what, handle.next_tree_event()).await;
        events.push(event.expect("the tree is still open"));
    }
    events
}

/// Each request's items in the order read: joined first, then its events, then its end.
fn by_request(events: &[TreeEvent]) -> HashMap<String, Vec<String>> {
    let mut requests: HashMap<String, Vec<String>> = HashMap::new();
    for event in events {
        let id = match event {
            TreeEvent::Joined { info, .. } => info.request_id().to_string(),
            TreeEvent::Event { request_id, .. } | TreeEvent::Ended { request_id, .. } => {
                request_id.to_string()
            }
            other => panic!("an event this test does not know: {other:?}"),
        };
        requests.entry(id).or_default().push(line(event));
    }
    requests
}

/// An agent on the async mode calls a tool on a thread that calls a sub-tool, a tool that
/// fails twice (retried), and one that outlives it; an unrelated request runs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_follows_every_request_below_in_order_to_the_last_end() {
    let pool = ThreadedExecutionStrategy::builder().threads(2);
    let (publisher, coordinator) = started_threaded(pool);
    let release = Arc::new(Notify::new());
    let (on, late) = (coordinator.clone(), Arc::clone(&release));
    let agent = Task::from_fn("agent", "agent", move || async move {
        broadcast("thinking")?;
        let sub_tool = Task::from_fn("sub", "sub", || async {
            broadcast("sub working")?;
            Ok::<_, BoxError>(1)
        });
        let inner = on.clone();
        let tool = Task::blocking("tool", "tool", move || {
            broadcast("tool working")?;
            let sub = inner.try_spawn(sub_tool, ExecutionMode::ASYNC, SubmitOptions::new())?;
            Ok::<_, BoxError>(coordinator::block_on(sub)? + 1)
        });
        let failing = Task::replayable_fn("flaky", "flaky", || async {
            broadcast("trying")?;
            Err::<u32, _>(BoxError::from("no luck"))
        });
        let retried = SubmitOptions::new().retry(RetryPolicy::new(2));
        let outliving = Task::from_fn("late", "late", move || async move {
            late.notified().await;
            broadcast("late done")?;
            Ok::<_, BoxError>(0)
        });
        let late = on.try_spawn(outliving, ExecutionMode::ASYNC, SubmitOptions::new())?;
        drop(late);
        let tool = on.submit(tool, ExecutionMode::THREADED).await?;
        let flaky = on.submit_with(failing, ExecutionMode::ASYNC, retried).await;
        assert!(flaky.unwrap_err().to_string().contains("no luck"));
        broadcast("done")?;
        Ok::<_, BoxError>(tool)
    });
    let beside = Task::from_fn("beside", "beside", || async {
        broadcast("not in the tree")?;
        Ok::<_, BoxError>(0)
    });
    let tree = SubmitOptions::new().with_tree_events();
    let mut handle = coordinator
        .try_spawn(agent, ExecutionMode::ASYNC, tree)
        .unwrap();
    let beside = coordinator.submit(beside, ExecutionMode::ASYNC);
    // Everything but the late tool's event and end: 5 requests joined, 6 events (flaky's twice),
    // 4 ends.
    let events = read(&mut handle, 5 + 6 + 4).await;
    assert_eq!(within("the agent", &mut handle).await.unwrap(), 2);
    within("the request beside", beside).await.unwrap();
    let requests = by_request(&events);
    let agent = requests["agent"].clone();
    assert_eq!(
        agent,
        [
            "joined agent (parent none)",
            "agent: thinking",
            "agent: done",
            "agent ended success"
        ]
    );
    let parent = |id: &str| {
        let job = coordinator.job(id).unwrap();
        job.parent_node_id().map(ToString::to_string).unwrap()
    };
    let expected = |id: &str, lines: &[&str]| {
        let mut all = vec![format!("joined {id} (parent {})", parent(id))];
        all.extend(lines.iter().map(|l| l.to_string()));
        assert_eq!(requests[id], all, "{id}");
    };
    expected("tool", &["tool: tool working", "tool ended success"]);
    expected("sub", &["sub: sub working", "sub ended success"]);
    expected(
        "flaky",
        &["flaky: trying", "flaky: trying", "flaky ended failure"],
    );
    assert_eq!(
        requests["late"],
        [format!("joined late (parent {})", parent("late"))]
    );
    assert_eq!(
        requests.len(),
        5,
        "nothing from outside the tree: {requests:?}"
    );
    // A request joins after its parent joined.
    let joined = |id: &str| {
        events
            .iter()
            .position(|e| line(e).starts_with(&format!("joined {id} ")))
    };
    assert!(joined("agent") < joined("tool") && joined("tool") < joined("sub"));
    let failed = events.iter().find_map(|e| match e {
        TreeEvent::Ended {
            request_id, error, ..
        } if request_id.as_str() == "flaky" => error.clone(),
        _ => None,
    });
    assert!(failed.unwrap().to_string().contains("no luck"));

    // The agent ended; the tool it left running is followed to its end.
    let pending = tokio::time::timeout(Duration::from_millis(100), handle.next_tree_event());
    assert!(
        pending.await.is_err(),
        "the tree's events ended with a request still open"
    );
    release.notify_one();
    let rest: Vec<String> = read(&mut handle, 2).await.iter().map(line).collect();
    assert_eq!(rest, ["late: late done", "late ended success"]);
    assert!(within("the end", handle.next_tree_event()).await.is_none());
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A workflow whose end cancels its steps: in its tree, they end before it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_its_end_cancels_end_before_it_in_its_tree() {
    let (publisher, coordinator) = started();
    let on = coordinator.clone();
    let workflow = Task::from_fn("workflow", "workflow", move || async move {
        let step = Task::from_fn("step", "step", || async {
            std::future::pending::<Result<(), BoxError>>().await
        });
        drop(on.try_spawn(step, ExecutionMode::ASYNC, SubmitOptions::new())?);
        Ok::<_, BoxError>(())
    });
    let options = SubmitOptions::new()
        .with_tree_events()
        .cancel_children_on_end();
    let mut handle = coordinator
        .try_spawn(workflow, ExecutionMode::ASYNC, options)
        .unwrap();
    let events: Vec<String> = read(&mut handle, 4).await.iter().map(line).collect();
    assert_eq!(
        events[2..],
        ["step ended cancelled", "workflow ended success"]
    );
    assert!(within("the end", handle.next_tree_event()).await.is_none());
    assert_eq!(
        coordinator.job("step").unwrap().result(),
        Some(JobResult::Cancelled)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A request below that asks for its own tree is followed by both trees, and each ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_inside_a_tree_is_followed_by_both() {
    let (publisher, coordinator) = started();
    let on = coordinator.clone();
    let outer = Task::from_fn("outer", "outer", move || async move {
        let inner_on = on.clone();
        let inner = Task::from_fn("inner", "inner", move || async move {
            let leaf = Task::from_fn("leaf", "leaf", || async {
                broadcast("leaf")?;
                Ok::<_, BoxError>(1)
            });
            inner_on
                .submit(leaf, ExecutionMode::ASYNC)
                .await
                .map_err(BoxError::from)
        });
        let tree = SubmitOptions::new().with_tree_events();
        let mut inner = on.try_spawn(inner, ExecutionMode::ASYNC, tree)?;
        let mut seen = Vec::new();
        while let Some(event) = inner.next_tree_event().await {
            seen.push(line(&event));
        }
        assert_eq!(seen.len(), 5, "{seen:?}");
        Ok::<_, BoxError>(inner.await?)
    });
    let tree = SubmitOptions::new().with_tree_events();
    let mut handle = coordinator
        .try_spawn(outer, ExecutionMode::ASYNC, tree)
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = within("the outer tree", handle.next_tree_event()).await {
        seen.push(line(&event));
    }
    let ids: Vec<&str> = seen
        .iter()
        .filter(|l| l.contains(" ended "))
        .map(|l| &l[..l.find(' ').unwrap()])
        .collect();
    assert_eq!(ids, ["leaf", "inner", "outer"], "{seen:?}");
    assert_eq!(seen.len(), 3 + 1 + 3, "{seen:?}");
    assert_eq!(within("the outer request", handle).await.unwrap(), 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A request that did not ask for its tree reads nothing of it.
#[tokio::test]
async fn a_request_that_asked_for_no_tree_reads_none() {
    let (publisher, coordinator) = started();
    let task = Task::from_fn("plain", "plain", || async {
        broadcast("an event")?;
        Ok::<_, BoxError>(1)
    });
    let options = SubmitOptions::new().with_events();
    let mut handle = coordinator
        .try_spawn(task, ExecutionMode::ASYNC, options)
        .unwrap();
    assert!(handle.next_tree_event().await.is_none());
    assert_eq!(handle.next_event().await.as_deref(), Some("an event"));
    assert_eq!(handle.await.unwrap(), 1);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// Reads the tree to its end (as a stream), each item as a line.
async fn read_all<O>(handle: &mut RequestHandle<O>) -> Vec<String> {
    let lines = handle.tree_events().map(|event| line(&event)).collect();
    within("the tree's end", lines).await
}

/// A request that submits a child that never ends, then never ends itself.
fn parent_of_a_pending_child(on: &coordinator::Coordinator) -> Task<()> {
    let on = on.clone();
    Task::from_fn("root", "root", move || async move {
        let child = Task::from_fn("child", "child", || async {
            std::future::pending::<Result<(), BoxError>>().await
        });
        drop(on.try_spawn(child, ExecutionMode::ASYNC, SubmitOptions::new())?);
        std::future::pending::<Result<(), BoxError>>().await
    })
}

/// Cancelled by its handle or at the shutdown deadline, the child its end cancels ends first,
/// in the tree as on the bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_requests_children_end_before_it() {
    for how in ["handle", "shutdown", "shutdown, scoped"] {
        let (publisher, coordinator) = started();
        let recorder = support::Recorder::attach(&publisher);
        let mut options = SubmitOptions::new().with_tree_events();
        if how.ends_with("scoped") {
            options = options.cancel_children_on_end();
        }
        let root = parent_of_a_pending_child(&coordinator);
        let mut handle = coordinator
            .try_spawn(root, ExecutionMode::ASYNC, options)
            .unwrap();
        read(&mut handle, 2).await;
        match how {
            "handle" => handle.cancel(),
            _ => {
                coordinator
                    .shutdown_with_grace(Duration::from_millis(10))
                    .await
            }
        }
        let ends = read_all(&mut handle).await;
        assert_eq!(
            ends,
            ["child ended cancelled", "root ended cancelled"],
            "{how}"
        );
        coordinator.shutdown().await;
        publisher.shutdown().await;
        let terminal: Vec<String> = (recorder.messages().iter())
            .filter(|m| m.is_terminal())
            .map(|m| m.request_id().unwrap().to_string())
            .collect();
        assert_eq!(terminal, ["child", "root"], "{how}: the bus");
    }
}

/// Once the tree's events have ended, every job of it is closed and every caller answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trees_events_end_once_its_jobs_are_closed() {
    let (publisher, coordinator) = started();
    for i in 0..500 {
        let id = format!("quick-{i}");
        let task = Task::from_fn(id.clone(), "quick", || async { Ok::<_, BoxError>(1) });
        let tree = SubmitOptions::new().with_tree_events();
        let mut handle = coordinator
            .try_spawn(task, ExecutionMode::ASYNC, tree)
            .unwrap();
        read_all(&mut handle).await;
        let job = coordinator.job(&id).unwrap();
        assert_eq!(
            job.result(),
            Some(JobResult::Success),
            "{id}: the job is closed"
        );
        assert_eq!(handle.await.unwrap(), 1);
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A waker that notes it was woken.
#[derive(Default)]
struct Woken(AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A task of a batch that waits for a place under its mode's limit joins the tree as it is
/// accepted: its reader hears it then, not once the place frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_task_waiting_for_a_place_is_heard_joining_at_once() {
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(2)
        .build()
        .unwrap();
    let builder = coordinator::Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded)
        .limit(ExecutionMode::THREADED, 1);
    let (publisher, coordinator) = support::started_from(builder);
    let (hold, held) = std::sync::mpsc::channel::<()>();
    let blocker = Task::blocking("blocker", "blocker", move || {
        held.recv().ok();
        Ok::<_, BoxError>(())
    });
    let blocker = coordinator.try_spawn(blocker, ExecutionMode::THREADED, SubmitOptions::new());
    let go = Arc::new(Notify::new());
    let (on, start) = (coordinator.clone(), Arc::clone(&go));
    let root = Task::from_fn("root", "root", move || async move {
        start.notified().await;
        let queued = Task::blocking("queued", "queued", || Ok::<_, BoxError>(()));
        let batch = on.submit_many([queued], ExecutionMode::THREADED, SubmitOptions::new())?;
        batch.all().await;
        Ok::<_, BoxError>(())
    });
    let tree = SubmitOptions::new().with_tree_events();
    let mut handle = coordinator
        .try_spawn(root, ExecutionMode::ASYNC, tree)
        .unwrap();
    assert_eq!(
        line(&read(&mut handle, 1).await[0]),
        "joined root (parent none)"
    );
    // The reader waits before the root submits the batch, and must be woken to the joining.
    let joined = {
        let woken = Arc::new(Woken::default());
        let waker = std::task::Waker::from(Arc::clone(&woken));
        let mut cx = std::task::Context::from_waker(&waker);
        let mut next = std::pin::pin!(handle.next_tree_event());
        assert!(next.as_mut().poll(&mut cx).is_pending());
        go.notify_one();
        within("the reader's wake", async {
            while !woken.0.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        next.as_mut().poll(&mut cx)
    };
    let std::task::Poll::Ready(Some(joined)) = joined else {
        panic!("woken with nothing to read: {joined:?}");
    };
    assert!(line(&joined).starts_with("joined queued "));
    hold.send(()).unwrap();
    within("the root", handle).await.unwrap();
    within("the blocker", blocker.unwrap()).await.unwrap();
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// Agents each await a threaded and an async tool: in every tree the tools end before the agent,
/// however the threads that end them race (the agent's node is woken by a tool's answer and may
/// end at once on another thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaited_child_ends_before_its_parent_in_the_tree() {
    let pool = ThreadedExecutionStrategy::builder().threads(2);
    let (publisher, coordinator) = started_threaded(pool);
    let agents = (0..1_000).map(|i| {
        let on = coordinator.clone();
        let agent = Task::from_fn(format!("a{i}"), "agent", move || async move {
            let threaded = Task::blocking(format!("a{i}/t"), "tool", || Ok::<_, BoxError>(1));
            let quick = Task::from_fn(format!("a{i}/q"), "tool", || async { Ok::<_, BoxError>(1) });
            let (t, q) = tokio::join!(
                on.submit(threaded, ExecutionMode::THREADED),
                on.submit(quick, ExecutionMode::ASYNC)
            );
            Ok::<_, BoxError>(t? + q?)
        });
        let tree = SubmitOptions::new().with_tree_events();
        let mut handle = coordinator
            .try_spawn(agent, ExecutionMode::ASYNC, tree)
            .unwrap();
        async move {
            let ends: Vec<String> = read_all(&mut handle)
                .await
                .into_iter()
                .filter(|l| l.contains(" ended "))
                .collect();
            assert_eq!(ends.len(), 3, "{ends:?}");
            assert_eq!(ends[2], format!("a{i} ended success"), "{ends:?}");
            handle.await.unwrap()
        }
    });
    let answers = futures::future::join_all(agents).await;
    assert_eq!(answers.iter().sum::<u64>(), 2_000);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
