//! Streaming from a running node: `broadcast` reaches the bus and, when asked for, the caller's
//! handle, in the order sent and before the request's terminal message, on the in-process
//! modes (the process and NATS modes have their own tests).

mod support;

use std::time::Duration;

use coordinator::{
    BoxError, Buffer, Coordinator, ExecutionMode, RequestCompletionMessage,
    RequestCompletionPublisher, SubmitOptions, Task, ThreadedExecutionStrategy, broadcast,
    current_node_cancelled,
};
use futures::StreamExt;

const TOKENS: usize = 200;

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

fn started() -> (RequestCompletionPublisher, Coordinator) {
    support::started_threaded(ThreadedExecutionStrategy::builder().threads(2))
}

/// A task on `mode` that broadcasts `token-0` .. `token-{n-1}`, then returns `n`.
fn streamer(id: &str, mode: &ExecutionMode, n: usize) -> Task<usize> {
    let send = move || -> Result<usize, BoxError> {
        for i in 0..n {
            broadcast(format!("token-{i}"))?;
        }
        Ok(n)
    };
    if *mode == ExecutionMode::THREADED {
        Task::blocking(id.to_string(), "streamer", send)
    } else {
        Task::from_fn(id.to_string(), "streamer", move || async move {
            let half = n / 2;
            for i in 0..half {
                broadcast(format!("token-{i}"))?;
            }
            // Events keep their order across the node's awaits.
            tokio::task::yield_now().await;
            for i in half..n {
                broadcast(format!("token-{i}"))?;
            }
            Ok::<_, BoxError>(n)
        })
    }
}

