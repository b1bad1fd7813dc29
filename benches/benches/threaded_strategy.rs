//! N trivial blocking tasks through coordinator + publisher + state on the threaded strategy,
//! beside the raw baseline: rayon::spawn + a crossbeam channel to one collector that tracks each
//! id in a hash map.

use std::sync::Arc;

use benches::{
    raw_rayon_spawn_crossbeam, request_ids, runtime, started_coordinator, submit_trivial,
};
use coordinator::ExecutionMode;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a rayon pool"),
    );
    let (publisher, coordinator) = started_coordinator(&rt, Some(&pool));

    let mut group = c.benchmark_group("threaded_trivial_tasks");
    for n in [1_000_u64, 10_000] {
        let ids = request_ids(n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("coordinator", n), &ids, |b, ids| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| submit_trivial(&rt, &coordinator, ids, &ExecutionMode::THREADED))
                    .sum()
            });
        });
        group.bench_with_input(
            BenchmarkId::new("raw_rayon_spawn_crossbeam", n),
            &ids,
            |b, ids| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| raw_rayon_spawn_crossbeam(&pool, ids))
                        .sum()
                });
            },
        );
    }
    group.finish();
    rt.block_on(async {
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
