//! The process mode through the coordinator: typed results from worker processes, typed errors
//! for what cannot cross. This binary is its own worker, as an application would be.

mod support;

use std::time::Duration;

use coordinator::{
    BoxError, Buffer, Coordinator, ExecutionMode, JobResult, Node, NodeRegistry, PortableNode,
    ProcessExecutionStrategy, RequestCompletionMessage, RequestCompletionPublisher, RetryPolicy,
    SubmitOptions, Task, run_worker_if_requested,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use support::Recorder;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Stats {
    words: usize,
    pid: u32,
}

#[derive(Serialize, Deserialize)]
struct Analyze(String);

impl Node for Analyze {
    type Output = Stats;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "analyze".into()
    }
    async fn invoke(self) -> Result<Stats, BoxError> {
        if self.0.is_empty() {
            return Err("nothing to analyze".into());
        }
        Ok(Stats {
            words: self.0.split_whitespace().count(),
            pid: std::process::id(),
        })
    }
}

impl PortableNode for Analyze {
    const NAME: &'static str = "analyze";
}

/// Sleeps for the given milliseconds in the worker, then returns the worker's pid.
#[derive(Serialize, Deserialize)]
struct Nap(u64);

impl Node for Nap {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "nap".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        std::thread::sleep(Duration::from_millis(self.0));
        Ok(std::process::id())
    }
}

impl PortableNode for Nap {
    const NAME: &'static str = "nap";
}

/// Aborts its worker process, every time.
#[derive(Serialize, Deserialize)]
struct Crash;

impl Node for Crash {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        std::process::abort()
    }
}

impl PortableNode for Crash {
    const NAME: &'static str = "crash";
}

/// Broadcasts `token-0` .. `token-{n-1}` from the worker, then returns `n`.
#[derive(Serialize, Deserialize)]
struct Tokens(u32);

impl Node for Tokens {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "tokens".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        for i in 0..self.0 {
            coordinator::broadcast(format!("token-{i}"))?;
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        Ok(self.0)
    }
}

impl PortableNode for Tokens {
    const NAME: &'static str = "tokens";
}

/// Keeps its request's event sink and sends through it from a thread of its own after it
/// returned: a late event, which must disturb nothing.
#[derive(Serialize, Deserialize)]
struct Late;

impl Node for Late {
    type Output = ();
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "late".into()
    }
    async fn invoke(self) -> Result<(), BoxError> {
        let events = coordinator::current_events();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            if let Some(events) = events {
                events.send("after the answer");
            }
        });
        Ok(())
    }
}

impl PortableNode for Late {
    const NAME: &'static str = "late";
}

/// Hangs in the worker the first time it runs (it leaves the file it names behind), then
/// returns the worker's pid.
#[derive(Serialize, Deserialize)]
struct HangOnce(std::path::PathBuf);

impl Node for HangOnce {
    type Output = u32;
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "hang-once".into()
    }
    async fn invoke(self) -> Result<u32, BoxError> {
        if std::fs::File::create_new(&self.0).is_ok() {
            std::thread::sleep(Duration::from_secs(600));
        }
        Ok(std::process::id())
    }
}

impl PortableNode for HangOnce {
    const NAME: &'static str = "hang-once";
}

fn registry() -> NodeRegistry {
    let mut registry = NodeRegistry::new();
    registry.register::<HangOnce>().unwrap();
    registry.register::<Tokens>().unwrap();
    registry.register::<Late>().unwrap();
    registry.register::<Analyze>().unwrap();
    registry.register::<Nap>().unwrap();
    registry.register::<Crash>().unwrap();
    registry
}

fn runtime() -> tokio::runtime::Runtime {
    support::runtime(2)
}

/// A started publisher, and a coordinator with the async mode and a process pool of 2 workers.
async fn started() -> (RequestCompletionPublisher, Coordinator) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let process = ProcessExecutionStrategy::builder(registry())
        .workers(2)
        .start()
        .await
        .unwrap();
    let coordinator = Coordinator::builder()
        .with_async()
        .strategy(ExecutionMode::PROCESS, process)
        .build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator)
}

