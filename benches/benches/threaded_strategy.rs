//! N trivial blocking tasks through coordinator + publisher + state on the threaded strategy,
//! beside the raw baseline: rayon::spawn + a crossbeam channel to one collector that tracks each
//! id in a hash map.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, RequestId, Task,
    ThreadedExecutionStrategy,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a rayon pool"),
    );
    let (publisher, coordinator) = rt.block_on(async {
        let publisher = RequestCompletionPublisher::new();
        publisher.start().expect("start publisher");
        let threaded = ThreadedExecutionStrategy::builder()
            .pool(Arc::clone(&pool))
            .build()
            .expect("threaded strategy");
        let coordinator = Coordinator::builder()
            .strategy(ExecutionMode::THREADED, threaded)
            .build();
        coordinator.start(&publisher).expect("start coordinator");
        (publisher, coordinator)
    });

    let mut group = c.benchmark_group("threaded_trivial_tasks");
    for n in [1_000_u64, 10_000] {
        let ids: Vec<RequestId> = (0..n).map(|i| RequestId::from(format!("r{i}"))).collect();
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("coordinator", n), &ids, |b, ids| {
            b.iter(|| {
                rt.block_on(async {
                    let calls = ids.iter().enumerate().map(|(i, id)| {
                        let task = Task::blocking(id.clone(), "trivial", move || {
                            Ok::<_, BoxError>(black_box(i))
                        });
                        coordinator.submit(task, ExecutionMode::THREADED)
                    });
                    black_box(futures::future::join_all(calls).await.len())
                })
            });
        });
        group.bench_with_input(
            BenchmarkId::new("raw_rayon_spawn_crossbeam", n),
            &ids,
            |b, ids| {
                b.iter(|| {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    for (i, id) in ids.iter().enumerate() {
                        let tx = tx.clone();
                        let id = id.clone();
                        pool.spawn(move || {
                            let _ = tx.send((id, black_box(i)));
                        });
                    }
                    drop(tx);
                    let mut seen: HashMap<RequestId, usize> = HashMap::with_capacity(ids.len());
                    for (id, value) in rx.iter() {
                        seen.insert(id, value);
                    }
                    black_box(seen.len())
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
