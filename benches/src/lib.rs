//! What the criterion benches and the `bench-report` binary share: the trivial process-capable
//! node and its registry, the runs through the coordinator, and the raw baselines they are
//! measured against. Each run returns the time it took, so callers can interleave and repeat.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use std::sync::Arc;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, Node, NodeRegistry, PortableNode,
    RequestCompletionPublisher, RequestId, SubmitOptions, Task, ThreadedExecutionStrategy,
};
use exec_strategies::process::wire;
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

/// A trivial process-capable node: returns its number.
#[derive(Debug, Serialize, Deserialize)]
pub struct Echo(pub u64);

impl Node for Echo {
    type Output = u64;
    async fn invoke(self) -> Result<u64, BoxError> {
        Ok(self.0)
    }
}

impl PortableNode for Echo {
    const NAME: &'static str = "echo";
}

/// The registry of every benchmark binary that serves as its own process worker.
pub fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry
        .register::<Echo>()
        .expect("one type under the name");
    registry
}

/// The runtime every benchmark uses: 2 workers, like the machines these run on.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A started publisher and a coordinator with the async mode and, given a pool, the threaded
/// mode on it.
pub fn started_coordinator(
    rt: &Runtime,
    pool: Option<&Arc<rayon::ThreadPool>>,
) -> (RequestCompletionPublisher, Coordinator) {
    rt.block_on(async {
        let publisher = RequestCompletionPublisher::new();
        publisher.start().expect("start publisher");
        let mut builder = Coordinator::builder().with_async();
        if let Some(pool) = pool {
            let threaded = ThreadedExecutionStrategy::builder()
                .pool(Arc::clone(pool))
                .build()
                .expect("threaded strategy");
            builder = builder.strategy(ExecutionMode::THREADED, threaded);
        }
        let coordinator = builder.build();
        coordinator.start(&publisher).expect("start coordinator");
        (publisher, coordinator)
    })
}

/// `n` distinct request ids, made once and cloned into each run.
pub fn request_ids(n: u64) -> Vec<RequestId> {
    (0..n).map(|i| RequestId::from(format!("r{i}"))).collect()
}

/// Submits one trivial task per id, all at once, and waits for every result.
pub fn submit_trivial(
    rt: &Runtime,
    coordinator: &Coordinator,
    ids: &[RequestId],
    mode: &ExecutionMode,
) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let calls = ids.iter().enumerate().map(|(i, id)| {
            let task = if *mode == ExecutionMode::THREADED {
                Task::blocking(id.clone(), "trivial", move || {
                    Ok::<_, BoxError>(black_box(i))
                })
            } else {
                Task::from_fn(id.clone(), "trivial", move || async move {
                    Ok::<_, BoxError>(black_box(i))
                })
            };
            coordinator.submit(task, mode.clone())
        });
        let done = futures::future::join_all(calls).await;
        assert!(
            done.iter().all(Result::is_ok),
            "every trivial task succeeds"
        );
    });
    start.elapsed()
}

/// Submits one trivial async task per id in one `submit_many` batch, then awaits every output,
/// in order.
pub fn submit_batch(rt: &Runtime, coordinator: &Coordinator, ids: &[RequestId]) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let tasks = ids.iter().enumerate().map(|(i, id)| {
            Task::from_fn(id.clone(), "trivial", move || async move {
                Ok::<_, BoxError>(black_box(i))
            })
        });
        let batch = coordinator
            .submit_many(tasks, ExecutionMode::ASYNC, SubmitOptions::new())
            .expect("the batch is accepted");
        let outputs = batch.all().await;
        assert!(
            outputs.iter().all(Result::is_ok),
            "every trivial task succeeds"
        );
    });
    start.elapsed()
}

/// The async baseline: `tokio::spawn` per id, a channel to one collector tracking each id.
pub fn raw_tokio_spawn_channel(rt: &Runtime, ids: &[RequestId]) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let expected = ids.len();
        let collector = tokio::spawn(async move {
            let mut seen: HashMap<RequestId, usize> = HashMap::with_capacity(expected);
            while seen.len() < expected {
                let Some((id, value)) = rx.recv().await else {
                    break;
                };
                seen.insert(id, value);
            }
            seen.len()
        });
        for (i, id) in ids.iter().enumerate() {
            let (tx, id) = (tx.clone(), id.clone());
            tokio::spawn(async move {
                let _ = tx.send((id, black_box(i)));
            });
        }
        black_box(collector.await.expect("collector"));
    });
    start.elapsed()
}

/// The threaded baseline: `rayon::spawn` per id on `pool`, a crossbeam channel to the caller,
/// which tracks each id.
pub fn raw_rayon_spawn_crossbeam(pool: &rayon::ThreadPool, ids: &[RequestId]) -> Duration {
    let start = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    for (i, id) in ids.iter().enumerate() {
        let (tx, id) = (tx.clone(), id.clone());
        pool.spawn(move || {
            let _ = tx.send((id, black_box(i)));
        });
    }
    drop(tx);
    let mut seen: HashMap<RequestId, usize> = HashMap::with_capacity(ids.len());
    for (id, value) in rx.iter() {
        seen.insert(id, value);
    }
    black_box(seen.len());
    start.elapsed()
}

