//! N trivial tasks through coordinator + publisher + state on the async strategy, beside the raw
//! baseline: tokio::spawn + a channel to one collector that tracks each id in a hash map.

use benches::{raw_tokio_spawn_channel, request_ids, runtime, started_coordinator, submit_trivial};
use coordinator::ExecutionMode;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let (publisher, coordinator) = started_coordinator(&rt, None);

    let mut group = c.benchmark_group("async_trivial_tasks");
    for n in [1_000_u64, 10_000] {
        let ids = request_ids(n);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("coordinator", n), &ids, |b, ids| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| submit_trivial(&rt, &coordinator, ids, &ExecutionMode::ASYNC))
                    .sum()
            });
        });
        group.bench_with_input(
            BenchmarkId::new("raw_tokio_spawn_channel", n),
            &ids,
            |b, ids| {
                b.iter_custom(|iters| (0..iters).map(|_| raw_tokio_spawn_channel(&rt, ids)).sum());
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
