//! A coordinator's limit on the process mode bounds the nodes running in its workers, not only
//! the requests open: a node whose request timed out or was cancelled keeps its place until it
//! stops in its worker (or its worker is killed after the pool's `cancel_grace`), so the next
//! request of the mode never runs beside it. This binary is its own worker.
//!
//! Workers are processes of their own: each node logs when it starts and stops (one line each,
//! on the monotonic clock the test shares with its workers) to a file the test reads.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coordinator::{
    BoxError, Coordinator, ExecutionMode, Node, NodeRegistry, PortableNode,
    ProcessExecutionStrategy, RequestCompletionPublisher, SubmitOptions, Task,
    run_worker_if_requested,
};
use serde::{Deserialize, Serialize};
use support::mono_ns;

/// Every wait of the test is bounded by this: a lost answer fails, it does not hang.
const BOUND: Duration = Duration::from_secs(30);

/// Logs `start`, blocks its thread for `block_ms` (no cancellation reaches it: only a kill stops
/// it early), logs `stop`. A line reads `<event> <tag> <pid> <ns>`.
#[derive(Serialize, Deserialize)]
struct Stubborn {
    tag: String,
    log: PathBuf,
    block_ms: u64,
}

impl Stubborn {
    fn note(&self, event: &str) -> std::io::Result<()> {
        let line = format!(
            "{event} {} {} {}\n",
            self.tag,
            std::process::id(),
            mono_ns()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)?
            .write_all(line.as_bytes())
    }
}

impl Node for Stubborn {
    type Output = ();
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "stubborn".into()
    }
    async fn invoke(self) -> Result<(), BoxError> {
        self.note("start")?;
        std::thread::sleep(Duration::from_millis(self.block_ms));
        self.note("stop")?;
        Ok(())
    }
}

impl PortableNode for Stubborn {
    const NAME: &'static str = "stubborn";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<Stubborn>().unwrap();
    registry
}

/// One logged event.
#[derive(Debug)]
struct Event {
    what: String,
    tag: String,
    pid: u32,
    at_ns: u64,
}

fn events(log: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            Event {
                what: parts[0].to_owned(),
                tag: parts[1].to_owned(),
                pid: parts[2].parse().unwrap(),
                at_ns: parts[3].parse().unwrap(),
            }
        })
        .collect()
}

fn find<'a>(events: &'a [Event], what: &str, tag: &str) -> Option<&'a Event> {
    events.iter().find(|e| e.what == what && e.tag == tag)
}

/// Waits (bounded) until `tag`'s node has logged `what`.
async fn logged(log: &Path, what: &str, tag: &str) -> Event {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(e) = events(log)
            .into_iter()
            .find(|e| e.what == what && e.tag == tag)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "{tag} never logged {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn log_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{name}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// A started publisher, and a coordinator with a process pool of 2 workers (`cancel_grace`
/// given) and a limit of 1 on the process mode.
async fn limited_to_one(grace: Duration) -> (RequestCompletionPublisher, Coordinator) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let process = ProcessExecutionStrategy::builder(registry())
        .workers(2)
        .cancel_grace(grace)
        .start()
        .await
        .unwrap();
    let coordinator = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::PROCESS, process)
        .limit(ExecutionMode::PROCESS, 1)
        .build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator)
}

fn stubborn(tag: &str, log: &Path, block_ms: u64) -> Task<()> {
    let node = Stubborn {
        tag: tag.to_owned(),
        log: log.to_owned(),
        block_ms,
    };
    Task::portable(tag, node)
}

/// The first request times out while its node blocks on (well within the grace): its caller is
/// answered at once, and the next request's node starts only once the first one stopped.
fn a_timed_out_node_keeps_its_place_until_it_stops_in_its_worker() {
    support::runtime(2).block_on(async {
        let log = log_file("process-limit-timeout");
        let (publisher, coordinator) = limited_to_one(Duration::from_secs(20)).await;

        let error = tokio::time::timeout(
            BOUND,
            coordinator.submit_with(
                stubborn("first", &log, 4_000),
                ExecutionMode::PROCESS,
                SubmitOptions::new().timeout(Duration::from_secs(1)),
            ),
        )
        .await
        .expect("the timed-out caller is answered")
        .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        let answered_ns = mono_ns();

        tokio::time::timeout(
            BOUND,
            coordinator.submit(stubborn("second", &log, 0), ExecutionMode::PROCESS),
        )
        .await
        .expect("the second request ends")
        .unwrap();

        let first_stop = logged(&log, "stop", "first").await;
        let events = events(&log);
        let second_start = find(&events, "start", "second").expect("second started");
        assert!(
            answered_ns < first_stop.at_ns,
            "the timed-out caller was answered only as its node stopped: {events:?}"
        );
        assert!(
            second_start.at_ns >= first_stop.at_ns,
            "the second node started {} ms before the timed-out one stopped, under a limit of 1: \
             {events:?}",
            (first_stop.at_ns - second_start.at_ns) / 1_000_000
        );

        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
        let _ = std::fs::remove_file(&log);
    });
}

/// The first request is cancelled while its node blocks past the grace: its caller is answered
/// at once, its worker is killed after the grace, and the next request's node starts only then.
fn a_cancelled_node_that_never_stops_keeps_its_place_until_its_worker_is_killed() {
    support::runtime(2).block_on(async {
        const GRACE: Duration = Duration::from_millis(2_000);
        let log = log_file("process-limit-cancel");
        let (publisher, coordinator) = limited_to_one(GRACE).await;

        let handle = coordinator
            .spawn(
                stubborn("first", &log, 60_000),
                ExecutionMode::PROCESS,
                SubmitOptions::new(),
            )
            .await
            .unwrap();
        let first_start = logged(&log, "start", "first").await;
        let cancelled_ns = mono_ns();
        handle.cancel();
        let error = tokio::time::timeout(BOUND, handle)
            .await
            .expect("the cancelled caller is answered")
            .unwrap_err();
        assert!(error.is_cancelled(), "{error}");
        let answered_ms = (mono_ns() - cancelled_ns) / 1_000_000;
        assert!(
            answered_ms < GRACE.as_millis() as u64,
            "the cancelled caller waited {answered_ms} ms, past the grace: it is answered at once"
        );

        let second = tokio::time::timeout(
            BOUND,
            coordinator.submit(stubborn("second", &log, 0), ExecutionMode::PROCESS),
        );
        second.await.expect("the second request ends").unwrap();

        let events = events(&log);
        let second_start = find(&events, "start", "second").expect("second started");
        assert!(
            find(&events, "stop", "first").is_none(),
            "only a kill stops it: {events:?}"
        );
        let waited_ms = second_start.at_ns.saturating_sub(cancelled_ns) / 1_000_000;
        assert!(
            waited_ms >= GRACE.as_millis() as u64,
            "the second node started {waited_ms} ms after the cancellation, before the \
             cancelled one's worker was killed (grace {GRACE:?}), under a limit of 1: {events:?}"
        );
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(first_start.pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "the cancelled node's worker is killed and reaped");

        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
        let _ = std::fs::remove_file(&log);
    });
}

fn main() {
    run_worker_if_requested(&registry());
    let tests: &[(&str, fn())] = &named_tests![
        a_timed_out_node_keeps_its_place_until_it_stops_in_its_worker,
        a_cancelled_node_that_never_stops_keeps_its_place_until_its_worker_is_killed,
    ];
    support::run_harnessless(tests);
}