fn tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("token-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_the_caller_and_the_bus_in_order_before_the_terminal_message() {
    let (publisher, coordinator) = started();
    for mode in [ExecutionMode::ASYNC, ExecutionMode::THREADED] {
        let id = format!("stream-{mode}");
        // Everything about this request, nothing else: its events, then its terminal message.
        let wanted = id.clone();
        let mut about = publisher
            .subscribe_stream_where(Buffer::Unbounded, move |m: &RequestCompletionMessage| {
                m.request_id().is_some_and(|r| r.as_str() == wanted)
            })
            .unwrap();
        let options = SubmitOptions::new().with_events();
        let mut handle = coordinator
            .spawn(streamer(&id, &mode, TOKENS), mode.clone(), options)
            .await
            .unwrap();
        let mut heard = Vec::new();
        while let Some(event) = within("the events", handle.next_event()).await {
            heard.push(event.to_string());
        }
        assert_eq!(heard, tokens(TOKENS), "{mode}: the caller's events");
        assert_eq!(handle.await.unwrap(), TOKENS);

        let mut on_bus = Vec::new();
        loop {
            let message = within("the bus", about.next()).await.unwrap().unwrap();
            match message {
                RequestCompletionMessage::Broadcast(event) => {
                    assert_eq!(event.info.request_id().as_str(), id);
                    assert_eq!(event.info.name(), "streamer");
                    on_bus.push(event.event.to_string());
                }
                terminal => {
                    assert!(terminal.is_terminal(), "{mode}: {terminal}");
                    break;
                }
            }
        }
        assert_eq!(
            on_bus,
            tokens(TOKENS),
            "{mode}: every event before the terminal one"
        );
    }
    // Without `with_events`, the handle keeps nothing: the events went to the bus only.
    let mut handle = coordinator
        .spawn(
            streamer("quiet", &ExecutionMode::ASYNC, 3),
            ExecutionMode::ASYNC,
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(handle.next_event().await, None);
    assert_eq!(handle.await.unwrap(), 3);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_delays_no_node_and_is_told_what_it_missed() {
    let (publisher, coordinator) = started();
    let events = 20 * pubsub::DEFAULT_CAPACITY;
    let mut stuck = publisher
        .subscribe_stream_where(Buffer::Bounded, RequestCompletionMessage::is_broadcast)
        .unwrap();
    // A callback that blocks on its first event, forever (until the test ends).
    let (release, blocked) = std::sync::mpsc::channel::<()>();
    let blocked = std::sync::Mutex::new(blocked);
    publisher
        .subscribe(move |_| {
            let _ = blocked.lock().unwrap().recv();
        })
        .unwrap();
    for mode in [ExecutionMode::ASYNC, ExecutionMode::THREADED] {
        let id = format!("flood-{mode}");
        let sent = within(
            "a node broadcasting past every buffer",
            coordinator.submit(streamer(&id, &mode, events), mode.clone()),
        )
        .await
        .unwrap();
        assert_eq!(sent, events);
    }
    drop(release);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let (mut read, mut missed) = (0, 0);
    while let Some(item) = stuck.next().await {
        match item {
            Ok(message) => {
                assert!(message.is_broadcast());
                read += 1;
            }
            Err(gap) => missed += gap.count(),
        }
    }
    // The ring kept the last messages of the bus: the second node's last events and its
    // terminal message, which the filter passes by. Everything before was overwritten, events
    // and the first terminal message alike, and counted missed.
    assert_eq!(read, pubsub::DEFAULT_CAPACITY as u64 - 1);
    assert_eq!(
        read + missed,
        2 * events as u64 + 1,
        "every message read, counted missed, or filtered out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_after_the_request_ended_is_dropped_and_outside_a_node_is_an_error() {
    let (publisher, coordinator) = started();
    assert!(broadcast("from the test").is_err());
    let mut all = publisher.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let (late_tx, late_rx) = tokio::sync::oneshot::channel();
    let slow = Task::from_fn("late", "slow", move || async move {
        broadcast("in time")?;
        tokio::time::sleep(Duration::from_secs(30)).await;
        // Never reached: the request times out first and the async strategy drops the node.
        let _ = late_tx.send(broadcast("too late").is_ok());
        Ok::<_, BoxError>(())
    });
    let options = SubmitOptions::new()
        .timeout(Duration::from_secs(1))
        .with_events();
    let mut handle = coordinator
        .spawn(slow, ExecutionMode::ASYNC, options)
        .await
        .unwrap();
    assert_eq!(handle.next_event().await.as_deref(), Some("in time"));
    assert_eq!(handle.next_event().await, None);
    assert!(handle.await.unwrap_err().is_timeout());
    // The async strategy dropped the node at the deadline: it never got to send again.
    assert!(late_rx.await.is_err());

    // A blocking node outlives its deadline: its late event goes nowhere.
    let (late_tx, late_rx) = std::sync::mpsc::channel();
    let blocking = Task::blocking("late-blocking", "slow", move || {
        let started = std::time::Instant::now();
        while !current_node_cancelled() && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        late_tx.send(broadcast("too late")).unwrap();
        Ok::<_, BoxError>(())
    });
    let options = SubmitOptions::new().timeout(Duration::from_secs(1));
    let outcome = coordinator
        .submit_with(blocking, ExecutionMode::THREADED, options)
        .await;
    assert!(outcome.unwrap_err().is_timeout());
    let sent = tokio::task::spawn_blocking(move || late_rx.recv().unwrap())
        .await
        .unwrap();
    assert!(sent.is_ok(), "still inside its node's scope");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let mut events = Vec::new();
    while let Some(Ok(message)) = all.next().await {
        if let RequestCompletionMessage::Broadcast(event) = message {
            events.push(event.event.to_string());
        }
    }
    assert_eq!(events, ["in time"], "nothing after a terminal message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_events_name_the_child() {
    let (publisher, coordinator) = started();
    let mut events = publisher
        .subscribe_stream_where(Buffer::Unbounded, RequestCompletionMessage::is_broadcast)
        .unwrap();
    let inner = coordinator.clone();
    let parent = Task::from_fn("parent", "planner", move || async move {
        broadcast("planning")?;
        let child = Task::from_fn("child", "searcher", || async {
            broadcast("searching")?;
            Ok::<_, BoxError>(1)
        });
        let found = inner.submit(child, ExecutionMode::ASYNC).await?;
        broadcast("done")?;
        Ok::<_, BoxError>(found)
    });
    assert_eq!(
        coordinator
            .submit(parent, ExecutionMode::ASYNC)
            .await
            .unwrap(),
        1
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let mut seen = Vec::new();
    while let Some(Ok(RequestCompletionMessage::Broadcast(event))) = events.next().await {
        let parent = event.info.parent_id().map(|p| p.to_string());
        seen.push((
            event.info.request_id().to_string(),
            parent,
            event.event.to_string(),
        ));
    }
    let parent_node = seen[0].clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].0.as_str(), seen[0].2.as_str()),
        ("parent", "planning")
    );
    assert_eq!(
        (seen[1].0.as_str(), seen[1].2.as_str()),
        ("child", "searching")
    );
    assert!(
        seen[1].1.is_some(),
        "the child names its parent: {parent_node:?}"
    );
    assert_eq!((seen[2].0.as_str(), seen[2].2.as_str()), ("parent", "done"));
}

/// A retried node's events are its request's, whatever the attempt: the handle reads the failed
/// attempt's events, then the next one's, and the bus carries them all before the one terminal
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_nodes_handle_reads_every_attempts_events_in_order() {
    let (publisher, coordinator) = started();
    let mut bus = publisher.subscribe_stream_with(Buffer::Unbounded).unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = attempts.clone();
    let flaky = Task::replayable_fn("flaky", "writer", move || {
        let attempt = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        async move {
            broadcast(format!("attempt-{attempt}"))?;
            if attempt == 1 {
                return Err(BoxError::from("cut off"));
            }
            broadcast("done")?;
            Ok::<_, BoxError>(attempt)
        }
    });
    let policy = coordinator::RetryPolicy::new(2).backoff(Duration::ZERO, Duration::ZERO);
    let options = SubmitOptions::new().retry(policy).with_events();
    let mut handle = coordinator
        .spawn(flaky, ExecutionMode::ASYNC, options)
        .await
        .unwrap();
    let mut read = Vec::new();
    while let Some(event) = within("the events", handle.next_event()).await {
        read.push(event.to_string());
    }
    assert_eq!(read, ["attempt-1", "attempt-2", "done"]);
    assert_eq!(within("the answer", handle).await.unwrap(), 2);
    let mut on_bus = Vec::new();
    while let Some(Ok(message)) = within("the bus", bus.next()).await {
        match message {
            RequestCompletionMessage::Broadcast(event) => on_bus.push(event.event.to_string()),
            RequestCompletionMessage::Success(_) => break,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(on_bus, read);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
