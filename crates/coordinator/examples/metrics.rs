//! The `metrics` feature with a Prometheus exporter: a recorder installed before the coordinator
//! is built, a few requests, then the text a scrape of `/metrics` would return.
//!
//! ```text
//! cargo run -p coordinator --features metrics --example metrics
//! ```
//!
//! A service serves `handle.render()` from its own HTTP endpoint (or turns on the exporter's
//! `http-listener` feature and lets it listen). The dashboard crate serves a `/metrics` of its
//! own, from the coordinator's overview, with no recorder at all.

use coordinator::{BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, Task};
use metrics_exporter_prometheus::PrometheusBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // First: the coordinator registers its metrics when it is built.
    let handle = PrometheusBuilder::new().install_recorder()?;
    let publisher = RequestCompletionPublisher::new();
    publisher.start()?;
    let coordinator = Coordinator::builder().with_async().build();
    coordinator.start(&publisher)?;
    for i in 0..10 {
        let task = Task::from_fn(format!("r{i}"), "square", move || async move {
            match i {
                7 => Err::<u64, BoxError>("seven is unlucky".into()),
                _ => Ok(i * i),
            }
        });
        let _ = coordinator.submit(task, ExecutionMode::ASYNC).await;
    }
    let text = handle.render();
    print!("{text}");
    assert!(text.contains(r#"coordinator_requests_total{mode="async",result="success"} 9"#));
    coordinator.shutdown().await;
    publisher.shutdown().await;
    Ok(())
}
