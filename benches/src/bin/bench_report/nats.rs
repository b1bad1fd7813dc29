//! Distributed throughput through NATS JetStream: ours (coordinator + NatsStrategy + 2 worker
//! processes) beside a raw JetStream work queue with 2 consumers replying on core NATS.

use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use benches::{Killed, Started};
use coordinator::{Coordinator, Task};
use exec_nats::example_nodes::{self, Echo};
use exec_nats::{NatsConfig, NatsStrategy, NatsWorker};
use futures::StreamExt;
use tokio::runtime::Runtime;

use crate::measure::{Row, compare};
use crate::scenarios::names;

/// The flag that makes this binary a NATS worker: `--nats-worker STREAM PREFIX`.
pub(crate) const WORKER_FLAG: &str = "--nats-worker";

fn config(stream: &str, prefix: &str) -> NatsConfig {
    NatsConfig {
        stream: stream.to_owned(),
        prefix: prefix.to_owned(),
        mode: "bench".into(),
        ..NatsConfig::default()
    }
}

/// Serves as a worker until killed.
pub(crate) fn worker_main(stream: &str, prefix: &str) -> ! {
    let result = benches::runtime().block_on(async {
        let worker = NatsWorker::builder(example_nodes::registry()).config(config(stream, prefix));
        let worker = worker.concurrency(256).connect().await?;
        println!("ready");
        worker.run_until(std::future::pending()).await
    });
    if let Err(e) = result {
        eprintln!("nats worker: {e}");
    }
    std::process::exit(0)
}

/// A worker process of this binary, once it says it is ready; `None` if it does not.
fn worker(stream: &str, prefix: &str) -> Option<Killed> {
    let worker = benches::this_binary(&[WORKER_FLAG, stream, prefix]).spawn();
    let mut worker = Killed(worker.ok()?);
    let (mut said, mut line) = (BufReader::new(worker.0.stdout.take()?), String::new());
    said.read_line(&mut line).ok()?;
    line.starts_with("ready").then_some(worker)
}

/// The scenario, or `None` (said on stderr) when no server is reachable or it could not be set up.
pub(crate) fn throughput(rt: &Runtime, n: u64, reps: usize) -> Option<Row> {
    let url = exec_nats::default_url();
    let address = url.trim_start_matches("nats://").parse();
    let timeout = Duration::from_secs(1);
    if !address.is_ok_and(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok()) {
        eprintln!("nats: no server at {url}; the distributed scenario is skipped");
        return None;
    }
    let tag = std::process::id();
    let (stream, prefix) = (format!("BENCH_{tag}"), format!("bench{tag}"));
    let workers: Vec<Killed> = (0..2).filter_map(|_| worker(&stream, &prefix)).collect();
    let setup = async {
        let strategy = NatsStrategy::builder().config(config(&stream, &prefix));
        let strategy = strategy.start().await.ok()?;
        Some((strategy, RawQueue::start(&url, tag).await?))
    };
    let setup = (workers.len() == 2).then(|| rt.block_on(setup));
    let Some((strategy, mut raw)) = setup.flatten() else {
        eprintln!("nats: the workers or the scenario could not be set up; skipped");
        return None;
    };
    let ours = Started::new(rt, Coordinator::builder().strategy("nats", strategy));
    let task = |i| Task::portable(format!("n{i}"), Echo(i));
    let submit = || {
        benches::timed(rt, async {
            let calls = (0..n).map(|i| ours.coordinator.submit(task(i), "nats"));
            let done = futures::future::join_all(calls).await;
            assert!(done.iter().all(Result::is_ok), "every task came back");
        })
    };
    let raw_round = || rt.block_on(raw.round(n));
    let row = compare(names::DISTRIBUTED, n, reps, submit, raw_round);
    drop(workers);
    ours.shutdown(rt);
    rt.block_on(async {
        raw.consumers.iter().for_each(|consumer| consumer.abort());
        let ours = config(&stream, "");
        let (done, advisories) = (ours.completion_stream(), ours.advisory_stream());
        for stream in [stream, done, advisories, format!("BENCH_RAW_{tag}")] {
            let _ = raw.js.delete_stream(stream).await;
        }
    });
    Some(row)
}

/// Publish acknowledgements the raw baseline keeps outstanding.
const ACKS_IN_FLIGHT: usize = 1024;

/// The raw baseline: the same work-queue pattern written directly against the client.
struct RawQueue {
    js: jetstream::Context,
    subject: String,
    replies: async_nats::Subscriber,
    consumers: Vec<tokio::task::JoinHandle<()>>,
}

impl RawQueue {
    async fn start(url: &str, tag: u32) -> Option<Self> {
        let client = async_nats::connect(url).await.ok()?;
        let js = jetstream::new(client.clone());
        let (subject, reply) = (format!("benchraw{tag}.run"), format!("benchraw{tag}.reply"));
        let config = stream::Config {
            name: format!("BENCH_RAW_{tag}"),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        };
        let stream = js.get_or_create_stream(config).await.ok()?;
        let config = consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: -1,
            ..Default::default()
        };
        let consumer: consumer::PullConsumer =
            stream.get_or_create_consumer("raw", config).await.ok()?;
        let replies = client.subscribe(reply.clone()).await.ok()?;
        let consume = |_| {
            let (consumer, client, reply) = (consumer.clone(), client.clone(), reply.clone());
            tokio::spawn(async move {
                let batches = consumer.stream().max_messages_per_batch(256);
                let Ok(mut messages) = batches.messages().await else {
                    return;
                };
                while let Some(Ok(message)) = messages.next().await {
                    let _ = client.publish(reply.clone(), message.payload.clone()).await;
                    let _ = message.ack().await;
                }
            })
        };
        let consumers = (0..2).map(consume).collect();
        Some(Self {
            js,
            subject,
            replies,
            consumers,
        })
    }

    async fn round(&mut self, n: u64) -> Duration {
        let payload = bytes::Bytes::from(task_core::encode(&Echo(7)).expect("encodable"));
        let start = Instant::now();
        // Acknowledgements are awaited as they fall due: the client allows a bounded number in
        // flight (5,000 by default) and holds the next publish until one is awaited.
        let mut acks: VecDeque<PublishAckFuture> = VecDeque::with_capacity(ACKS_IN_FLIGHT);
        for _ in 0..n {
            if acks.len() == ACKS_IN_FLIGHT
                && let Some(ack) = acks.pop_front()
            {
                black_box(ack.await.expect("stored"));
            }
            let ack = self.js.publish(self.subject.clone(), payload.clone()).await;
            acks.push_back(ack.expect("published"));
        }
        for ack in acks {
            black_box(ack.await.expect("stored"));
        }
        black_box(self.replies.by_ref().take(n as usize).count().await);
        start.elapsed()
    }
}
