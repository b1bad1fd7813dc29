//! The code of `docs/distributed.md`, compiled: the submitting side and a worker, for a NATS
//! cluster at `nats://queue.internal:4222` that requires TLS and a user and password, as the page
//! shows. `cargo xtask docs --check` fails when the page's snippets are not found here line for
//! line. (The tests run the same calls against the local server: `tests/`.)
//!
//! ```text
//! cargo run -p exec-nats --example cluster -- work     # a worker, until Ctrl-C
//! cargo run -p exec-nats --example cluster -- submit   # one task through the cluster
//! ```

use std::time::Duration;

use coordinator::{Coordinator, RequestCompletionPublisher, SubmitOptions, Task};
use exec_nats::example_nodes::{Echo, registry};
use exec_nats::{NatsWorker, async_nats};

type Fallible = Result<(), Box<dyn std::error::Error>>;

#[rustfmt::skip]
async fn submit() -> Fallible {
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
  use exec_nats::NatsStrategy;

  let nats = NatsStrategy::builder()
      .url("nats://queue.internal:4222")
      .connect_options(async_nats::ConnectOptions::with_user_and_password("app".into(), "secret".into())
          .require_tls(true))
      .stream("EXEC_TASKS")
      .mode("gpu")                       // tasks go to exec.run.gpu
      .start()
      .await?;
  let coordinator = Coordinator::builder().with_async().strategy("gpu", nats).build();
  coordinator.start(&publisher)?;    // the application's started publisher
  // A timeout, as "Delivery guarantees" below explains.
  let options = SubmitOptions::new().timeout(Duration::from_secs(60));
  let echoed = coordinator.submit_with(Task::portable("cluster-1", Echo(7)), "gpu", options).await?;
    println!("a worker echoed {echoed}");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    Ok(())
}

#[rustfmt::skip]
async fn work() -> Fallible {
  NatsWorker::builder(registry())
      .url("nats://queue.internal:4222")
      .mode("gpu")
      .concurrency(8)                    // tasks at once in this process
      .ack_wait(Duration::from_secs(30)) // redelivery after this long without an ack
      .max_deliver(5)                    // then the request fails, saying so
      .connect()
      .await?
      .run_until(shutdown_signal())
      .await?;
    Ok(())
}

async fn shutdown_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handler can be installed: run until the process is stopped.
        std::future::pending::<()>().await;
    }
}

#[tokio::main]
async fn main() -> Fallible {
    match std::env::args().nth(1).as_deref() {
        Some("submit") => submit().await,
        Some("work") => work().await,
        _ => Err("usage: cluster submit|work (see docs/distributed.md)".into()),
    }
}
