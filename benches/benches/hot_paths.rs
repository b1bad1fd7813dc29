//! Criterion benches of the hot pieces, each beside its raw baseline: trivial tasks through the
//! coordinator on the async and threaded strategies, the job table's add + end, one publish to
//! 16 subscribers, and the process strategy's round trip and pipelined throughput.
//!
//! The bench binary is its own process worker and raw echo child (see
//! [`benches::serve_if_child`]).

use std::hint::black_box;
use std::time::Duration;

use benches::{Fixture, request_ids};
use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, TaskInfo};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Each group: a scenario of [`Fixture::run`] and its baseline, at each N.
const GROUPS: [(&str, [&str; 2], &[u64]); 5] = [
    (
        "async_trivial_tasks",
        ["async", "raw-async"],
        &[1_000, 10_000],
    ),
    (
        "threaded_trivial_tasks",
        ["threaded", "raw-threaded"],
        &[1_000, 10_000],
    ),
    (
        "publish_fan_out_16",
        ["fan-out-16", "broadcast-16"],
        &[10_000],
    ),
    ("process_round_trip", ["process-1", "raw-process-1"], &[100]),
    (
        "process_throughput_2_workers",
        ["process", "raw-process"],
        &[10_000],
    ),
];

fn scenarios(c: &mut Criterion) {
    let fixture = Fixture::default();
    for (name, pair, sizes) in GROUPS {
        let mut group = c.benchmark_group(name);
        for &n in sizes {
            let ids = request_ids(n);
            group.throughput(Throughput::Elements(n));
            for scenario in pair {
                let run = || fixture.run(scenario, &ids).expect("a scenario it knows");
                group.bench_function(BenchmarkId::new(scenario, n), |b| {
                    b.iter_custom(|iters| (0..iters).map(|_| run()).sum::<Duration>());
                });
            }
        }
        group.finish();
    }
    fixture.shutdown();
}

fn state(c: &mut Criterion) {
    let mut group = c.benchmark_group("state_add_end");
    for prefill in [0_usize, 100_000] {
        group.bench_function(BenchmarkId::from_parameter(prefill), |b| {
            let mut state = CoordinatorState::empty();
            for id in (0..prefill).map(|i| RequestId::from(format!("old{i}"))) {
                let info = TaskInfo::new(id.clone(), NodeId::generate(), None, "n");
                state.add_job(&info).expect("fresh id");
                state.end_job(&id, JobResult::Success).expect("open");
            }
            let info = TaskInfo::new(RequestId::from("hot"), NodeId::from("node"), None, "n");
            b.iter(|| {
                let added = state.add_job(black_box(&info));
                added.expect("closed ids can be reused");
                state.end_job("hot", JobResult::Success).expect("open");
            });
        });
    }
    group.finish();
}

fn main() {
    benches::serve_if_child();
    let mut criterion = Criterion::default().configure_from_args();
    for bench in [scenarios, state] {
        bench(&mut criterion);
    }
    criterion.final_summary();
}
