//! The per-task hot pieces on their own: job table add + end, and one publish to k subscribers
//! beside tokio::sync::broadcast.

use std::hint::black_box;

use benches::{broadcast_fan_out, publish_fan_out};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use task_core::{CoordinatorState, JobResult, NodeId, RequestId, TaskInfo};

fn state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_add_end");
    for prefill in [0_usize, 100_000] {
        group.bench_with_input(
            BenchmarkId::from_parameter(prefill),
            &prefill,
            |b, &prefill| {
                let mut state = CoordinatorState::empty();
                for i in 0..prefill {
                    let info =
                        TaskInfo::new(format!("old{i}").into(), NodeId::generate(), None, "n");
                    state.add_job(&info).expect("fresh id");
                    state
                        .end_job(&format!("old{i}"), JobResult::Success)
                        .expect("open");
                }
                let info = TaskInfo::new(RequestId::from("hot"), NodeId::from("node"), None, "n");
                b.iter(|| {
                    state
                        .add_job(black_box(&info))
                        .expect("closed ids can be reused");
                    state.end_job("hot", JobResult::Success).expect("open");
                });
            },
        );
    }
    group.finish();
}

fn publish(c: &mut Criterion) {
    let rt = benches::runtime();
    const MESSAGES: u64 = 10_000;
    let mut group = c.benchmark_group("publish_fan_out");
    group.throughput(Throughput::Elements(MESSAGES));
    for subscribers in [1_usize, 4, 16] {
        group.bench_with_input(
            BenchmarkId::new("publisher", subscribers),
            &subscribers,
            |b, &k| {
                b.iter_custom(|iters| (0..iters).map(|_| publish_fan_out(&rt, k, MESSAGES)).sum());
            },
        );
        group.bench_with_input(
            BenchmarkId::new("tokio_broadcast", subscribers),
            &subscribers,
            |b, &k| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| broadcast_fan_out(&rt, k, MESSAGES))
                        .sum()
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, state, publish);
criterion_main!(benches);
