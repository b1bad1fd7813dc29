//! The scenarios, each with its raw baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Instant;

use benches::{Fixture, Started, broadcast_fan_out, publish_fan_out, request_ids};
use coordinator::{ExecutionMode, RequestId};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

use crate::measure::{Row, compare, compare_series};

/// A scenario's name in the report (the docs' claims find rows by it), and its baseline's.
pub(crate) type Pair = (&'static str, &'static str);

/// Every scenario's [`Pair`].
pub(crate) mod names {
    use super::Pair;

    const TOKIO: &str = "tokio::spawn + mpsc + HashMap";
    const RAYON: &str = "rayon::spawn + crossbeam + HashMap";
    const ECHO: &str = "raw length-prefixed pipe echo";
    const BROADCAST: &str = "tokio::sync::broadcast, sender waits for the slowest";
    pub(crate) const ASYNC: Pair = ("async", TOKIO);
    pub(crate) const TRY_SPAWN: Pair = ("async, try_spawn handles awaited in order", TOKIO);
    pub(crate) const BATCH: Pair = ("async, one submit_many batch", TOKIO);
    pub(crate) const STUCK: Pair = (
        "async beside a subscriber that never reads",
        "the same requests, nobody subscribed",
    );
    pub(crate) const METRICS: Pair = (
        "async, metrics recorded (Prometheus exporter)",
        "the same requests, no metrics recorder",
    );
    pub(crate) const DASHBOARD: Pair = (
        "async beside 1,000 dashboard clients",
        "the same requests, no dashboard",
    );
    pub(crate) const THREADED: Pair = ("threaded", RAYON);
    /// The least a coordinator reached through the task API can do ([`benches::design_floor`]).
    pub(crate) const FLOOR: Pair = ("async design floor", TOKIO);
    pub(crate) const FLOOR_IN_ORDER: Pair = ("async design floor, handles awaited in order", TOKIO);
    pub(crate) const FLOOR_UNSHARED: Pair = ("async design floor, no shared map", TOKIO);
    pub(crate) const FLOOR_THREADED: Pair = ("threaded design floor", RAYON);
    pub(crate) const ROUND_TRIP: Pair = ("process round trip", ECHO);
    pub(crate) const PINNED_ROUND_TRIP: Pair = ("process round trip, pinned to one CPU", ECHO);
    pub(crate) const THROUGHPUT: Pair = (
        "process throughput, 2 workers",
        "raw pipelined pipe echo, 2 children",
    );
    pub(crate) const FAN_OUT: [Pair; 3] = [
        ("publisher fan-out, 1 subscriber", BROADCAST),
        ("publisher fan-out, 4 subscribers", BROADCAST),
        ("publisher fan-out, 16 subscribers", BROADCAST),
    ];
    pub(crate) const LATENCY: [Pair; 2] = [
        ("publisher latency, p50", "tokio::sync::broadcast"),
        ("publisher latency, p99", "tokio::sync::broadcast"),
    ];
    pub(crate) const DISTRIBUTED: Pair = (
        "distributed (NATS JetStream), 2 workers",
        "raw JetStream work queue, 2 consumers, core NATS replies",
    );
    /// What a full run reports.
    pub(crate) const ALL: [&[Pair]; 5] = [
        &[ASYNC, TRY_SPAWN, BATCH, STUCK, METRICS, DASHBOARD, THREADED],
        &[FLOOR, FLOOR_IN_ORDER, FLOOR_UNSHARED, FLOOR_THREADED],
        &[ROUND_TRIP, PINNED_ROUND_TRIP, THROUGHPUT, DISTRIBUTED],
        &FAN_OUT,
        &LATENCY,
    ];
}

/// async (the scaling series, every N measured in the same rounds, then through `try_spawn`, in
/// one batch, its design floors, beside a stuck subscriber, with metrics recorded and beside
/// dashboard clients) and threaded (and its design floor), each when asked for.
pub(crate) fn local(
    fx: &Fixture,
    sizes: &[u64],
    reps: usize,
    [async_, threaded]: [bool; 2],
) -> Vec<Row> {
    let mut rows = Vec::new();
    // The size the other rows run at (N = 100,000).
    let n = sizes[sizes.len().min(2) - 1];
    let ids = &request_ids(n);
    let run = |name, ids: &[RequestId]| fx.run(name, ids).expect("a scenario the fixture knows");
    let beside_raw = |(pair, ours)| beside_raw(fx, pair, ours, ids, reps);
    if async_ {
        let series: Vec<_> = sizes.iter().map(|&n| request_ids(n)).collect();
        let ours = |i: usize| run("async", &series[i]);
        let raw = |i: usize| run("raw-async", &series[i]);
        rows.extend(compare_series(names::ASYNC, sizes, reps, ours, raw));
        rows.extend(
            [
                (names::TRY_SPAWN, ["async-handles", "raw-async"]),
                (names::BATCH, ["batch", "raw-async"]),
                (names::FLOOR, ["floor-async", "raw-async"]),
                (names::FLOOR_IN_ORDER, ["floor-handles", "raw-async"]),
                (names::FLOOR_UNSHARED, ["floor-unshared", "raw-async"]),
            ]
            .map(beside_raw),
        );
        rows.push(beside_a_stuck_subscriber(fx, ids, reps));
        rows.push(with_metrics(fx, ids, reps));
        rows.push(beside_dashboard_clients(fx, ids, reps));
    }
    if threaded {
        rows.extend(
            [
                (names::THREADED, ["threaded", "raw-threaded"]),
                (names::FLOOR_THREADED, ["floor-threaded", "raw-threaded"]),
            ]
            .map(beside_raw),
        );
    }
    rows
}