fn worker_pids(coordinator: &Coordinator) -> Vec<u32> {
    let detail = coordinator.system_detail();
    let mut pids: Vec<u32> = detail.modes["process"]
        .workers
        .iter()
        .filter_map(|w| w.pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Waits (bounded) until the pool reports `restarts` replacements and `workers` live workers.
fn await_pool(coordinator: &Coordinator, restarts: u64, workers: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let detail = coordinator.system_detail();
        let stats = &detail.modes["process"];
        if stats.restarts >= restarts && stats.workers.len() == workers {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pool never reached {restarts} restarts with {workers} workers: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn timed_out_and_cancelled_process_tasks_kill_and_replace_their_worker() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let recorder = Recorder::attach(&publisher);
        let before = worker_pids(&coordinator);
        assert_eq!(before.len(), 2);

        let error = coordinator
            .submit_with(
                Task::portable("late", Nap(60_000)),
                ExecutionMode::PROCESS,
                SubmitOptions::new().timeout(Duration::from_millis(200)),
            )
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        assert_eq!(
            coordinator.job("late").unwrap().result(),
            Some(JobResult::TimedOut)
        );
        // Its worker was killed (the only way to stop it) and replaced.
        await_pool(&coordinator, 1, 2);
        let after = worker_pids(&coordinator);
        assert_eq!(before.iter().filter(|p| after.contains(p)).count(), 1);

        let handle = coordinator
            .spawn(
                Task::portable("dropped", Nap(60_000)),
                ExecutionMode::PROCESS,
                SubmitOptions::new(),
            )
            .await
            .unwrap();
        // Wait until a worker is running it.
        while coordinator.system_detail().modes["process"]
            .workers
            .iter()
            .all(|w| w.in_flight == 0)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.cancel();
        assert!(handle.await.unwrap_err().is_cancelled());
        await_pool(&coordinator, 2, 2);

        // The pool still serves.
        let pid = coordinator
            .submit(Task::portable("fine", Nap(1)), ExecutionMode::PROCESS)
            .await
            .unwrap();
        assert!(worker_pids(&coordinator).contains(&pid));

        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
        let terminal = recorder.terminal_counts();
        assert_eq!(terminal.len(), 3);
        assert!(terminal.values().all(|&n| n == 1));
    });
}

fn a_retried_task_survives_its_worker_being_killed() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let marker = std::env::temp_dir().join(format!("survivor-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let policy =
            RetryPolicy::new(3).backoff(Duration::from_millis(1), Duration::from_millis(1));
        // The first attempt runs until its worker is killed; the second answers at once.
        let handle = coordinator
            .spawn(
                Task::portable("survivor", HangOnce(marker.clone())),
                ExecutionMode::PROCESS,
                SubmitOptions::new().retry(policy),
            )
            .await
            .unwrap();
        let waiting = std::time::Instant::now();
        let victim = loop {
            let busy = coordinator.system_detail().modes["process"]
                .workers
                .iter()
                .find(|w| w.in_flight > 0)
                .and_then(|w| w.pid);
            // Killed once its node has started.
            if let Some(pid) = busy.filter(|_| marker.exists()) {
                break pid;
            }
            assert!(waiting.elapsed() < Duration::from_secs(30), "never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // SAFETY: a plain signal to a worker process of this test.
        assert_eq!(
            unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) },
            0
        );
        let pid = handle.await.unwrap();
        let _ = std::fs::remove_file(&marker);
        assert_ne!(pid, victim, "the second attempt ran on another worker");
        let job = coordinator.job("survivor").unwrap();
        assert_eq!(
            (job.attempts(), job.result()),
            (2, Some(JobResult::Success))
        );
        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
    });
}

/// A node that hangs in its worker past its attempt timeout: the worker is told, then killed
/// after its grace, and the next attempt answers from another worker.
fn an_attempt_that_hangs_in_its_worker_is_stopped_and_retried() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let marker = std::env::temp_dir().join(format!("hang-once-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let policy = RetryPolicy::new(3)
            .backoff(Duration::from_millis(1), Duration::from_millis(1))
            .attempt_timeout(Duration::from_millis(300));
        let answer = coordinator.submit_with(
            Task::portable("hung", HangOnce(marker.clone())),
            ExecutionMode::PROCESS,
            SubmitOptions::new().retry(policy),
        );
        let pid = tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .expect("the retried attempt answers")
            .unwrap();
        let job = coordinator.job("hung").unwrap();
        assert_eq!(
            (job.attempts(), job.result()),
            (2, Some(JobResult::Success))
        );
        // The first attempt's worker was killed (it never stops on its own) before the second
        // ran: that one answered from a live worker.
        await_pool(&coordinator, 1, 2);
        assert!(worker_pids(&coordinator).contains(&pid));
        let _ = std::fs::remove_file(&marker);
        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
    });
}

