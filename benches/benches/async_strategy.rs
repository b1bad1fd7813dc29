//! N trivial tasks through coordinator + publisher + state on the async strategy, beside the raw
//! baseline: tokio::spawn + a channel to one collector that tracks each id in a hash map.

use std::collections::HashMap;
use std::hint::black_box;

use coordinator::{BoxError, Coordinator, RequestCompletionPublisher, RequestId, Task};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let (publisher, coordinator) = rt.block_on(async {
        let publisher = RequestCompletionPublisher::new();
        publisher.start().expect("start publisher");
        let coordinator = Coordinator::builder().with_async().build();
        coordinator.start(&publisher).expect("start coordinator");
        (publisher, coordinator)
    });

    let mut group = c.benchmark_group("async_trivial_tasks");
    for n in [1_000_u64, 10_000] {
        let ids: Vec<RequestId> = (0..n).map(|i| RequestId::from(format!("r{i}"))).collect();
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("coordinator", n), &ids, |b, ids| {
            b.iter(|| {
                rt.block_on(async {
                    let calls = ids.iter().enumerate().map(|(i, id)| {
                        let task = Task::from_fn(id.clone(), "trivial", move || async move {
                            Ok::<_, BoxError>(i)
                        });
                        coordinator.submit(task, "async")
                    });
                    let results = futures::future::join_all(calls).await;
                    black_box(results.len())
                })
            });
        });
        group.bench_with_input(
            BenchmarkId::new("raw_tokio_spawn_channel", n),
            &ids,
            |b, ids| {
                b.iter(|| {
                    rt.block_on(async {
                        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                        let expected = ids.len();
                        let collector = tokio::spawn(async move {
                            let mut seen: HashMap<RequestId, usize> =
                                HashMap::with_capacity(expected);
                            while seen.len() < expected {
                                let Some((id, value)) = rx.recv().await else {
                                    break;
                                };
                                seen.insert(id, value);
                            }
                            seen.len()
                        });
                        for (i, id) in ids.iter().enumerate() {
                            let tx = tx.clone();
                            let id = id.clone();
                            tokio::spawn(async move {
                                let value = black_box(i);
                                let _ = tx.send((id, value));
                            });
                        }
                        black_box(collector.await.expect("collector"))
                    })
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