/// The process baseline's child: echoes every length-prefixed frame from stdin to stdout.
pub fn raw_echo_child() -> ! {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::BufWriter::new(std::io::stdout().lock());
    let mut buf = Vec::new();
    loop {
        let mut header = [0; wire::HEADER_LEN];
        if input.read_exact(&mut header).is_err() {
            std::process::exit(0);
        }
        buf.resize(u32::from_le_bytes(header) as usize, 0);
        let ok = input.read_exact(&mut buf).is_ok()
            && output.write_all(&header).is_ok()
            && output.write_all(&buf).is_ok()
            && output.flush().is_ok();
        if !ok {
            std::process::exit(0);
        }
    }
}

/// `messages` messages published to `subscribers` stream subscribers of a fresh publisher, each
/// read to the end. The subscribers are unbounded (`Buffer::Unbounded`): publishing never waits
/// for a subscriber, so a bounded one that fell a whole ring behind would miss messages, and every
/// subscriber must see every message, as every receiver of the baseline does (checked).
pub fn publish_fan_out(rt: &Runtime, subscribers: usize, messages: u64) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let publisher = pubsub::Publisher::<u64>::with_capacity(1024);
        publisher.start().expect("start");
        let readers: Vec<_> = (0..subscribers)
            .map(|_| {
                let mut stream = publisher
                    .subscribe_stream_with(pubsub::Buffer::Unbounded)
                    .expect("subscribe");
                tokio::spawn(async move {
                    let mut n = 0_u64;
                    while let Some(item) = stream.recv().await {
                        black_box(item.expect("an unbounded subscriber misses nothing"));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 0..messages {
            publisher.publish(i).expect("running");
        }
        publisher.shutdown().await;
        for reader in readers {
            assert_eq!(reader.await.expect("reader"), messages);
        }
    });
    start.elapsed()
}

/// The fan-out baseline: the same through `tokio::sync::broadcast`, made lossless the cheapest
/// way, as the publisher is: the sender never lets the slowest receiver fall a whole buffer
/// behind (a broadcast sender would overwrite what that receiver has not read), and waits for
/// receivers to catch up instead. Raw `broadcast` with lagging receivers skips messages: with 16
/// subscribers on 2 cores its receivers saw 18-47% of them, so it is not a fan-out of N messages.
/// Every receiver must see every message (checked).
pub fn broadcast_fan_out(rt: &Runtime, subscribers: usize, messages: u64) -> Duration {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::broadcast::error::RecvError;
    const CAPACITY: usize = 1024;
    let start = Instant::now();
    rt.block_on(async {
        let (tx, _) = tokio::sync::broadcast::channel::<u64>(CAPACITY);
        let space = Arc::new((tokio::sync::Notify::new(), AtomicBool::new(false)));
        let readers: Vec<_> = (0..subscribers)
            .map(|_| {
                let mut rx = tx.subscribe();
                let space = Arc::clone(&space);
                tokio::spawn(async move {
                    let mut n = 0_u64;
                    loop {
                        match rx.recv().await {
                            Ok(m) => {
                                black_box(m);
                                n += 1;
                                if space.1.load(Ordering::SeqCst)
                                    && space.1.swap(false, Ordering::SeqCst)
                                {
                                    space.0.notify_one();
                                }
                            }
                            Err(RecvError::Lagged(_)) => panic!("the baseline lost messages"),
                            Err(RecvError::Closed) => break,
                        }
                    }
                    n
                })
            })
            .collect();
        // `len` (messages the slowest receiver has not read) takes a lock and a search, so it is
        // read only when the messages sent since the last reading could have filled the buffer.
        let mut queued = 0;
        for i in 0..messages {
            while queued >= CAPACITY {
                let notified = space.0.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                space.1.store(true, Ordering::SeqCst);
                queued = tx.len();
                if queued < CAPACITY {
                    break;
                }
                notified.await;
                queued = tx.len();
            }
            tx.send(i).expect("receivers alive");
            queued += 1;
        }
        drop(tx);
        for reader in readers {
            assert_eq!(
                reader.await.expect("reader"),
                messages,
                "every message reached every receiver"
            );
        }
    });
    start.elapsed()
}

/// Spawns one trivial async task per id, keeping the handles, then awaits them in order: the
/// common alternative to awaiting every `submit` future at once with `join_all`.
pub fn spawn_then_await(rt: &Runtime, coordinator: &Coordinator, ids: &[RequestId]) -> Duration {
    let start = Instant::now();
    rt.block_on(async {
        let mut handles = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let task = Task::from_fn(id.clone(), "trivial", move || async move {
                Ok::<_, BoxError>(black_box(i))
            });
            let handle = coordinator
                .try_spawn(task, ExecutionMode::ASYNC, SubmitOptions::new())
                .expect("no limit is set");
            handles.push(handle);
        }
        for handle in handles {
            handle.await.expect("every trivial task succeeds");
        }
    });
    start.elapsed()
}
