//! The design document's two use cases, end to end on the async strategy:
//! 1.1 submitting tasks to a coordinator, 1.2 managing jobs in a `CoordinatorState`.
//! Prints every completion message as it is published, then the coordinator's system detail.
//!
//! Run with `cargo run -p coordinator --example seed` (`RUST_LOG=debug` shows the task spans).

use std::time::Duration;

use anyhow::Context;
use coordinator::{
    BoxError, Coordinator, CoordinatorState, ExecutionMode, JobResult, Node,
    RequestCompletionPublisher, Task,
};
use tracing_subscriber::EnvFilter;

/// A node that "calls a model": an I/O-bound step simulated by a short sleep.
struct Summarize {
    text: String,
}

impl Node for Summarize {
    type Output = String;

    fn name(&self) -> std::borrow::Cow<'static, str> {
        "summarize".into()
    }

    async fn invoke(self) -> Result<String, BoxError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let first = self.text.split('.').next().unwrap_or_default();
        Ok(format!("{first}."))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();

    // 1.1 Task submission and execution.
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    publisher.subscribe(|message| match message {
        Ok(message) => println!("bus: {message}"),
        Err(missed) => println!("bus: {missed}"),
    })?;

    let coordinator = Coordinator::builder().with_async().build();
    coordinator.start(&publisher)?;

    let task = Task::new(
        "123",
        Summarize {
            text: "Rust makes concurrency safe. Everything else follows.".into(),
        },
    );
    let summary = coordinator.submit(task, ExecutionMode::ASYNC).await?;
    println!("request 123 -> {summary:?}");

    // A parent node that fans out to children through the same coordinator.
    let c = coordinator.clone();
    let planner = Task::from_fn("124", "planner", move || async move {
        let lookups = (0..3).map(|i| {
            let c = c.clone();
            async move {
                let child = Task::from_fn(format!("124.{i}"), "lookup", move || async move {
                    Ok::<_, BoxError>(i * 10)
                });
                c.submit(child, ExecutionMode::ASYNC).await
            }
        });
        let total: i32 = futures::future::try_join_all(lookups).await?.iter().sum();
        Ok::<_, BoxError>(total)
    });
    println!(
        "request 124 -> {}",
        coordinator.submit(planner, "async").await?
    );

    // A failing node is reported, not lost.
    let flaky: Task<()> = Task::from_fn("125", "flaky", || async { Err("upstream unavailable") });
    if let Err(error) = coordinator.submit(flaky, "async").await {
        println!("request 125 -> error: {error}");
    }

    // 1.2 Job management, directly on a CoordinatorState.
    let mut state = CoordinatorState::empty();
    let task = Task::new(
        "123",
        Summarize {
            text: String::new(),
        },
    );
    state.add_job(&task)?;
    state.end_job("123", "success".parse::<JobResult>()?)?;
    let job = state.get("123").context("job 123 was just added")?;
    println!(
        "state: job {} is {:?} with {:?}",
        job.request_id(),
        job.status(),
        job.result()
    );

    coordinator.shutdown().await;
    publisher.shutdown().await;
    println!(
        "system detail:\n{}",
        serde_json::to_string_pretty(&coordinator.system_detail())?
    );
    Ok(())
}