/// Scenario `ours` of the fixture beside `raw`, both over `ids`.
fn beside_raw(
    fx: &Fixture,
    pair: Pair,
    [ours, raw]: [&str; 2],
    ids: &[RequestId],
    reps: usize,
) -> Row {
    let run = |name| move || fx.run(name, ids).expect("a scenario the fixture knows");
    compare(pair, ids.len() as u64, reps, run(ours), run(raw))
}

/// The async scenario on `ours` beside the same requests on a plain async coordinator, fresh
/// like `ours`, so that their job tables are as full as each other's.
fn beside(fx: &Fixture, pair: Pair, ids: &[RequestId], reps: usize, ours: &Started) -> Row {
    let plain = Started::with_async(&fx.rt);
    let submit = |on| move || benches::submit_trivial(&fx.rt, on, ids, &ExecutionMode::ASYNC);
    let (ours, plain_runs) = (submit(&ours.coordinator), submit(&plain.coordinator));
    let row = compare(pair, ids.len() as u64, reps, ours, plain_runs);
    plain.shutdown(&fx.rt);
    row
}

/// The async scenario on a bus with a subscriber that never reads: what announcing every
/// outcome costs, and proof that a stuck subscriber holds nothing up (it is told how many
/// messages it missed).
fn beside_a_stuck_subscriber(fx: &Fixture, ids: &[RequestId], reps: usize) -> Row {
    let observed = Started::with_async(&fx.rt);
    let mut stuck = observed.publisher.subscribe_stream().expect("a stream");
    let row = beside(fx, names::STUCK, ids, reps, &observed);
    let missed = fx.rt.block_on(stuck.next()).and_then(Result::err);
    assert!(missed.expect("told it missed messages").count() > 0);
    observed.shutdown(&fx.rt);
    row
}

/// The async scenario on a coordinator whose metrics go to a Prometheus recorder: what the
/// `metrics` feature costs when it is used.
fn with_metrics(fx: &Fixture, ids: &[RequestId], reps: usize) -> Row {
    let (recorded, recorder) = Started::with_metrics(&fx.rt);
    let row = beside(fx, names::METRICS, ids, reps, &recorded);
    let requests = "coordinator_requests_total{mode=\"async\",result=\"success\"}";
    let seen = recorder.handle().render().contains(requests);
    assert!(seen, "the recorder saw the requests");
    recorded.shutdown(&fx.rt);
    row
}

/// The async scenario with a dashboard serving 1,000 pages, each reading the live feed, which
/// brings the overview once a second (on a runtime of their own, as browsers elsewhere would):
/// what open pages cost the coordinator.
fn beside_dashboard_clients(fx: &Fixture, ids: &[RequestId], reps: usize) -> Row {
    const CLIENTS: usize = 1_000;
    let watched = Started::with_async(&fx.rt);
    let dashboard = dashboard::Dashboard::builder(&watched.coordinator, &watched.publisher);
    let dashboard = dashboard.bind(([127, 0, 0, 1], 0).into()).start();
    let dashboard = fx.rt.block_on(dashboard).expect("the dashboard starts");
    let mut clients = tokio::runtime::Builder::new_current_thread();
    let clients = clients.enable_all().build().expect("the clients' runtime");
    let addr = dashboard.local_addr();
    let connect = |_| async move {
        let mut stream = TcpStream::connect(addr).await.expect("a client");
        let request = "GET /api/feed HTTP/1.1\r\nHost: bench\r\n\r\n";
        stream.write_all(request.as_bytes()).await.expect("asked");
        stream
    };
    let streams: Vec<_> =
        clients.block_on(futures::stream::iter(0..CLIENTS).then(connect).collect());
    let read = Arc::new(AtomicUsize::new(0));
    let reader = |mut stream: TcpStream| {
        let read = Arc::clone(&read);
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                read.fetch_add(n, SeqCst);
            }
        }
    };
    let reading = futures::future::join_all(streams.into_iter().map(reader));
    let readers = std::thread::spawn(move || clients.block_on(reading));
    let row = beside(fx, names::DASHBOARD, ids, reps, &watched);
    // Its event streams end, and the readers with them.
    fx.rt.block_on(dashboard.shutdown());
    watched.shutdown(&fx.rt);
    readers.join().expect("the readers");
    assert!(read.load(SeqCst) > 0, "the clients read the event stream");
    row
}

