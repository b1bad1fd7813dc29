//! Criterion benches of the hot pieces, each beside its raw baseline: trivial tasks through the
//! coordinator on the async and threaded strategies, the job table's add + end, one publish to k
//! subscribers, and the process strategy's round trip and pipelined throughput.
//!
//! The bench binary is its own process worker and raw echo child (see
//! [`benches::serve_if_child`]).

use std::hint::black_box;
use std::time::Duration;

use benches::{Fixture, RawEcho, broadcast_fan_out, publish_fan_out, request_ids};
use coordinator::TaskExecutionStrategy;
use coordinator::{CoordinatorState, JobResult, NodeId, RequestId, TaskInfo};
use criterion::{BenchmarkId, Criterion, Throughput};

/// Runs `run` `iters` times, adding up the times it returns.
fn total(iters: u64, mut run: impl FnMut() -> Duration) -> Duration {
    (0..iters).map(|_| run()).sum()
}

fn trivial_tasks(c: &mut Criterion) {
    let fixture = Fixture::default();
    for (ours, raw) in [("async", "raw-async"), ("threaded", "raw-threaded")] {
        let mut group = c.benchmark_group(format!("{ours}_trivial_tasks"));
        for n in [1_000_u64, 10_000] {
            let ids = request_ids(n);
            group.throughput(Throughput::Elements(n));
            for (name, scenario) in [("coordinator", ours), (raw, raw)] {
                group.bench_function(BenchmarkId::new(name, n), |b| {
                    b.iter_custom(|iters| {
                        total(iters, || fixture.run(scenario, &ids).expect("known"))
                    });
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
                state
                    .add_job(black_box(&info))
                    .expect("closed ids can be reused");
                state.end_job("hot", JobResult::Success).expect("open");
            });
        });
    }
    group.finish();
}

fn publish(c: &mut Criterion) {
    const MESSAGES: u64 = 10_000;
    let rt = benches::runtime();
    let mut group = c.benchmark_group("publish_fan_out");
    group.throughput(Throughput::Elements(MESSAGES));
    for k in [1_usize, 4, 16] {
        group.bench_function(BenchmarkId::new("publisher", k), |b| {
            b.iter_custom(|iters| total(iters, || publish_fan_out(&rt, k, MESSAGES)));
        });
        group.bench_function(BenchmarkId::new("tokio_broadcast", k), |b| {
            b.iter_custom(|iters| total(iters, || broadcast_fan_out(&rt, k, MESSAGES)));
        });
    }
    group.finish();
}

fn process(c: &mut Criterion) {
    let rt = benches::runtime();
    let (pool, mut echo) = (benches::worker_pool(&rt), RawEcho::spawn());
    let mut group = c.benchmark_group("process_round_trip");
    group.bench_function("process_strategy", |b| {
        b.iter_custom(|iters| benches::process_round_trips(&rt, &pool, iters));
    });
    group.bench_function("raw_pipe_echo", |b| {
        b.iter_custom(|iters| echo.round_trips(iters))
    });
    group.finish();

    let n = 10_000_u64;
    let mut group = c.benchmark_group("process_throughput_2_workers");
    group
        .throughput(Throughput::Elements(n))
        .measurement_time(Duration::from_secs(10));
    group.bench_function(BenchmarkId::new("pipelined", n), |b| {
        b.iter_custom(|iters| total(iters, || benches::process_pipelined(&rt, &pool, n)));
    });
    group.bench_function(BenchmarkId::new("raw_pipe_echo_2_children", n), |b| {
        b.iter_custom(|iters| total(iters, || echo.pipelined(n)));
    });
    group.finish();
    rt.block_on(pool.shutdown(Duration::from_secs(5)));
}

fn main() {
    benches::serve_if_child();
    let mut criterion = Criterion::default().configure_from_args();
    for bench in [trivial_tasks, state, publish, process] {
        bench(&mut criterion);
    }
    criterion.final_summary();
}
