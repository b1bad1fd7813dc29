//! The per-task hot pieces on their own: job table add + end, and one publish to k subscribers
//! beside tokio::sync::broadcast.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pubsub::Publisher;
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a tokio runtime");
    const MESSAGES: u64 = 10_000;
    let mut group = c.benchmark_group("publish_fan_out");
    group.throughput(Throughput::Elements(MESSAGES));
    for subscribers in [1_usize, 4, 16] {
        group.bench_with_input(
            BenchmarkId::new("publisher", subscribers),
            &subscribers,
            |b, &k| {
                b.iter(|| {
                    rt.block_on(async {
                        let p = Publisher::<u64>::with_capacity(1024);
                        p.start().expect("start");
                        let readers: Vec<_> = (0..k)
                            .map(|_| {
                                let mut s = p.subscribe_stream().expect("subscribe");
                                tokio::spawn(async move {
                                    let mut n = 0_u64;
                                    while s.recv().await.is_some() {
                                        n += 1;
                                    }
                                    n
                                })
                            })
                            .collect();
                        for i in 0..MESSAGES {
                            p.publish(i).await.expect("running");
                        }
                        p.shutdown().await;
                        for r in readers {
                            assert_eq!(r.await.expect("reader"), MESSAGES);
                        }
                    })
                });
            },
        );
        group.bench_with_input(
            BenchmarkId::new("tokio_broadcast", subscribers),
            &subscribers,
            |b, &k| {
                b.iter(|| {
                    rt.block_on(async {
                        let (tx, _) = tokio::sync::broadcast::channel::<u64>(1024);
                        let readers: Vec<_> = (0..k)
                            .map(|_| {
                                let mut rx = tx.subscribe();
                                tokio::spawn(async move {
                                    let mut n = 0_u64;
                                    loop {
                                        match rx.recv().await {
                                            Ok(_) => n += 1,
                                            Err(
                                                tokio::sync::broadcast::error::RecvError::Lagged(m),
                                            ) => n += m,
                                            Err(
                                                tokio::sync::broadcast::error::RecvError::Closed,
                                            ) => break,
                                        }
                                    }
                                    n
                                })
                            })
                            .collect();
                        for i in 0..MESSAGES {
                            tx.send(i).expect("receivers alive");
                        }
                        drop(tx);
                        for r in readers {
                            black_box(r.await.expect("reader"));
                        }
                    })
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, state, publish);
criterion_main!(benches);
