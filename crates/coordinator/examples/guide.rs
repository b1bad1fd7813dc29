//! The code of `docs/getting-started.md`, `docs/reliability.md` and the README's threaded
//! snippet, compiled and run. `cargo xtask docs --check` fails when a snippet on those pages is
//! not found here, line for line, so the pages cannot drift from the API.
//!
//! Run with `cargo run -p coordinator --all-features --example guide`. The sections are kept as
//! the pages show them (`rustfmt::skip`); what each one does is checked as it runs.

use std::error::Error;
use std::time::Duration;

use coordinator::{
    Buffer, Coordinator, CoordinatorState, ExecutionMode, JobResult, RequestCompletionPublisher,
    Retention, RetryPolicy, SubmitOptions, Task, ThreadedExecutionStrategy, block_on,
};
use futures::StreamExt;

type Fallible<T = ()> = std::result::Result<T, Box<dyn Error>>;

// Section 2 of getting-started.md: a node, each item kept as the page shows it.
#[rustfmt::skip]
use coordinator::{BoxError, Node};

#[rustfmt::skip]
#[derive(Clone)]                                // replayable tasks (retries) clone their node
struct Summarize { text: String }

#[rustfmt::skip]
impl Node for Summarize {
    type Output = String;                       // Debug + Send + Sync + 'static
    fn name(&self) -> std::borrow::Cow<'static, str> { "summarize".into() }
    async fn invoke(self) -> Result<String, BoxError> {
        Ok(self.text.split('.').next().unwrap_or_default().to_string())
    }
}

/// The README's CPU-bound node.
fn count_primes(below: u64) -> Result<u64, BoxError> {
    Ok((2..below)
        .filter(|n| (2..).take_while(|d| d * d <= *n).all(|d| n % d != 0))
        .count() as u64)
}

#[rustfmt::skip]
async fn start() -> Fallible<(RequestCompletionPublisher, Coordinator)> {
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    let coordinator = Coordinator::builder()
        .with_async()                                 // ExecutionMode::ASYNC -> AsyncExecutionStrategy
        .strategy("inline", exec_inline::InlineStrategy::default()) // any strategy, any name
        .build();
    coordinator.start(&publisher)?;
    let mine = Task::from_fn("mine", "add", || async { Ok::<_, BoxError>(2 + 2) });
    assert_eq!(coordinator.submit(mine, "inline").await?, 4);
    Ok((publisher, coordinator))
}

/// Sections 4 and 5 of getting-started.md: subscribe, then submit; what each subscriber heard.
#[rustfmt::skip]
async fn watch_then_submit(publisher: &RequestCompletionPublisher, coordinator: &Coordinator) -> Fallible {
    publisher.subscribe(|message| match message {                    // on a thread of its own
        Ok(message) => println!("{message}"),                        // "summarize DONE with result ..."
        Err(missed) => eprintln!("{missed}"),                        // fell a whole buffer behind
    })?;
    let mut stream = publisher.subscribe_stream()?;                  // a futures::Stream of Result<_, Missed>
    let done = publisher.listener(|m| m.is_terminal()                 // its end, not an event
            && m.request_id().is_some_and(|id| id.as_str() == "123"),
        |m| m.to_string());                                          // first match; subscribed now

    let mut only_124 = publisher.subscribe_stream_where(Buffer::Bounded,  // filtered as it is read
        |m| m.request_id().is_some_and(|id| id.as_str() == "124"))?;
    publisher.subscribe_where(Buffer::Unbounded, |m| m.is_broadcast(),     // a node's events, all
        |event| if let Ok(event) = event { println!("{event}") })?;

    let text = "Rust makes concurrency safe. Everything else follows.".to_string();
    let summary: String = coordinator.submit(Task::new("123", Summarize { text }), ExecutionMode::ASYNC).await?;
    println!("{}", done.await?);                                     // "summarize DONE with result ..."
    assert_eq!(summary, "Rust makes concurrency safe");

    deadlines_cancellation_retries(coordinator).await?;
    let first = stream.next().await.ok_or("the stream ended")??;
    assert_eq!(first.request_id().map(|id| id.as_str()), Some("123"));
    let first = only_124.next().await.ok_or("the stream ended")??;
    assert_eq!(first.request_id().map(|id| id.as_str()), Some("124"));
    Ok(())
}

#[rustfmt::skip]
async fn deadlines_cancellation_retries(coordinator: &Coordinator) -> Fallible {
    let text = "Replayable. Because it can be rebuilt.".to_string();
    let options = SubmitOptions::new()
        .timeout(Duration::from_secs(10))
        .retry(RetryPolicy::new(3)                           // replayable tasks only
            .attempt_timeout(Duration::from_secs(3)));          // one that hangs is retried
    let answer = coordinator.submit_with(Task::replayable("124", Summarize { text }), "async", options).await?;

    let slow = Task::from_fn("125", "slow", || async {       // a node that waits a long while
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, BoxError>(())
    });
    let handle = coordinator.spawn(slow, "async", SubmitOptions::new()).await?;   // accepted now
    handle.cancel();                                          // ends as cancelled, children too
    let result = handle.await;                                // Err(e) with e.is_cancelled()
    assert_eq!(answer, "Replayable");
    assert!(result.is_err_and(|e| e.is_cancelled()));
    Ok(())
}

