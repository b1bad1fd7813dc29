//! The `metrics` feature of the process pool: a recorder sees each worker exit, restart and
//! poisoned task. (Its own binary: the recorder is global to the process, and the binary is
//! also the worker program.)

use std::time::Duration;

use exec_strategies::{ProcessExecutionStrategy, run_worker_if_requested};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde::{Deserialize, Serialize};
use task_core::{BoxError, Node, NodeRegistry, PortableNode, Task, TaskExecutionStrategy};

#[derive(Serialize, Deserialize)]
struct Exit;
impl Node for Exit {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        std::process::exit(3)
    }
}
impl PortableNode for Exit {
    const NAME: &'static str = "exit";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Exit>().unwrap();
    registry
}

fn main() {
    run_worker_if_requested(&registry());
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .poison_after(2)
            .start()
            .await
            .unwrap();
        // Crashes its worker, is retried by nobody, fails as lost; then again: poison.
        for _ in 0..2 {
            let error = task_core::run(&pool, Task::portable("p", Exit).into_erased())
                .await
                .unwrap_err();
            assert!(error.is_worker_lost() || error.is_poison(), "{error:?}");
        }
        // The replacements start after a backoff.
        while pool.restarts() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // One snapshot: taking one resets the recorder's counters.
        let snapshot = snapshotter.snapshot().into_vec();
        let counter = |name: &str, label: Option<(&str, &str)>| {
            snapshot.iter().find_map(|(key, _, _, value)| {
                let key = key.key();
                let labelled = match label {
                    Some((k, v)) => key.labels().any(|l| l.key() == k && l.value() == v),
                    None => true,
                };
                match value {
                    DebugValue::Counter(n) if key.name() == name && labelled => Some(*n),
                    _ => None,
                }
            })
        };
        assert_eq!(
            counter("process_worker_exits_total", Some(("how", "crashed"))),
            Some(2)
        );
        assert_eq!(counter("process_worker_restarts_total", None), Some(2));
        assert_eq!(counter("process_tasks_poisoned_total", None), Some(1));
        pool.shutdown(Duration::from_secs(5)).await;
    });
    println!("process metrics: ok");
}
