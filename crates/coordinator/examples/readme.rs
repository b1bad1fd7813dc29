//! The README's first example, as it is shown there (`cargo xtask docs --check` fails when the
//! two differ). Run with `cargo run -p coordinator --example readme`.

use coordinator::{BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, Task};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    publisher.subscribe(|message| match message {
        Ok(message) => println!("{message}"), // "greet DONE with result \"hello\""
        Err(missed) => eprintln!("{missed}"), // it fell a whole buffer behind
    })?;

    let coordinator = Coordinator::builder().with_async().build();
    coordinator.start(&publisher)?;

    let task = Task::from_fn("123", "greet", || async { Ok::<_, BoxError>("hello") });
    let greeting: &str = coordinator.submit(task, ExecutionMode::ASYNC).await?;
    println!("{greeting}; jobs: {:?}", coordinator.system_detail().counts);

    coordinator.shutdown().await;
    publisher.shutdown().await;
    Ok(())
}
