//! The code of `docs/process.md` (and the README's worker `main`), compiled and run: this
//! program is its own worker. `cargo xtask docs --check` fails when a snippet on those pages is
//! not found here, line for line.
//!
//! Run with `cargo run -p coordinator --all-features --example process_guide`.

use std::time::Duration;

use coordinator::{Coordinator, ExecutionMode, NodeRegistry, ProcessExecutionStrategy, Task};

// Each item is kept as the page shows it (`rustfmt::skip`).
#[rustfmt::skip]
use serde::{Deserialize, Serialize};
#[rustfmt::skip]
use coordinator::{BoxError, Node, PortableNode};

#[rustfmt::skip]
#[derive(Serialize, Deserialize)]
struct Resize { image: Vec<u8>, width: u32 }

#[rustfmt::skip]
impl Node for Resize {
    type Output = Vec<u8>;                      // Serialize + Deserialize + Debug
    async fn invoke(self) -> Result<Vec<u8>, BoxError> { /* ... */ Ok(self.image) }
}

#[rustfmt::skip]
impl PortableNode for Resize {
    const NAME: &'static str = "resize";        // keep it stable across versions
}

#[rustfmt::skip]
fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Resize>().expect("one type per name");
    registry
}

#[rustfmt::skip]
fn main() {
    coordinator::run_worker_if_requested(&registry()); // returns at once unless started as a worker
    run_the_program();                                 // the program proper
}

fn run_the_program() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if let Err(e) = runtime.block_on(start_the_pool()) {
        eprintln!("process guide failed: {e}");
        std::process::exit(1);
    }
    println!("every section of the process guide ran");
}

#[rustfmt::skip]
async fn start_the_pool() -> Result<(), Box<dyn std::error::Error>> {
    let publisher = coordinator::RequestCompletionPublisher::new();
    publisher.start()?;
    let image = vec![7_u8; 256];
let process = ProcessExecutionStrategy::builder(registry())
    .workers(4)                               // default: one per core
    .tasks_per_worker(1)                      // running at once in a worker (the default)
    .prefetch(16)                             // more queued in each worker; submit waits beyond
    .task_timeout(Duration::from_secs(30))    // cancel a task that runs longer than this
    .cancel_grace(Duration::from_secs(1))     // then kill its worker if it has not stopped
    .poison_after(2)                          // crashes in a row before a task is poison
    .recycle_after(10_000)                    // replace workers after this many tasks
    .max_frame(16 << 20)                      // largest task or output, in bytes
    .start()
    .await?;                                  // every worker started and handshaken
let coordinator = Coordinator::builder().with_async().strategy(ExecutionMode::PROCESS, process).build();
coordinator.start(&publisher)?;
let small: Vec<u8> = coordinator.submit(Task::portable("r1", Resize { image, width: 64 }), "process").await?;
    assert_eq!(small, vec![7_u8; 256]);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    Ok(())
}
