//! The `metrics` feature of the process pool: a recorder sees each worker exit, restart and
//! poisoned task. (Its own binary: the recorder is global to the process, and the binary is
//! also the worker program.)

use std::time::Duration;

use exec_strategies::{ProcessExecutionStrategy, run_worker_if_requested};
use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
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

#[derive(Serialize, Deserialize)]
struct Fine;
impl Node for Fine {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Ok(())
    }
}
impl PortableNode for Fine {
    const NAME: &'static str = "fine";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Exit>().unwrap();
    registry.register::<Fine>().unwrap();
    registry
}

/// Waits (a minute at most) until `pool` has started `n` workers in place of ended ones: the
/// replacements start after a backoff.
async fn replaced(pool: &ProcessExecutionStrategy, n: u64) {
    tokio::time::timeout(Duration::from_secs(60), async {
        while pool.restarts() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the ended workers are replaced");
}

/// The counter `name` (with `label`, when given) in a recorder's snapshot.
fn counter(
    snapshot: &[(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)],
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<u64> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let labelled =
            label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v));
        match value {
            DebugValue::Counter(n) if key.name() == name && labelled => Some(*n),
            _ => None,
        }
    })
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
        replaced(&pool, 2).await;
        // One snapshot: taking one resets the recorder's counters.
        let snapshot = snapshotter.snapshot().into_vec();
        let counted = |name: &str, label: Option<(&str, &str)>| counter(&snapshot, name, label);
        assert_eq!(
            counted("process_worker_exits_total", Some(("how", "crashed"))),
            Some(2)
        );
        assert_eq!(counted("process_worker_restarts_total", None), Some(2));
        assert_eq!(counted("process_tasks_poisoned_total", None), Some(1));
        pool.shutdown(Duration::from_secs(5)).await;

        // A worker retired after its quota of tasks has not crashed. (The snapshot above reset
        // the counts.)
        let recycled = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .recycle_after(1)
            .start()
            .await
            .unwrap();
        for _ in 0..2 {
            task_core::run(&recycled, Task::portable("fine", Fine).into_erased())
                .await
                .unwrap();
        }
        replaced(&recycled, 1).await;
        let after = snapshotter.snapshot().into_vec();
        let exits = |how: &str| counter(&after, "process_worker_exits_total", Some(("how", how)));
        assert!(exits("retired") >= Some(1), "{after:?}");
        assert_eq!(exits("crashed").unwrap_or(0), 0, "{after:?}");
        recycled.shutdown(Duration::from_secs(5)).await;

        // A worker due for retirement that crashes running its last task has crashed.
        let due = ProcessExecutionStrategy::builder(registry())
            .workers(1)
            .recycle_after(1)
            .start()
            .await
            .unwrap();
        let error = task_core::run(&due, Task::portable("x", Exit).into_erased())
            .await
            .unwrap_err();
        assert!(error.is_worker_lost(), "{error:?}");
        replaced(&due, 1).await;
        let after = snapshotter.snapshot().into_vec();
        let exits = |how: &str| counter(&after, "process_worker_exits_total", Some(("how", how)));
        assert_eq!(exits("crashed"), Some(1), "{after:?}");
        due.shutdown(Duration::from_secs(5)).await;
    });
    println!("process metrics: ok");
}
