//! The process strategy beside a raw baseline, in the same run:
//! - round trip: one trivial task through the strategy vs one length-prefixed frame of the same
//!   bytes written to a child that echoes it back over pipes;
//! - throughput: N trivial tasks in flight at once over 2 workers.
//!
//! The bench binary is its own worker (its `main` enters worker mode first) and, with
//! `RAW_ECHO=1`, the echo child of the baseline.

use std::hint::black_box;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use benches::{Echo, raw_echo_child, registry};
use coordinator::{
    PortableNode, ProcessExecutionStrategy, Task, TaskExecutionStrategy, run_worker_if_requested,
};
use criterion::{BenchmarkId, Criterion, Throughput};
use exec_strategies::process::wire::{self, ToWorker};

fn bench(c: &mut Criterion) {
    let rt = benches::runtime();
    let strategy = rt.block_on(async {
        ProcessExecutionStrategy::builder(registry())
            .workers(2)
            .prefetch(511)
            .start()
            .await
            .expect("worker pool")
    });

    // The same bytes the strategy sends for one task.
    let payload = task_core::encode(&Echo(7)).expect("encodable");
    let frame = wire::encode_frame(
        &ToWorker::Run {
            id: 1,
            name: Echo::NAME.into(),
            payload,
            announce: false,
        },
        wire::DEFAULT_MAX_FRAME,
    )
    .expect("a small frame");
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env("RAW_ECHO", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo child");
    let mut to_child = child.stdin.take().expect("piped stdin");
    let mut from_child = child.stdout.take().expect("piped stdout");

    let mut group = c.benchmark_group("process_round_trip");
    group.bench_function("process_strategy", |b| {
        b.iter(|| {
            rt.block_on(async {
                let task = Task::portable("r", Echo(7)).into_erased();
                black_box(task_core::run(&strategy, task).await.expect("echo"))
            })
        });
    });
    group.bench_function("raw_pipe_echo", |b| {
        let mut back = vec![0; frame.len()];
        b.iter(|| {
            to_child.write_all(&frame).expect("write");
            to_child.flush().expect("flush");
            from_child.read_exact(&mut back).expect("read");
            black_box(&back);
        });
    });
    group.finish();

    let mut group = c.benchmark_group("process_throughput_2_workers");
    let n = 10_000_u64;
    group.throughput(Throughput::Elements(n));
    group.measurement_time(Duration::from_secs(10));
    group.bench_with_input(BenchmarkId::new("pipelined", n), &n, |b, &n| {
        b.iter(|| {
            rt.block_on(async {
                let calls = (0..n).map(|i| {
                    let task = Task::portable("r", Echo(i)).into_erased();
                    task_core::run(&strategy, task)
                });
                black_box(futures::future::join_all(calls).await.len())
            })
        });
    });
    group.finish();

    drop(to_child);
    let _ = child.wait();
    rt.block_on(strategy.shutdown(Duration::from_secs(5)));
}

fn main() {
    if std::env::var_os("RAW_ECHO").is_some() {
        raw_echo_child();
    }
    run_worker_if_requested(&registry());
    let mut criterion = Criterion::default().configure_from_args();
    bench(&mut criterion);
    criterion.final_summary();
}