/// The round trip (one task at a time through a pool of 2 workers beside one frame at a time
/// through an echo child) and the throughput (many in flight beside frames pipelined through 2
/// echo children), then the round trip in a child pinned to one CPU, where a wake-up never
/// crosses cores: the comparison with the raw pipe that does not depend on where the scheduler
/// puts the threads (left out where that child could not pin itself or failed).
pub(crate) fn process(fx: &Fixture, round_trips: u64, pipelined: u64, reps: usize) -> Vec<Row> {
    let (trips, in_flight) = (&request_ids(round_trips), &request_ids(pipelined));
    let mut rows = vec![
        beside_raw(
            fx,
            names::ROUND_TRIP,
            ["process-1", "raw-process-1"],
            trips,
            reps,
        ),
        beside_raw(
            fx,
            names::THROUGHPUT,
            ["process", "raw-process"],
            in_flight,
            reps,
        ),
    ];
    let name = names::PINNED_ROUND_TRIP.0;
    eprintln!("{name}: in a pinned child ...");
    let pinned = crate::measure_in_child::<Row>(name, PINNED_FLAG, &[round_trips, reps as u64]);
    pinned.iter().for_each(|row| eprintln!("{}", row.summary()));
    rows.extend(pinned);
    rows
}

/// The flag of the child that measures the round trip pinned to one CPU:
/// `--pinned-round-trip <round trips> <reps>`.
pub(crate) const PINNED_FLAG: &str = "--pinned-round-trip";

/// The pinned child's side: pins this process to the first CPU it may run on, before any thread
/// of its own starts (the runtime's threads, the workers and the echo children inherit the pin),
/// then measures the round trip.
pub(crate) fn pinned_round_trip_child(round_trips: u64, reps: u64) -> Row {
    let core = core_affinity::get_core_ids().and_then(|ids| ids.first().copied());
    let core = core.expect("a CPU to pin to");
    let pinned = core_affinity::set_for_current(core);
    assert!(pinned, "could not pin this process to CPU {}", core.id);
    let (fx, ids) = (Fixture::default(), request_ids(round_trips));
    let pair = ["process-1", "raw-process-1"];
    let row = beside_raw(&fx, names::PINNED_ROUND_TRIP, pair, &ids, reps as usize);
    fx.shutdown();
    row
}

/// Fan-out to 1, 4 and 16 subscribers, then publish-to-delivery latency (p50 and p99) of one
/// message at a time to one subscriber; each beside `tokio::sync::broadcast`.
pub(crate) fn publisher(rt: &Runtime, messages: u64, one_by_one: usize, reps: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for (pair, k) in names::FAN_OUT.into_iter().zip([1, 4, 16]) {
        let ours = || publish_fan_out(rt, k, messages);
        let raw = || broadcast_fan_out(rt, k, messages);
        rows.push(compare(pair, messages, reps, ours, raw));
    }
    eprintln!("publisher latency: {reps} repetitions ...");
    let mut percentiles: [[Vec<f64>; 2]; 2] = Default::default();
    for _ in 0..reps {
        for (side, ours) in [(0, true), (1, false)] {
            let (p50, p99) = latencies(rt, one_by_one, ours);
            percentiles[0][side].push(p50);
            percentiles[1][side].push(p99);
        }
    }
    for (pair, [ours, base]) in names::LATENCY.into_iter().zip(percentiles) {
        rows.push(Row::new(pair, one_by_one as u64, ours, base));
    }
    rows
}

/// The p50 and p99 of the publish-to-delivery latency, in ns, of `messages` messages published
/// one at a time (the next once the last was delivered) to one subscriber, through ours or
/// `tokio::sync::broadcast`.
fn latencies(rt: &Runtime, messages: usize, ours: bool) -> (f64, f64) {
    rt.block_on(async {
        let publisher = pubsub::Publisher::<Instant>::new();
        publisher.start().expect("start");
        let (tx, rx) = tokio::sync::broadcast::channel::<Instant>(1024);
        let delivered = if ours {
            let stream = publisher.subscribe_stream().expect("subscribe");
            stream.map(|sent| sent.expect("nothing missed")).boxed()
        } else {
            futures::stream::unfold(rx, |mut rx| async { Some((rx.recv().await.ok()?, rx)) })
                .boxed()
        };
        let seen = Arc::new(AtomicUsize::new(0));
        let seen_by_reader = Arc::clone(&seen);
        let latency = move |sent: Instant| {
            let latency = sent.elapsed().as_nanos() as f64;
            seen_by_reader.fetch_add(1, SeqCst);
            latency
        };
        let reader = tokio::spawn(delivered.take(messages).map(latency).collect::<Vec<_>>());
        for i in 0..messages {
            if ours {
                publisher.publish(Instant::now()).expect("running");
            } else {
                tx.send(Instant::now()).expect("receiver alive");
            }
            while seen.load(SeqCst) <= i {
                tokio::task::yield_now().await;
            }
        }
        publisher.shutdown().await;
        let mut values = reader.await.expect("reader");
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((values.len() - 1) as f64 * p).round() as usize];
        (at(0.5), at(0.99))
    })
}
