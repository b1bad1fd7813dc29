//! The process mode through the coordinator: typed results from worker processes, typed errors
//! for what cannot cross. This binary is its own worker, as an application would be.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, JobResult, Node, NodeRegistry, PortableNode,
    ProcessExecutionStrategy, RequestCompletionPublisher, Task, run_worker_if_requested,
};
use serde::{Deserialize, Serialize};
use support::Recorder;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Stats {
    words: usize,
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct Analyze(String);

impl Node for Analyze {
    type Output = Stats;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "analyze".into()
    }
    async fn invoke(self) -> Result<Stats, BoxError> {
        if self.0.is_empty() {
            return Err("nothing to analyze".into());
        }
        Ok(Stats {
            words: self.0.split_whitespace().count(),
            pid: std::process::id(),
        })
    }
}

impl PortableNode for Analyze {
    const NAME: &'static str = "analyze";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Analyze>().unwrap();
    registry
}

fn typed_results_and_failures_come_back_from_worker_processes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let publisher = RequestCompletionPublisher::new();
        publisher.start().unwrap();
        let recorder = Recorder::attach(&publisher);
        let process = ProcessExecutionStrategy::builder(registry())
            .workers(2)
            .start()
            .await
            .unwrap();
        let coordinator = Coordinator::builder()
            .with_async()
            .strategy(ExecutionMode::PROCESS, process)
            .build();
        coordinator.start(&publisher).unwrap();

        let stats = coordinator
            .submit(
                Task::portable("a", Analyze("three little words".into())),
                ExecutionMode::PROCESS,
            )
            .await
            .unwrap();
        assert_eq!(stats.words, 3);
        assert_ne!(stats.pid, std::process::id(), "it ran in another process");

        let err = coordinator
            .submit(
                Task::portable("b", Analyze(String::new())),
                ExecutionMode::PROCESS,
            )
            .await
            .unwrap_err();
        assert_eq!(err.task_error().unwrap().message(), "nothing to analyze");

        let closure = Task::from_fn("c", "closure", || async { Ok::<_, BoxError>(1) });
        let err = coordinator
            .submit(closure, ExecutionMode::PROCESS)
            .await
            .unwrap_err();
        assert!(err.task_error().unwrap().is_unsupported());

        // The same portable node runs in-process under the async mode.
        let local = coordinator
            .submit(
                Task::portable("d", Analyze("one".into())),
                ExecutionMode::ASYNC,
            )
            .await
            .unwrap();
        assert_eq!(local.pid, std::process::id());

        assert_eq!(
            coordinator.job("a").unwrap().result(),
            Some(JobResult::Success)
        );
        assert_eq!(
            coordinator.job("c").unwrap().result(),
            Some(JobResult::Failure)
        );
        let detail = serde_json::to_value(coordinator.system_detail()).unwrap();
        assert_eq!(
            detail["modes"]["process"]["workers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(detail["modes"]["process"]["restarts"], 0);

        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
        let terminal = recorder.terminal_counts();
        assert_eq!(terminal.len(), 4);
        assert!(terminal.values().all(|&n| n == 1));
        assert!(
            recorder
                .messages()
                .iter()
                .any(|m| m.to_string() == "analyze FAILED with error nothing to analyze")
        );
    });
}

fn main() {
    run_worker_if_requested(&registry());
    let tests: &[(&str, fn())] = &[(
        "typed_results_and_failures_come_back_from_worker_processes",
        typed_results_and_failures_come_back_from_worker_processes,
    )];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        if catch_unwind(AssertUnwindSafe(test)).is_ok() {
            passed += 1;
            println!("test {name} ... ok");
        } else {
            failed += 1;
            println!("test {name} ... FAILED");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