#[rustfmt::skip]
async fn inspect_and_shut_down(publisher: RequestCompletionPublisher, coordinator: Coordinator) -> Fallible {
    let detail = coordinator.system_detail();             // counts, jobs, per-mode requests and stats
    println!("{}", serde_json::to_string_pretty(&detail)?);
    coordinator.shutdown().await;                          // stop accepting, drain; cancel what is left after 30 s
    publisher.shutdown().await;                            // deliver what was published, then stop
    assert!(!coordinator.is_accepting());
    Ok(())
}

#[rustfmt::skip]
fn job_management_without_a_coordinator() -> Fallible {
    let task = Task::from_fn("123", "lookup", || async { Ok::<_, BoxError>(42) });
    let mut state = CoordinatorState::empty();
    state.add_job(&task)?;                                 // error if that request id is still open
    state.end_job("123", JobResult::Success)?;             // error if unknown or already closed
    assert_eq!(state.counts().succeeded, 1);
    Ok(())
}

#[rustfmt::skip]
async fn threaded_mode() -> Fallible {
    let threaded = ThreadedExecutionStrategy::builder()
        .threads(4)                 // default: one per core; or .pool(your_arc_thread_pool)
        .thread_name("cpu")         // threads are cpu-0, cpu-1, ...
        .max_in_flight(64)          // tasks in the pool at once (not those beneath one in it); the rest queue
        .build()?;
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    let coordinator = Coordinator::builder().with_async().strategy(ExecutionMode::THREADED, threaded).build();
    coordinator.start(&publisher)?;
    let c = coordinator.clone();
    let parent = Task::blocking("parent", "parent", move || {   // a blocking node that waits for a child
        block_on(c.submit(Task::blocking("child", "child", || Ok::<_, BoxError>(20)), "threaded"))
            .map(|child| child + 1)
            .map_err(BoxError::from)
    });
    let answer = coordinator.submit(parent, "threaded").await?;   // 21
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(answer, 21);
    Ok(())
}

/// The README's threaded example.
#[rustfmt::skip]
async fn readme_threaded() -> Fallible {
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    let threaded = ThreadedExecutionStrategy::builder().threads(4).max_in_flight(64).build()?;
    let coordinator = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded)
        .build();
    coordinator.start(&publisher)?;
    let primes = coordinator.submit(Task::blocking("p", "primes", || count_primes(1_000_000)), "threaded").await?;
    assert_eq!(primes, 78_498);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    Ok(())
}

/// reliability.md's retry example.
#[rustfmt::skip]
async fn retries(coordinator: &Coordinator) -> Fallible {
    let task = Task::replayable("r1", Summarize { text: "Retried. Not needed.".into() });
use std::time::Duration;
use coordinator::{RetryPolicy, SubmitOptions};

let options = SubmitOptions::new()
    .timeout(Duration::from_secs(5))                    // covers every attempt and the backoff
    .retry(RetryPolicy::new(3)                          // up to 3 attempts in all
        .backoff(Duration::from_millis(100), Duration::from_secs(5))
        .retry_if(|e| e.is_worker_lost() || e.is_node_error()));
let value = coordinator.submit_with(task, "threaded", options).await?;
    assert_eq!(value, "Retried");
    Ok(())
}

/// reliability.md's limits and retention.
#[rustfmt::skip]
fn limits_and_retention() {
let coordinator = Coordinator::builder()
    .with_async()
    .limit("async", 256)
    .build();
    drop(coordinator);
let coordinator = Coordinator::builder()
    .with_async()
    .retention(Retention::KeepLast(10_000))
    .build();
    drop(coordinator);
}

#[tokio::main]
async fn main() -> Fallible {
    let (publisher, coordinator) = start().await?;
    watch_then_submit(&publisher, &coordinator).await?;
    inspect_and_shut_down(publisher, coordinator).await?;
    job_management_without_a_coordinator()?;
    threaded_mode().await?;

    readme_threaded().await?;
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    let threaded = ThreadedExecutionStrategy::builder().threads(2).build()?;
    let coordinator = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::THREADED, threaded)
        .build();
    coordinator.start(&publisher)?;
    retries(&coordinator).await?;
    coordinator.shutdown().await;
    publisher.shutdown().await;
    limits_and_retention();
    println!("every section of the guide ran");
    Ok(())
}