fn a_poison_task_is_not_retried_whatever_the_policy() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let recorder = Recorder::attach(&publisher);
        let policy =
            RetryPolicy::new(10).backoff(Duration::from_millis(1), Duration::from_millis(1));
        let neighbours = (0..20_u64).map(|i| {
            coordinator.submit(
                Task::portable(format!("n{i}"), Analyze("a b".into())),
                ExecutionMode::PROCESS,
            )
        });
        let poison = coordinator.submit_with(
            Task::portable("poison", Crash),
            ExecutionMode::PROCESS,
            SubmitOptions::new().retry(policy),
        );
        let (poison, neighbours) = tokio::join!(poison, futures::future::join_all(neighbours));
        let error = poison.unwrap_err();
        let task_error = error.task_error().unwrap();
        assert!(task_error.is_poison(), "{error}");
        assert!(task_error.message().contains("SIGABRT"), "{error}");
        let job = coordinator.job("poison").unwrap();
        assert_eq!(
            (job.attempts(), job.result()),
            (2, Some(JobResult::Failure)),
            "two crashes in a row, then no more attempts"
        );
        // Tasks beside it were queued on the workers it killed, or ran elsewhere: none failed.
        assert!(neighbours.iter().all(Result::is_ok), "{neighbours:?}");
        coordinator
            .shutdown_with_grace(Duration::from_secs(5))
            .await;
        publisher.shutdown().await;
        assert!(recorder.terminal_counts().values().all(|&n| n == 1));
        assert_eq!(recorder.terminal_counts().len(), 21);
    });
}

fn dropping_a_coordinator_without_shutdown_ends_its_worker_processes() {
    let rt = runtime();
    let pids = rt.block_on(async {
        let (publisher, coordinator) = started().await;
        let pid = coordinator
            .submit(Task::portable("one", Nap(1)), ExecutionMode::PROCESS)
            .await
            .unwrap();
        let pids = worker_pids(&coordinator);
        assert!(pids.contains(&pid));
        drop(coordinator);
        publisher.shutdown().await;
        pids
    });
    let start = std::time::Instant::now();
    while !pids
        .iter()
        .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "workers {pids:?} outlived the coordinator that held their pool"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The pool counts a run out before its caller hears: the mode's stats read right after an
/// answer count every run once.
fn a_process_run_is_counted_out_before_its_caller_hears() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        for i in 1..=100 {
            let task = Task::portable(format!("r{i}"), Analyze("a word".into()));
            coordinator
                .submit(task, ExecutionMode::PROCESS)
                .await
                .unwrap();
            let detail = coordinator.system_detail();
            let stats = &detail.modes["process"];
            assert_eq!((stats.in_flight, stats.succeeded), (0, i), "after run {i}");
        }
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

fn typed_results_and_failures_come_back_from_worker_processes() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let recorder = Recorder::attach(&publisher);

        let stats = coordinator
            .submit(
                Task::portable("a", Analyze("three little words".into())),
                ExecutionMode::PROCESS,
            )
            .await
            .unwrap();
        assert_eq!(stats.words, 3);
        assert_ne!(stats.pid, std::process::id(), "it ran in another process");

        let err = coordinator
            .submit(
                Task::portable("b", Analyze(String::new())),
                ExecutionMode::PROCESS,
            )
            .await
            .unwrap_err();
        assert_eq!(err.task_error().unwrap().message(), "nothing to analyze");

        let closure = Task::from_fn("c", "closure", || async { Ok::<_, BoxError>(1) });
        let err = coordinator
            .submit(closure, ExecutionMode::PROCESS)
            .await
            .unwrap_err();
        assert!(err.task_error().unwrap().is_unsupported());

        // The same portable node runs in-process under the async mode.
        let local = coordinator
            .submit(
                Task::portable("d", Analyze("one".into())),
                ExecutionMode::ASYNC,
            )
            .await
            .unwrap();
        assert_eq!(local.pid, std::process::id());

        assert_eq!(
            coordinator.job("a").unwrap().result(),
            Some(JobResult::Success)
        );
        assert_eq!(
            coordinator.job("c").unwrap().result(),
            Some(JobResult::Failure)
        );
        let detail = serde_json::to_value(coordinator.system_detail()).unwrap();
        assert_eq!(
            detail["modes"]["process"]["workers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(detail["modes"]["process"]["restarts"], 0);

        // A grace too long to add to now saturates (the pool waits for its idle workers to
        // exit); it does not panic.
        let pids = worker_pids(&coordinator);
        coordinator.shutdown_with_grace(Duration::MAX).await;
        for pid in pids {
            // Each worker is waited for, so none is left even as a zombie.
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
            assert!(!alive, "worker {pid} exited");
        }
        publisher.shutdown().await;
        let terminal = recorder.terminal_counts();
        assert_eq!(terminal.len(), 4);
        assert!(terminal.values().all(|&n| n == 1));
        assert!(
            recorder
                .messages()
                .iter()
                .any(|m| m.to_string() == "analyze FAILED with error nothing to analyze")
        );
    });
}

