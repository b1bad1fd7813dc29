//! What a refused start, a stream of another setup and a task message published by hand leave
//! behind: nothing on the server, and a worker that goes on serving; and what the checks behind
//! those refusals still accept.

use super::*;

/// A duplicate window too short to try a publish again is refused before a stream is made with
/// it, so the corrected configuration starts.
pub(crate) async fn a_refused_duplicate_window_is_not_recorded_half_way() {
    let config = NatsConfig {
        duplicate_window: Duration::from_secs(5),
        ..config("refused-window")
    };
    let start = |config: NatsConfig| NatsStrategy::builder().config(config).start();
    let error = start(config.clone()).await.expect_err("too short a window");
    assert!(error.is_config_error(), "{error}");
    let fixed = NatsConfig {
        duplicate_window: Duration::from_secs(120),
        ..config.clone()
    };
    // Each handle goes before the cleanup: a strategy makes its deleted streams again.
    let started = start(fixed).await.map(drop);
    cleanup(&config).await;
    started.expect("the corrected configuration starts");
}

/// A window of 0 takes the server's default and starts; a short one is refused on either side
/// whatever stream it would bind, before anything is made (a side makes the stream with it
/// when it is missing, as after a deletion).
pub(crate) async fn a_zero_window_starts_and_a_short_one_is_refused_on_either_side() {
    let zero = NatsConfig {
        duplicate_window: Duration::ZERO,
        ..config("zero-window")
    };
    let started = NatsStrategy::builder().config(zero.clone()).start().await;
    let started = started.map(drop);
    cleanup(&zero).await;
    started.expect("a window of 0 takes the server's default");
    let good = config("bound-window");
    let first = NatsStrategy::builder().config(good.clone()).start().await;
    let short = NatsConfig {
        duplicate_window: Duration::from_secs(5),
        ..good.clone()
    };
    let second = NatsStrategy::builder().config(short.clone()).start().await;
    let registry = task_core::NodeRegistry::new();
    let worker = exec_nats::NatsWorker::builder(registry)
        .config(short)
        .connect();
    let (first, second, worker) = (first.map(drop), second.map(drop), worker.await.map(drop));
    cleanup(&good).await;
    first.expect("the first side makes the stream");
    assert!(second.is_err_and(|e| e.is_config_error()));
    assert!(worker.is_err_and(|e| e.is_config_error()));
}

/// Makes a work-queue stream of `config`'s name for `subject` alone, as an operator or an
/// earlier setup would.
async fn stream_of_our_name(config: &NatsConfig, subject: String) {
    let client = async_nats::connect(&config.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![subject],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .expect("a stream of this side's name");
}

/// A stream of the configured name made for this mode's subject alone (by an operator) is
/// bound by both sides: it takes every message they send on it.
pub(crate) async fn a_stream_of_our_name_for_our_task_subject_alone_is_bound() {
    let config = config("mode-subject");
    stream_of_our_name(&config, config.task_subject()).await;
    let started = NatsStrategy::builder().config(config.clone()).start().await;
    let registry = task_core::NodeRegistry::new();
    let worker = exec_nats::NatsWorker::builder(registry)
        .config(config.clone())
        .connect();
    let (started, worker) = (started.map(drop), worker.await.map(drop));
    cleanup(&config).await;
    started.expect("the submitting side binds it");
    worker.expect("the worker binds it");
}

/// A stream of the configured name made for other subjects (an earlier setup's, with another
/// prefix) is refused as it starts, naming it, instead of being bound and leaving every task
/// looking for a stream until `unreachable_after`.
pub(crate) async fn a_stream_of_our_name_that_holds_other_subjects_is_refused() {
    let config = config("other-subjects");
    stream_of_our_name(&config, format!("{}-other.run.*", config.prefix)).await;
    let started = NatsStrategy::builder().config(config.clone()).start().await;
    let started = started.map(drop);
    cleanup(&config).await;
    let error = started.expect_err("the stream holds none of this side's subjects");
    assert!(error.is_config_error(), "{error}");
    assert!(error.to_string().contains(&config.stream), "{error}");
}

/// Runs of [`Counted`], across the process.
static COUNTED_RUNS: AtomicU32 = AtomicU32::new(0);

/// Counts its runs.
#[derive(Serialize, Deserialize)]
struct Counted;

impl Node for Counted {
    type Output = u32;
    async fn invoke(self) -> Result<u32, BoxError> {
        Ok(COUNTED_RUNS.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

impl PortableNode for Counted {
    const NAME: &'static str = "counted";
}

/// A task message published by hand whose run id holds a line break (it goes into headers) is
/// taken out of the stream unrun, and the worker goes on serving: it panicked after running the
/// node, and the task came back to run again at every `ack_wait`.
pub(crate) async fn a_task_whose_run_id_holds_a_line_break_is_taken_out_unrun() {
    use exec_nats::wire::{PROTOCOL_VERSION, TaskMessage, encode};
    let config = config("line-break-run");
    let mut registry = task_core::NodeRegistry::new();
    registry.register::<Counted>().unwrap();
    registry.register::<Echo>().unwrap();
    let worker = exec_nats::NatsWorker::builder(registry)
        .config(config.clone())
        .ack_wait(Duration::from_millis(500))
        .connect()
        .await
        .expect("the worker connects");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
    }));
    let client = async_nats::connect(&config.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let message = TaskMessage {
        version: PROTOCOL_VERSION,
        run: "bad\nrun".into(),
        request_id: "r".into(),
        name: Counted::NAME.into(),
        payload: task_core::encode(&Counted).unwrap(),
        reply: config.completion_subject("by-hand"),
    };
    let published = js.publish(config.task_subject(), encode(&message).unwrap().into());
    published.await.unwrap().await.expect("stored");
    // The worker still serves: a task through a strategy is answered.
    let strategy = NatsStrategy::builder().config(config.clone()).start().await;
    let strategy = strategy.expect("starts");
    let task = Task::portable("after", Echo(7)).into_erased();
    let answer = tokio::time::timeout(Duration::from_secs(30), task_core::run(&strategy, task));
    let answer = answer.await.expect("answered");
    // Past two `ack_wait`s: a task left unacknowledged would have come back by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (runs, left) = (
        COUNTED_RUNS.load(Ordering::SeqCst),
        tasks_in_stream(&config).await,
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), serving).await;
    drop(strategy);
    cleanup(&config).await;
    assert_eq!(answer.unwrap().downcast_ref::<u64>(), Some(&7));
    assert_eq!(
        (runs, left),
        (0, 0),
        "runs of the node, tasks left in the stream"
    );
}

/// Stats count each run once while it waits (not its hand-over beside it), and not once it is
/// cancelled: in flight, succeeded, failed and stopped add up to the tasks taken.
pub(crate) async fn in_flight_counts_each_run_once() {
    use task_core::TaskExecutionStrategy as _;
    let config = config("in-flight");
    let proxy = Proxy::start(&config.url).await;
    let strategy = NatsStrategy::builder()
        .config(NatsConfig {
            url: proxy.url(),
            ..config.clone()
        })
        .start()
        .await
        .expect("starts through the proxy");
    // The server out of reach: the runs wait, their hand-overs trying.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs: Vec<_> = (0..3_u64)
        .map(|i| {
            let task = Task::portable(format!("r{i}"), Echo(i)).into_erased();
            tokio::spawn(task_core::run(&strategy, task))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting = strategy.stats();
    for run in &runs {
        run.abort();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cancelled = strategy.stats();
    proxy.restore();
    drop(strategy);
    cleanup(&config).await;
    assert_eq!(waiting.in_flight, 3, "{waiting:?}");
    assert_eq!(
        (cancelled.in_flight, cancelled.stopped),
        (0, 3),
        "{cancelled:?}"
    );
}