fn a_worker_processs_events_arrive_in_order_before_its_terminal_message() {
    const N: u32 = 500;
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let mut about = publisher
            .subscribe_stream_where(Buffer::Unbounded, |m: &RequestCompletionMessage| {
                m.request_id()
                    .is_some_and(|r| r.as_str().starts_with("tokens"))
            })
            .unwrap();
        for (i, id) in ["tokens-1", "tokens-2"].into_iter().enumerate() {
            let task = Task::portable(id, Tokens(N));
            let options = SubmitOptions::new().with_events();
            let mut handle = coordinator
                .spawn(task, ExecutionMode::PROCESS, options)
                .await
                .unwrap();
            let mut heard = Vec::new();
            if i == 0 {
                while let Some(event) = handle.next_event().await {
                    heard.push(event.to_string());
                }
                assert_eq!(handle.await.unwrap(), N);
            } else {
                // Not read while the node runs: the node is not held up, the events are kept.
                assert_eq!((&mut handle).await.unwrap(), N);
                while let Some(event) = handle.next_event().await {
                    heard.push(event.to_string());
                }
            }
            let expected: Vec<String> = (0..N).map(|i| format!("token-{i}")).collect();
            assert_eq!(heard, expected, "{id}: the caller's events");
            let mut on_bus = Vec::new();
            loop {
                match about.next().await.unwrap().unwrap() {
                    RequestCompletionMessage::Broadcast(event) => {
                        assert_eq!(event.info.request_id().as_str(), id);
                        on_bus.push(event.event.to_string());
                    }
                    terminal => {
                        assert!(terminal.is_terminal(), "{terminal}");
                        assert_eq!(terminal.request_id().unwrap().as_str(), id);
                        break;
                    }
                }
            }
            assert_eq!(
                on_bus, expected,
                "{id}: every event before the terminal one"
            );
        }
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

fn an_event_sent_after_the_answer_disturbs_no_other_run() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        for i in 0..4 {
            let late = Task::portable(format!("late-{i}"), Late);
            coordinator
                .submit(late, ExecutionMode::PROCESS)
                .await
                .unwrap();
            // Runs on the same workers while the late events arrive: none is failed for them.
            let nap = Task::portable(format!("nap-{i}"), Nap(40));
            coordinator
                .submit(nap, ExecutionMode::PROCESS)
                .await
                .unwrap();
        }
        assert_eq!(coordinator.system_detail().modes["process"].restarts, 0);
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

/// A child run in a worker process is followed, events and end, by the tree its ancestor's
/// caller reads (`with_tree_events`).
fn a_tree_follows_a_child_in_a_worker_process() {
    runtime().block_on(async {
        let (publisher, coordinator) = started().await;
        let on = coordinator.clone();
        let agent = Task::from_fn("agent", "agent", move || async move {
            let tool = Task::portable("agent/tool", Tokens(3));
            Ok::<_, BoxError>(on.submit(tool, ExecutionMode::PROCESS).await?)
        });
        let options = SubmitOptions::new().with_tree_events();
        let mut handle = coordinator
            .spawn(agent, ExecutionMode::ASYNC, options)
            .await
            .unwrap();
        let mut seen = Vec::new();
        while let Some(event) = handle.next_tree_event().await {
            let mut line = support::tree_line(&event);
            // The parent's node id is made at random.
            line.truncate(line.find(" (parent").unwrap_or(line.len()));
            seen.push(line);
        }
        let expected = [
            "joined agent",
            "joined agent/tool",
            "agent/tool: token-0",
            "agent/tool: token-1",
            "agent/tool: token-2",
            "agent/tool ended success",
            "agent ended success",
        ];
        assert_eq!(seen, expected);
        assert_eq!(handle.await.unwrap(), 3);
        coordinator.shutdown().await;
        publisher.shutdown().await;
    });
}

fn main() {
    run_worker_if_requested(&registry());
    let tests: &[(&str, fn())] = &named_tests![
        a_tree_follows_a_child_in_a_worker_process,
        an_event_sent_after_the_answer_disturbs_no_other_run,
        a_worker_processs_events_arrive_in_order_before_its_terminal_message,
        typed_results_and_failures_come_back_from_worker_processes,
        a_process_run_is_counted_out_before_its_caller_hears,
        timed_out_and_cancelled_process_tasks_kill_and_replace_their_worker,
        a_retried_task_survives_its_worker_being_killed,
        an_attempt_that_hangs_in_its_worker_is_stopped_and_retried,
        a_poison_task_is_not_retried_whatever_the_policy,
        dropping_a_coordinator_without_shutdown_ends_its_worker_processes,
    ];
    support::run_harnessless(tests);
}
