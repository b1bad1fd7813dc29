//! The NATS strategy against a real server with JetStream (`$EXEC_NATS_URL`, default
//! `nats://127.0.0.1:4222`) and real worker processes (the `exec-nats-worker` binary).
//!
//! Without a reachable server every test is reported as ignored, with the reason, never as
//! passed; with `REQUIRE_NATS=1` (CI sets it) each fails instead. The trials run under
//! `libtest-mimic`, which decides at run time whether a test runs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use coordinator::{
    BoxError, Buffer, Coordinator, JobResult, Node, PortableNode, RequestCompletionMessage,
    RequestCompletionPublisher, RetryPolicy, SubmitOptions, Task,
};
use exec_nats::example_nodes::{Burst, Count, Echo, Fail, Nap, Pad, WaitFor};
use exec_nats::{NatsConfig, NatsStrategy};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[path = "nats/direct.rs"]
mod direct;
#[path = "nats/proxy.rs"]
mod proxy;
#[path = "nats/refusals.rs"]
mod refusals;
#[path = "nats/withdrawals.rs"]
mod withdrawals;

use proxy::Proxy;

/// Whether the server answers at the configured URL.
fn server_available(url: &str) -> bool {
    let address = url
        .trim_start_matches("nats://")
        .split(',')
        .next()
        .unwrap_or("127.0.0.1:4222")
        .to_owned();
    address
        .parse()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some()
}

type Test = fn() -> futures::future::BoxFuture<'static, ()>;

fn main() {
    #[cfg(feature = "metrics")]
    recorded::install();
    let args = libtest_mimic::Arguments::from_args();
    let url = exec_nats::default_url();
    let available = server_available(&url);
    let required = std::env::var("REQUIRE_NATS").as_deref() == Ok("1");
    if !available && !required {
        eprintln!(
            "no NATS server at {url}: every test here is ignored (set REQUIRE_NATS=1 to make this a failure)"
        );
    }
    let tests: &[(&str, Test)] = &[
        (
            "values_errors_panics_and_unknown_nodes_come_back_typed",
            || Box::pin(values_errors_panics_and_unknown_nodes_come_back_typed()),
        ),
        (
            "a_refused_duplicate_window_is_not_recorded_half_way",
            || Box::pin(refusals::a_refused_duplicate_window_is_not_recorded_half_way()),
        ),
        (
            "a_zero_window_starts_and_a_short_one_is_refused_on_either_side",
            || Box::pin(refusals::a_zero_window_starts_and_a_short_one_is_refused_on_either_side()),
        ),
        (
            "a_stream_of_our_name_for_our_task_subject_alone_is_bound",
            || Box::pin(refusals::a_stream_of_our_name_for_our_task_subject_alone_is_bound()),
        ),
        (
            "a_stream_of_our_name_that_holds_other_subjects_is_refused",
            || Box::pin(refusals::a_stream_of_our_name_that_holds_other_subjects_is_refused()),
        ),
        (
            "a_task_whose_run_id_holds_a_line_break_is_taken_out_unrun",
            || Box::pin(refusals::a_task_whose_run_id_holds_a_line_break_is_taken_out_unrun()),
        ),
        ("in_flight_counts_each_run_once", || {
            Box::pin(refusals::in_flight_counts_each_run_once())
        }),
        ("several_workers_share_the_queue", || {
            Box::pin(several_workers_share_the_queue())
        }),
        (
            "a_worker_killed_mid_task_has_its_task_redelivered_to_another",
            || Box::pin(a_worker_killed_mid_task_has_its_task_redelivered_to_another()),
        ),
        (
            "a_duplicate_completion_after_redelivery_is_suppressed",
            || Box::pin(a_duplicate_completion_after_redelivery_is_suppressed()),
        ),
        (
            "a_task_that_keeps_killing_its_workers_fails_after_max_deliveries",
            || Box::pin(a_task_that_keeps_killing_its_workers_fails_after_max_deliveries()),
        ),
        (
            "a_max_deliveries_advisory_sent_while_the_submitting_side_is_away_still_ends_the_request",
            || {
                Box::pin(
                    a_max_deliveries_advisory_sent_while_the_submitting_side_is_away_still_ends_the_request(),
                )
            },
        ),
        (
            "advisories_an_application_stream_holds_already_are_read_there",
            || Box::pin(advisories_an_application_stream_holds_already_are_read_there()),
        ),
        (
            "an_advisory_kept_from_before_the_start_never_fails_a_later_run",
            || Box::pin(an_advisory_kept_from_before_the_start_never_fails_a_later_run()),
        ),
        (
            "advisories_a_narrower_application_stream_holds_are_named_in_the_error",
            || Box::pin(advisories_a_narrower_application_stream_holds_are_named_in_the_error()),
        ),
        ("a_strategys_debug_shows_no_credentials", || {
            Box::pin(a_strategys_debug_shows_no_credentials())
        }),
        ("the_coordinators_timeout_reaches_the_worker", || {
            Box::pin(the_coordinators_timeout_reaches_the_worker())
        }),
        ("a_run_cancelled_before_it_began_is_counted_stopped", || {
            Box::pin(a_run_cancelled_before_it_began_is_counted_stopped())
        }),
        (
            "a_withdrawn_task_is_never_run_by_a_worker_that_comes_later",
            || Box::pin(a_withdrawn_task_is_never_run_by_a_worker_that_comes_later()),
        ),
        ("tasks_withdrawn_while_handed_over_are_taken_out", || {
            Box::pin(tasks_withdrawn_while_handed_over_are_taken_out())
        }),
        ("no_request_waits_forever_across_a_server_restart", || {
            Box::pin(no_request_waits_forever_across_a_server_restart())
        }),
        (
            "a_server_gone_for_good_fails_the_waiting_requests_saying_so",
            || Box::pin(a_server_gone_for_good_fails_the_waiting_requests_saying_so()),
        ),
        ("a_task_no_worker_takes_expires_with_the_stream", || {
            Box::pin(a_task_no_worker_takes_expires_with_the_stream())
        }),
        ("the_replicas_setting_reaches_the_server", || {
            Box::pin(the_replicas_setting_reaches_the_server())
        }),
        (
            "subjects_another_stream_holds_are_named_with_the_way_out",
            || Box::pin(subjects_another_stream_holds_are_named_with_the_way_out()),
        ),
        (
            "a_remote_nodes_events_arrive_in_order_before_its_terminal_message",
            || Box::pin(a_remote_nodes_events_arrive_in_order_before_its_terminal_message()),
        ),
        (
            "a_node_broadcasting_faster_than_its_worker_publishes_is_told_what_was_missed",
            || {
                Box::pin(
                    a_node_broadcasting_faster_than_its_worker_publishes_is_told_what_was_missed(),
                )
            },
        ),
        (
            "a_task_waits_with_the_server_while_its_worker_is_busy",
            || Box::pin(a_task_waits_with_the_server_while_its_worker_is_busy()),
        ),
        (
            "two_deliveries_of_one_run_on_one_worker_are_each_answered",
            || Box::pin(two_deliveries_of_one_run_on_one_worker_are_each_answered()),
        ),
        (
            "dropping_a_serving_worker_releases_its_tasks_and_connection",
            || Box::pin(dropping_a_serving_worker_releases_its_tasks_and_connection()),
        ),
        (
            "a_worker_whose_consumer_is_deleted_says_so_and_returns",
            || Box::pin(a_worker_whose_consumer_is_deleted_says_so_and_returns()),
        ),
        (
            "runs_out_when_the_strategy_is_dropped_end_and_are_withdrawn",
            || Box::pin(runs_out_when_the_strategy_is_dropped_end_and_are_withdrawn()),
        ),
        (
            "a_strategy_dropped_off_its_runtime_still_withdraws_and_tidies",
            || Box::pin(a_strategy_dropped_off_its_runtime_still_withdraws_and_tidies()),
        ),
        (
            "messages_over_the_servers_limits_fail_at_once_typed",
            || Box::pin(messages_over_the_servers_limits_fail_at_once_typed()),
        ),
        (
            "a_worker_whose_consumer_is_deleted_while_it_is_busy_says_so",
            || Box::pin(a_worker_whose_consumer_is_deleted_while_it_is_busy_says_so()),
        ),
        (
            "an_idle_worker_pulls_again_as_soon_as_its_server_is_back",
            || Box::pin(an_idle_worker_pulls_again_as_soon_as_its_server_is_back()),
        ),
        ("the_size_limit_is_the_streams_whoever_made_them", || {
            Box::pin(the_size_limit_is_the_streams_whoever_made_them())
        }),
        ("a_run_first_polled_after_a_shutdown_ends_at_once", || {
            Box::pin(a_run_first_polled_after_a_shutdown_ends_at_once())
        }),
        (
            "streams_deleted_while_the_strategy_runs_are_made_again",
            || Box::pin(streams_deleted_while_the_strategy_runs_are_made_again()),
        ),
        ("a_task_no_worker_can_decode_is_answered_at_once", || {
            Box::pin(a_task_no_worker_can_decode_is_answered_at_once())
        }),
        ("a_short_max_age_leaves_publish_retries_on", || {
            Box::pin(a_short_max_age_leaves_publish_retries_on())
        }),
        (
            "the_longest_spans_are_taken_as_the_most_the_server_reads",
            || Box::pin(the_longest_spans_are_taken_as_the_most_the_server_reads()),
        ),
        ("the_longest_ack_wait_leaves_the_server_idle", || {
            Box::pin(the_longest_ack_wait_leaves_the_server_idle())
        }),
        ("a_worker_of_unbounded_concurrency_serves", || {
            Box::pin(a_worker_of_unbounded_concurrency_serves())
        }),
        (
            "a_strategy_shut_down_or_dropped_leaves_no_task_or_reader_behind",
            || Box::pin(a_strategy_shut_down_or_dropped_leaves_no_task_or_reader_behind()),
        ),
        (
            "a_shutdown_withdraws_every_queued_task_from_a_distant_server",
            || {
                Box::pin(
                    withdrawals::a_shutdown_withdraws_every_queued_task_from_a_distant_server(),
                )
            },
        ),
        (
            "a_shutdown_past_its_grace_leaves_no_task_for_a_later_worker",
            || Box::pin(a_shutdown_past_its_grace_leaves_no_task_for_a_later_worker()),
        ),
        (
            "a_completion_is_stored_only_while_its_submitting_side_is_away",
            || Box::pin(direct::a_completion_is_stored_only_while_its_submitting_side_is_away()),
        ),
        ("a_completion_its_side_does_not_confirm_is_stored", || {
            Box::pin(direct::a_completion_its_side_does_not_confirm_is_stored())
        }),
        ("a_side_that_did_not_confirm_in_time_is_let_be", || {
            Box::pin(direct::a_side_that_did_not_confirm_in_time_is_let_be())
        }),
        (
            "a_worker_cut_off_while_it_hands_over_blames_no_side",
            || Box::pin(direct::a_worker_cut_off_while_it_hands_over_blames_no_side()),
        ),
    ];
    let trials = tests
        .iter()
        .map(|&(name, test)| {
            let url = url.clone();
            libtest_mimic::Trial::test(name, move || {
                if !available {
                    return Err(
                        format!("REQUIRE_NATS=1 but no NATS server answers at {url}").into(),
                    );
                }
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(test());
                Ok(())
            })
            .with_ignored_flag(!available && !required)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

/// A configuration of its own for each test: its own stream and subjects.
fn config(test: &str) -> NatsConfig {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let tag = format!("{}_{}_{n}", test, std::process::id());
    NatsConfig {
        stream: format!("T_{tag}"),
        prefix: format!("t{}", tag.replace('_', "-")),
        mode: "m".into(),
        ..NatsConfig::default()
    }
}

/// A worker process, killed when dropped.
struct Worker(Child);

impl Worker {
    fn start(config: &NatsConfig, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_exec-nats-worker"))
            .args(["--url", &config.url, "--stream", &config.stream])
            .args(["--prefix", &config.prefix, "--mode", &config.mode])
            .args(extra)
            .stdout(Stdio::piped())
            // Its nodes panic and it is killed or cut off on purpose here; what it would say
            // about that comes back to the test as the tasks' errors.
            .stderr(Stdio::null())
            .spawn()
            .expect("the worker binary starts");
        // Wait until its consumer is bound.
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("the worker says it is ready");
        assert!(line.starts_with("ready"), "worker said {line:?}");
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn coordinator(
    config: &NatsConfig,
) -> (RequestCompletionPublisher, Coordinator, NatsStrategy) {
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .expect("the strategy connects");
    let shared = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .expect("a second handle connects");
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().strategy("nats", strategy).build();
    coordinator.start(&publisher).unwrap();
    (publisher, coordinator, shared)
}

async fn cleanup(config: &NatsConfig) {
    if let Ok(client) = async_nats::connect(&config.url).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(&config.stream).await;
        let _ = js.delete_stream(config.completion_stream()).await;
        let _ = js.delete_stream(config.advisory_stream()).await;
    }
}
/// A NATS server of the test's own, with JetStream storing on disk, on a free loopback port: it
/// can be killed and restarted (the shared server is never touched).
struct OwnServer {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("exec-nats-{}-{port}", std::process::id()));
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn();
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again: the same port and store) and waits until it answers.
    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (the distributed tests need it)");
        self.child = Some(child);
        let start = Instant::now();
        while !server_available(&self.url()) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server at once (SIGKILL: nothing is flushed or said goodbye to).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Serialize, Deserialize)]
struct NotInTheWorker;

impl Node for NotInTheWorker {
    type Output = ();
    async fn invoke(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl PortableNode for NotInTheWorker {
    const NAME: &'static str = "not-in-the-worker";
}

async fn a_remote_nodes_events_arrive_in_order_before_its_terminal_message() {
    const N: u32 = 300;
    let config = config("events");
    let _worker = Worker::start(&config, &["--concurrency", "2"]);
    let (publisher, coordinator, _) = coordinator(&config).await;
    let mut about = publisher
        .subscribe_stream_where(Buffer::Unbounded, |m: &RequestCompletionMessage| {
            m.request_id().is_some_and(|r| r.as_str() == "counting")
        })
        .unwrap();
    let options = SubmitOptions::new().with_events();
    let mut handle = coordinator
        .spawn(Task::portable("counting", Count(N)), "nats", options)
        .await
        .unwrap();
    let mut heard = Vec::new();
    while let Some(event) = handle.next_event().await {
        heard.push(event.to_string());
    }
    assert_eq!(handle.await.unwrap(), N);
    let expected: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    assert_eq!(heard, expected, "the caller's events, in order");
    let mut on_bus = Vec::new();
    loop {
        match about.next().await.unwrap().unwrap() {
            RequestCompletionMessage::Broadcast(event) => on_bus.push(event.event.to_string()),
            terminal => {
                assert!(terminal.is_terminal(), "{terminal}");
                break;
            }
        }
    }
    assert_eq!(
        on_bus, expected,
        "every event on the bus before the terminal message"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// A node broadcasts a million events at once, far faster than its worker publishes them: the
/// worker keeps a bounded number waiting (its unit tests bound it), the request ends with the
/// node's value, and the caller hears the events in order, with the ones the worker dropped
/// counted exactly, at their place, by `missed_event`s: every one of the million is heard or
/// counted.
async fn a_node_broadcasting_faster_than_its_worker_publishes_is_told_what_was_missed() {
    const N: u32 = 1_000_000;
    let config = config("burst");
    let _worker = Worker::start(&config, &["--concurrency", "1"]);
    let (publisher, coordinator, _) = coordinator(&config).await;
    let options = SubmitOptions::new()
        .with_events()
        .timeout(Duration::from_secs(120));
    let mut handle = coordinator
        .spawn(Task::portable("burst", Burst(N)), "nats", options)
        .await
        .unwrap();
    let (mut next, mut missed, mut markers) = (1_u64, 0_u64, 0);
    while let Some(event) = handle.next_event().await {
        if let Some(count) = exec_nats::wire::missed_count(&event) {
            assert!(count > 0, "a count of nothing");
            missed += count;
            next += count;
            markers += 1;
            continue;
        }
        assert_eq!(
            event.parse::<u64>().ok(),
            Some(next),
            "the events in order, a gap only where counted"
        );
        next += 1;
    }
    assert_eq!(handle.await.unwrap(), N);
    assert_eq!(
        next - 1,
        u64::from(N),
        "every event heard or counted missed"
    );
    eprintln!("burst: {missed} of {N} events missed, counted by {markers} events");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

async fn values_errors_panics_and_unknown_nodes_come_back_typed() {
    let config = config("typed");
    let _worker = Worker::start(&config, &["--concurrency", "2"]);
    let (publisher, coordinator, _) = coordinator(&config).await;

    let v = coordinator
        .submit(Task::portable("echo", Echo(41)), "nats")
        .await
        .unwrap();
    assert_eq!(v, 41);
    let e = coordinator
        .submit(Task::portable("fail", Fail("no luck".into())), "nats")
        .await
        .unwrap_err();
    assert!(e.task_error().unwrap().is_node_error());
    assert_eq!(e.task_error().unwrap().message(), "no luck");
    let e = coordinator
        .submit(Task::portable("panic", Fail("panic:boom".into())), "nats")
        .await
        .unwrap_err();
    assert!(e.task_error().unwrap().is_panic(), "{e}");
    let e = coordinator
        .submit(Task::portable("unknown", NotInTheWorker), "nats")
        .await
        .unwrap_err();
    assert!(e.task_error().unwrap().is_not_registered(), "{e}");
    let closure = Task::from_fn("closure", "closure", || async { Ok::<_, BoxError>(1) });
    let e = coordinator.submit(closure, "nats").await.unwrap_err();
    assert!(e.task_error().unwrap().is_unsupported(), "{e}");
    // The worker kept serving after all of that.
    let v = coordinator
        .submit(Task::portable("after", Echo(1)), "nats")
        .await
        .unwrap();
    assert_eq!(v, 1);
    assert_eq!(coordinator.counts().succeeded, 2);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

async fn several_workers_share_the_queue() {
    let config = config("share");
    let workers: Vec<Worker> = (0..3)
        .map(|_| Worker::start(&config, &["--concurrency", "1"]))
        .collect();
    let (publisher, coordinator, _) = coordinator(&config).await;
    let calls = (0..24).map(|i| {
        let c = coordinator.clone();
        async move {
            c.submit(Task::portable(format!("n{i}"), Nap(40)), "nats")
                .await
                .unwrap()
        }
    });
    let pids: std::collections::HashSet<u32> =
        futures::future::join_all(calls).await.into_iter().collect();
    assert!(pids.len() >= 2, "work was spread over {pids:?}");
    assert!(pids.iter().all(|p| workers.iter().any(|w| w.pid() == *p)));
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

async fn a_worker_killed_mid_task_has_its_task_redelivered_to_another() {
    let config = config("kill");
    let gate = Gate::new("kill");
    let first = Worker::start(&config, &["--ack-wait-ms", "1000"]);
    let (publisher, coordinator, _) = coordinator(&config).await;
    let c = coordinator.clone();
    let node = gate.node();
    let call = tokio::spawn(async move { c.submit(Task::portable("slow", node), "nats").await });
    // The first worker holds the task, unacknowledged, its node waiting at the gate.
    until_workers_consumer(&config, "the first worker to take the task", |info| {
        info.num_ack_pending == 1
    })
    .await;
    let victim = first.pid();
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(first);
    // Open only once the first worker is gone: no run but the next one can end.
    gate.open();
    let second = Worker::start(&config, &["--ack-wait-ms", "1000"]);
    let pid = call.await.unwrap().unwrap();
    assert_eq!(pid, second.pid(), "the second worker finished it");
    assert_eq!(
        coordinator.job("slow").unwrap().result(),
        Some(JobResult::Success)
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

async fn a_duplicate_completion_after_redelivery_is_suppressed() {
    let config = config("dup");
    let gate = Gate::new("dup");
    // This worker dies after publishing its first completion, before acknowledging the task.
    let mut dying = Worker::start(
        &config,
        &["--ack-wait-ms", "500", "--exit-before-ack-after", "1"],
    );
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let strategy = std::sync::Arc::new(
        NatsStrategy::builder()
            .config(config.clone())
            .start()
            .await
            .unwrap(),
    );
    let coordinator = Coordinator::builder()
        .shared_strategy("nats", strategy.clone())
        .build();
    coordinator.start(&publisher).unwrap();
    let terminal = std::sync::Arc::new(AtomicU32::new(0));
    let seen = terminal.clone();
    publisher
        .subscribe_with(coordinator::Buffer::Unbounded, move |m| {
            if m.expect("an unbounded subscriber misses nothing")
                .is_terminal()
            {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();

    let c = coordinator.clone();
    let node = gate.node();
    let call = tokio::spawn(async move { c.submit(Task::portable("once", node), "nats").await });
    // The worker answers only once it holds the task: the server sent the strategy its
    // acknowledgement of the task before delivering it, a round trip and a gate ago, and the
    // strategy, knowing where the stream keeps the task, leaves it there for the redelivery. A
    // run answered before the strategy read that acknowledgement has its task taken out of the
    // stream instead, and nothing is delivered again.
    until_workers_consumer(&config, "the dying worker to take the task", |info| {
        info.num_ack_pending == 1
    })
    .await;
    gate.open();
    let v = call.await.unwrap().unwrap();
    assert_eq!(v, dying.pid());
    assert_eq!(dying.0.wait().unwrap().code(), Some(3));
    // The unacknowledged task goes to the next worker, which answers it again (and
    // acknowledges it, so the stream empties). The second completion carries the same run id:
    // the strategy drops it (or the completion stream, when both were stored).
    let _second = Worker::start(&config, &["--ack-wait-ms", "500"]);
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut tasks = js.get_stream(&config.stream).await.unwrap();
        if tasks.info().await.unwrap().state.messages == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the redelivered task was never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut done = js.get_stream(config.completion_stream()).await.unwrap();
    let stored = done.info().await.unwrap().state.last_sequence;
    // Handed over directly, each reached the strategy; stored, the stream kept one.
    assert!(
        strategy.duplicates() + stored >= 1,
        "the second completion reached the strategy or the stream"
    );
    assert!(stored <= 1, "the second completion was not stored again");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    assert_eq!(terminal.load(Ordering::SeqCst), 1, "one terminal message");
    assert_eq!(coordinator.counts().succeeded, 1);
    cleanup(&config).await;
}

/// It fails as poison: the server redelivered it already, so no retry policy runs it again (and
/// kills more workers).
async fn a_task_that_keeps_killing_its_workers_fails_after_max_deliveries() {
    let config = config("poison");
    let (publisher, coordinator, _) = coordinator(&config).await;
    let respawner = Respawner::start(&config, &["--ack-wait-ms", "300", "--max-deliver", "2"]);
    let error = coordinator
        .submit_with(
            Task::portable("poison", Fail("exit:".into())),
            "nats",
            SubmitOptions::new().timeout(Duration::from_secs(30)).retry(
                RetryPolicy::new(3).backoff(Duration::from_millis(10), Duration::from_millis(10)),
            ),
        )
        .await
        .unwrap_err();
    let task_error = error.task_error().unwrap();
    assert!(task_error.is_poison(), "{error}");
    assert_eq!(coordinator.job("poison").unwrap().attempts(), 1);
    assert!(
        task_error.message().contains("delivered 2 times"),
        "{error}"
    );
    // Its message left the stream before the caller heard: a program ending now leaves nothing.
    assert_eq!(tasks_in_stream(&config).await, 0);
    let restarts = respawner.stop();
    assert!(
        restarts >= 2,
        "each delivery killed a worker ({restarts} restarts)"
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// The application keeps the server's advisories in a stream of its own, which holds the
/// subject the strategy's advisory stream would: the strategy reads them there.
async fn advisories_an_application_stream_holds_already_are_read_there() {
    let config = config("advisory-held");
    let client = async_nats::connect(&config.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let audit = format!("{}_AUDIT", config.stream);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: audit.clone(),
        subjects: vec![format!("$JS.EVENT.ADVISORY.CONSUMER.*.{}.>", config.stream)],
        ..Default::default()
    })
    .await
    .expect("the application's stream");
    let (publisher, coordinator, _) = coordinator(&config).await;
    let respawner = Respawner::start(&config, &["--ack-wait-ms", "300", "--max-deliver", "2"]);
    let poison = Task::portable("poison", Fail("exit:".into()));
    let options = SubmitOptions::new().timeout(Duration::from_secs(30));
    let error = coordinator
        .submit_with(poison, "nats", options)
        .await
        .unwrap_err();
    assert!(error.task_error().unwrap().is_poison(), "{error}");
    assert!(respawner.stop() >= 2, "each delivery killed a worker");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    let _ = js.delete_stream(&audit).await;
    cleanup(&config).await;
}

/// The application keeps only some of the advisories (those of one consumer) in a stream of its
/// own: the strategy cannot keep them all, and its error says which stream holds them. The
/// refused start leaves no consumer of its own on the server.
async fn advisories_a_narrower_application_stream_holds_are_named_in_the_error() {
    let config = config("advisory-narrow");
    let client = async_nats::connect(&config.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let audit = format!("{}_AUDIT", config.stream);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: audit.clone(),
        subjects: vec![format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}-workers",
            config.stream, config.mode
        )],
        ..Default::default()
    })
    .await
    .expect("the application's stream");
    let error = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .expect_err("the advisories' subject is held in part by another stream");
    let consumers = match js.get_stream(config.completion_stream()).await {
        Ok(mut done) => done.info().await.unwrap().state.consumer_count,
        Err(_) => 0,
    };
    let _ = js.delete_stream(&audit).await;
    cleanup(&config).await;
    assert!(error.is_config_error(), "{error}");
    assert_eq!(
        consumers, 0,
        "the refused start left its completion consumer"
    );
    let message = error.to_string();
    for part in [format!("held by stream {audit} "), config.advisory_stream()] {
        assert!(message.contains(&part), "{part:?} missing from: {message}");
    }
}

/// A strategy (or its configuration) written to a log shows its server, not its password.
async fn a_strategys_debug_shows_no_credentials() {
    let config = config("debug");
    let server = config.url.trim_start_matches("nats://").to_owned();
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        // A server without authorisation takes any.
        .url(format!("nats://someone:secret@{server}"))
        .start()
        .await
        .expect("the strategy connects");
    let shown = format!("{strategy:?} {:?}", strategy.config());
    drop(strategy);
    cleanup(&config).await;
    assert!(shown.contains(&server), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

/// An advisory the advisory stream kept from before this side started names a sequence a task
/// of this side takes later (the task stream was made again): it is passed over, even when the
/// consumer reading the advisories is made again and reads the stream from its start.
async fn an_advisory_kept_from_before_the_start_never_fails_a_later_run() {
    let config = config("advisory-stale");
    let client = async_nats::connect(&config.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    // Made by a first start, then an advisory about the task at sequence 1.
    let (first, earlier, shared) = coordinator(&config).await;
    drop((shared, earlier));
    first.shutdown().await;
    let stale = serde_json::json!({ "stream_seq": 1, "deliveries": 5 }).to_string();
    js.publish(
        format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.old",
            config.stream
        ),
        stale.into(),
    )
    .await
    .expect("published")
    .await
    .expect("kept");
    let (publisher, coordinator, _) = coordinator(&config).await;
    let worker = Worker::start(&config, &[]);
    let gate = Gate::new("advisory-stale");
    let task = Task::portable("held", gate.node());
    let call = spawn_submit(&coordinator, task, Duration::from_secs(30));
    // The task took sequence 1 and its run is out, its node waiting at the gate until the
    // advisories' reader, made again, has read past the stale advisory.
    until_workers_consumer(&config, "the worker to take the task", |info| {
        info.num_ack_pending == 1
    })
    .await;
    // Only this side's reader is left (the spare handle's goes with its drop): the one deleted.
    let start = Instant::now();
    while advisory_readers(&config).await.len() != 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the spare handle's reader of the advisories is removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reader of the advisories is made again: it reads the stream from its start.
    let advisories = js.get_stream(config.advisory_stream()).await.unwrap();
    for name in advisory_readers(&config).await {
        advisories.delete_consumer(&name).await.expect("deleted");
    }
    // Stored after the stale advisory (naming no task: passed over), it is read after it: once
    // the reader made again was delivered the marker, the stale advisory was read too.
    let marker = js
        .publish(
            format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.marker",
                config.stream
            ),
            "{}".into(),
        )
        .await
        .expect("published")
        .await
        .expect("kept")
        .sequence;
    let start = Instant::now();
    loop {
        let mut read = false;
        for name in advisory_readers(&config).await {
            let info = advisories.consumer_info(&name).await;
            read |= info.is_ok_and(|info| info.delivered.stream_sequence >= marker);
        }
        if read {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the advisories' reader made again read the marker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.open();
    let outcome = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("answered")
        .expect("the caller task");
    let outcome = outcome.map_err(|e| e.to_string());
    assert_eq!(outcome, Ok(worker.pid()), "the held task's own outcome");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// A file of the test's own, absent until [`Gate::open`]: a [`WaitFor`] node on it runs, in
/// whichever worker process takes it, until then. Removed when dropped.
struct Gate(std::path::PathBuf);

impl Gate {
    fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("exec-nats-gate-{test}-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    /// A node that waits for this gate.
    fn node(&self) -> WaitFor {
        WaitFor(self.0.clone())
    }

    fn open(&self) {
        std::fs::write(&self.0, b"").expect("the gate's file is made");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Submits `task` to the NATS mode with `timeout`, on a tokio task of its own.
fn spawn_submit<O: std::fmt::Debug + Send + Sync + 'static>(
    coordinator: &Coordinator,
    task: Task<O>,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<O, coordinator::SubmitError>> {
    let coordinator = coordinator.clone();
    let options = SubmitOptions::new().timeout(timeout);
    tokio::spawn(async move { coordinator.submit_with(task, "nats", options).await })
}

/// Returns once the task stream holds a task.
async fn until_published(config: &NatsConfig) {
    let start = Instant::now();
    while tasks_in_stream(config).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the task is published"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A worker started again each time the task it runs kills it (at most 10 times).
struct Respawner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Taken by `stop`; a respawner dropped without it (its test panicked) stops in `drop`, so
    /// its worker is killed rather than left running once the test binary exits.
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Respawner {
    fn start(config: &NatsConfig, args: &'static [&'static str]) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (config, stop) = (config.clone(), stop.clone());
            move || {
                let mut restarts = 0;
                let mut worker = Worker::start(&config, args);
                while restarts < 10 && !stop.load(Ordering::SeqCst) {
                    if let Ok(Some(_)) = worker.0.try_wait() {
                        worker = Worker::start(&config, args);
                        restarts += 1;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                restarts
            }
        });
        let thread = Some(thread);
        Self { stop, thread }
    }

    /// Stops the last worker; says how many times one was started again.
    fn stop(mut self) -> u32 {
        self.halt().expect("the respawner")
    }

    fn halt(&mut self) -> Option<u32> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take()?.join().ok()
    }
}

impl Drop for Respawner {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A test's configuration, and a coordinator whose strategy reaches the server through a proxy
/// that can cut it off (the test's own clients and workers reach the server directly).
async fn coordinator_behind_a_proxy(
    test: &str,
) -> (NatsConfig, Proxy, RequestCompletionPublisher, Coordinator) {
    let config = config(test);
    let proxy = Proxy::start(&config.url).await;
    let away = NatsConfig {
        url: proxy.url(),
        ..config.clone()
    };
    let (publisher, coordinator, shared) = coordinator(&away).await;
    drop(shared);
    (config, proxy, publisher, coordinator)
}

/// The server's advisory that a task reached its last delivery comes while the submitting side
/// is cut off from the server (its workers are not): the request still fails as soon as that
/// side is back, not at its own timeout.
async fn a_max_deliveries_advisory_sent_while_the_submitting_side_is_away_still_ends_the_request() {
    let (config, proxy, publisher, coordinator) = coordinator_behind_a_proxy("advisory-away").await;
    let respawner = Respawner::start(&config, &["--ack-wait-ms", "300", "--max-deliver", "2"]);
    let poison = Task::portable("poison", Fail("exit:".into()));
    let call = spawn_submit(&coordinator, poison, Duration::from_secs(90));
    // Cut off once its task is in the stream: both deliveries, and the advisory after them,
    // happen while this side is away.
    until_published(&config).await;
    proxy.cut();
    let cut = Instant::now();
    // Back once the server has sent the advisory (the advisory stream, read directly, has it),
    // and has forgotten the pull of this side's reader and then its consumer, 30 s without a
    // pull: the reader is made again on reconnecting, not half a minute later.
    let client = async_nats::connect(&config.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let start = Instant::now();
    loop {
        let mut advisories = js.get_stream(config.advisory_stream()).await.unwrap();
        if advisories.info().await.unwrap().state.messages > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server gives up on the task"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        respawner.stop() >= 2,
        "both deliveries ran while this side was away"
    );
    tokio::time::sleep(Duration::from_secs(35).saturating_sub(cut.elapsed())).await;
    proxy.restore();
    let error = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("answered soon after this side is back, long before its own timeout")
        .expect("the caller task")
        .unwrap_err();
    let task_error = error.task_error().unwrap();
    assert!(task_error.is_poison(), "{error}");
    assert_eq!(tasks_in_stream(&config).await, 0);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

async fn no_request_waits_forever_across_a_server_restart() {
    let mut server = OwnServer::start();
    let config = NatsConfig {
        url: server.url(),
        ..config("restart")
    };
    let flags = ["--concurrency", "4"];
    let _workers = [
        Worker::start(&config, &flags),
        Worker::start(&config, &flags),
    ];
    let (publisher, coordinator, _) = coordinator(&config).await;
    // No timeouts: only the strategy can end these requests.
    let calls: Vec<_> = (0..60_u64)
        .map(|i| {
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                coordinator
                    .submit(
                        Task::portable(format!("r{i}"), Nap(20 + i % 7 * 10)),
                        "nats",
                    )
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        coordinator.counts().closed < 60,
        "the server goes away while requests are out"
    );
    server.kill();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.spawn();
    let outcomes = tokio::time::timeout(Duration::from_secs(90), futures::future::join_all(calls))
        .await
        .expect("every request gets its outcome: none waits forever");
    let failed: Vec<String> = outcomes
        .into_iter()
        .map(|joined| joined.expect("the caller task"))
        .filter_map(|outcome| outcome.err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed across the restart: {failed:?}"
    );
    assert_eq!(coordinator.counts().succeeded, 60);
    #[cfg(feature = "metrics")]
    {
        // Counted at the strategy's next look at its connection (every 250 ms), which may come
        // after the last answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut recorded = recorded::counters();
        while !recorded.contains_key("nats_reconnects_total")
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            recorded = recorded::counters();
        }
        let reconnects = recorded.get("nats_reconnects_total").copied();
        assert!(reconnects >= Some(1), "a reconnect counted: {recorded:?}");
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// With the `metrics` feature: a recorder for the whole binary (it is global), installed
/// before any test runs, and what its counters hold.
#[cfg(feature = "metrics")]
mod recorded {
    use std::collections::HashMap;
    use std::sync::OnceLock;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();

    pub(crate) fn install() {
        let recorder = DebuggingRecorder::new();
        let _ = SNAPSHOTTER.set(recorder.snapshotter());
        recorder.install().expect("the only recorder");
    }

    /// Each counter's total by name, summed over its labels.
    pub(crate) fn counters() -> HashMap<String, u64> {
        let mut totals = HashMap::new();
        for (key, _, _, value) in SNAPSHOTTER.get().expect("installed").snapshot().into_vec() {
            if let DebugValue::Counter(n) = value {
                *totals.entry(key.key().name().to_owned()).or_default() += n;
            }
        }
        totals
    }
}

async fn a_server_gone_for_good_fails_the_waiting_requests_saying_so() {
    let mut server = OwnServer::start();
    let config = NatsConfig {
        url: server.url(),
        ..config("gone")
    };
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .unreachable_after(Duration::from_millis(800))
        .start()
        .await
        .expect("the strategy connects");
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().strategy("nats", strategy).build();
    coordinator.start(&publisher).unwrap();
    // No worker: the task waits in the stream, then the server goes away.
    let waiting = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            coordinator
                .submit(Task::portable("stranded", Echo(1)), "nats")
                .await
        })
    };
    // Once the stream holds it, the server goes away.
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let start = Instant::now();
    loop {
        let mut stream = js.get_stream(&config.stream).await.unwrap();
        if stream.info().await.unwrap().state.messages == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the task was never stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let error = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the request ends without a timeout of its own")
        .unwrap()
        .unwrap_err();
    let task_error = error.task_error().expect("a task error");
    assert!(task_error.is_strategy_error(), "{error}");
    assert!(error.to_string().contains("unreachable"), "{error}");
    // A request submitted while the server is away fails too, after the same wait.
    let late = tokio::time::timeout(
        Duration::from_secs(20),
        coordinator.submit(Task::portable("late", Echo(2)), "nats"),
    )
    .await
    .expect("the late request ends too");
    assert!(late.unwrap_err().task_error().unwrap().is_strategy_error());
    assert_eq!(
        coordinator.job("stranded").unwrap().result(),
        Some(JobResult::Failure)
    );
    coordinator
        .shutdown_with_grace(Duration::from_secs(2))
        .await;
    publisher.shutdown().await;
}

async fn the_replicas_setting_reaches_the_server() {
    // A single server cannot keep 3 copies: it refuses the stream, and nothing is created.
    let config = NatsConfig {
        replicas: 3,
        ..config("replicas")
    };
    let error = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .expect_err("a single server refuses replicated streams");
    assert!(error.to_string().contains("stream"), "{error}");
    cleanup(&config).await;
}

async fn subjects_another_stream_holds_are_named_with_the_way_out() {
    // A stream left by an earlier setup, under another name, holds this prefix's subjects.
    let earlier = config("earlier");
    NatsStrategy::builder()
        .config(earlier.clone())
        .start()
        .await
        .expect("the first setup creates its stream");
    let renamed = NatsConfig {
        stream: format!("OTHER_{}", std::process::id()),
        ..earlier.clone()
    };
    let error = NatsStrategy::builder()
        .config(renamed.clone())
        .start()
        .await
        .expect_err("two streams cannot hold the same subjects");
    let message = error.to_string();
    let held_by = format!("held by stream {} ", earlier.stream);
    for part in [&held_by, &renamed.stream, "NatsConfig::prefix"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    cleanup(&earlier).await;
    cleanup(&renamed).await;
}

async fn a_task_no_worker_takes_expires_with_the_stream() {
    let config = NatsConfig {
        max_age: Duration::from_secs(1),
        ..config("expiry")
    };
    let (publisher, coordinator, _) = coordinator(&config).await;
    let error = tokio::time::timeout(
        Duration::from_secs(20),
        coordinator.submit(Task::portable("unwanted", Echo(1)), "nats"),
    )
    .await
    .expect("an expired task ends its request")
    .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(error.to_string().contains("max_age"), "{error}");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// The messages the task stream holds.
async fn tasks_in_stream(config: &NatsConfig) -> u64 {
    stream_state(config).await.messages
}

async fn stream_state(config: &NatsConfig) -> async_nats::jetstream::stream::State {
    let client = async_nats::connect(&config.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(&config.stream)
        .await
        .expect("the task stream");
    stream.info().await.expect("its state").state.clone()
}

/// Requests withdrawn while their tasks are being handed over (timeouts of a millisecond or
/// two, mostly ending between the server storing a task and its acknowledgement arriving) leave
/// nothing behind either, even when the program ends right after its shutdown: each hand-over
/// goes on until the server has the task, then takes it out, and shutdown waits for that.
async fn tasks_withdrawn_while_handed_over_are_taken_out() {
    let config = config("handed-over");
    let program = {
        let config = config.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(async {
                let (publisher, coordinator, _) = coordinator(&config).await;
                let calls = (0..200_u64).map(|i| {
                    let timeout = Duration::from_micros(500 + i % 4 * 500);
                    let options = SubmitOptions::new().timeout(timeout);
                    let task = Task::portable(format!("r{i}"), Echo(i));
                    coordinator.submit_with(task, "nats", options)
                });
                let outcomes = futures::future::join_all(calls).await;
                let timed_out = outcomes
                    .iter()
                    .filter(|o| o.as_ref().is_err_and(|e| e.is_timeout()));
                assert_eq!(timed_out.count(), 200, "no worker: every request times out");
                coordinator.shutdown().await;
                publisher.shutdown().await;
            });
            // The program ends: whatever it left running stops here.
        })
    };
    tokio::task::spawn_blocking(move || program.join().unwrap())
        .await
        .unwrap();
    let state = stream_state(&config).await;
    assert_eq!(
        state.messages, 0,
        "of {} tasks stored, some were left for a worker that comes later",
        state.last_sequence
    );
    cleanup(&config).await;
}

/// A request that timed out, or was cancelled, before any worker took its task leaves nothing
/// for a worker that comes later: its task is taken out of the stream.
async fn a_withdrawn_task_is_never_run_by_a_worker_that_comes_later() {
    let config = config("withdrawn");
    let (publisher, coordinator, _) = coordinator(&config).await;
    // Waits (up to 10 s) until the stream holds `n` tasks, and says how many it holds.
    let until = |n: u64| {
        let config = &config;
        async move {
            let start = Instant::now();
            while tasks_in_stream(config).await != n && start.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tasks_in_stream(config).await
        }
    };
    let timed_out = coordinator
        .submit_with(
            Task::portable("timed-out", Echo(1)),
            "nats",
            SubmitOptions::new().timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(timed_out.is_timeout(), "{timed_out}");
    assert_eq!(until(0).await, 0, "the timed-out task is withdrawn");
    let handle = coordinator
        .spawn(
            Task::portable("cancelled", Echo(2)),
            "nats",
            SubmitOptions::new(),
        )
        .await
        .unwrap();
    // Its task reaches the stream (the server acknowledges it) before the cancellation.
    assert_eq!(until(1).await, 1);
    handle.cancel();
    assert!(handle.await.unwrap_err().is_cancelled());
    // A worker that comes now finds nothing of them to run.
    assert_eq!(until(0).await, 0, "the cancelled task is withdrawn");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

async fn the_coordinators_timeout_reaches_the_worker() {
    let config = config("timeout");
    let _worker = Worker::start(&config, &["--concurrency", "1"]);
    let (publisher, coordinator, _) = coordinator(&config).await;
    let error = coordinator
        .submit_with(
            Task::portable("long", Nap(60_000)),
            "nats",
            SubmitOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    // The worker dropped the cancelled node, so its only place is free for the next task.
    let v = coordinator
        .submit_with(
            Task::portable("next", Echo(2)),
            "nats",
            SubmitOptions::new().timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    assert_eq!(v, 2);
    let stats = &coordinator.system_detail().modes["nats"];
    let counted = (stats.succeeded, stats.failed, stats.stopped);
    assert_eq!(counted, (1, 0, 1), "the timed-out run counted stopped");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// Cancelled before its runtime first polls the strategy's run: counted all the same.
async fn a_run_cancelled_before_it_began_is_counted_stopped() {
    let config = config("unpolled");
    let on_one_thread = config.clone();
    let counted = tokio::task::spawn_blocking(move || {
        let mut rt = tokio::runtime::Builder::new_current_thread();
        rt.enable_all().build().unwrap().block_on(async {
            let (publisher, coordinator, _) = coordinator(&on_one_thread).await;
            let task = Task::portable("long", Nap(60_000));
            let handle = coordinator.try_spawn(task, "nats", SubmitOptions::new());
            let handle = handle.unwrap();
            // Nothing else ran on this thread since.
            handle.cancel();
            assert!(handle.await.unwrap_err().is_cancelled());
            coordinator.shutdown().await;
            publisher.shutdown().await;
            let stats = &coordinator.system_detail().modes["nats"];
            (
                stats.in_flight,
                stats.succeeded,
                stats.failed,
                stats.stopped,
            )
        })
    });
    assert_eq!(counted.await.unwrap(), (0, 0, 0, 1));
    cleanup(&config).await;
}

/// A worker with no place free pulls nothing: the task stays with the server (not in the
/// worker's buffer, where its `ack_wait` would run out and the server send it again) until a
/// place frees, then runs once.
async fn a_task_waits_with_the_server_while_its_worker_is_busy() {
    let config = config("busy");
    let gate = Gate::new("busy");
    let _worker = Worker::start(&config, &["--concurrency", "2", "--ack-wait-ms", "500"]);
    let (publisher, coordinator, shared) = coordinator(&config).await;
    let spawn = |id: &str, node| {
        let task = Task::portable(id, node);
        coordinator
            .try_spawn(task, "nats", SubmitOptions::new())
            .unwrap()
    };
    // Both places taken, until the gate opens, before the third task is sent.
    let busy = [spawn("busy-1", gate.node()), spawn("busy-2", gate.node())];
    until_workers_consumer(&config, "both places taken", |info| {
        info.num_ack_pending == 2
    })
    .await;
    let queued = spawn("queued", gate.node());
    let start = Instant::now();
    while tasks_in_stream(&config).await < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the queued task is sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the worker's `ack_wait` (at least), with both places still taken.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let stream = js.get_stream(&config.stream).await.unwrap();
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("m-workers").await.unwrap();
    let info = consumer.get_info().await.unwrap();
    let (with_the_server, delivered) = (info.num_pending, info.num_ack_pending);
    assert_eq!(
        (with_the_server, delivered),
        (1, 2),
        "the queued task stays with the server"
    );
    gate.open();
    let within = |handle| tokio::time::timeout(Duration::from_secs(20), handle);
    within(queued).await.expect("answered").expect("ran");
    for handle in busy {
        within(handle).await.expect("answered").expect("ran");
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
    // The spare handle, still reading the advisories, would make their stream again
    // after the cleanup and leave it on the server.
    drop(shared);
    cleanup(&config).await;
}

/// The same run delivered twice to one worker while it runs (a redelivery, or a copy sent again
/// after a reconnection): each delivery runs and is answered; neither is taken for cancelled.
async fn two_deliveries_of_one_run_on_one_worker_are_each_answered() {
    use exec_nats::wire::{PROTOCOL_VERSION, Reply, TaskMessage, decode, encode};
    let config = config("twice");
    let _worker = Worker::start(&config, &["--concurrency", "4"]);
    let client = async_nats::connect(&config.url).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let reply = format!("{}.done.me", config.prefix);
    let mut done = client.subscribe(reply.clone()).await.unwrap();
    let task = TaskMessage {
        version: PROTOCOL_VERSION,
        run: "me.1".into(),
        request_id: "r".into(),
        name: "nap".into(),
        payload: task_core::encode(&Nap(500)).unwrap(),
        reply,
    };
    let bytes = encode(&task).unwrap();
    for copy in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("copy-{copy}").as_str());
        let sent = js.publish_with_headers(config.task_subject(), headers, bytes.clone().into());
        sent.await.unwrap().await.unwrap();
    }
    let mut answers = 0;
    while answers < 2 {
        let next = tokio::time::timeout(Duration::from_secs(10), done.next()).await;
        let message = next.expect("both deliveries answered").expect("subscribed");
        if let Ok(Reply::Done(completion)) = decode::<Reply>(&message.payload) {
            assert_eq!(completion.run, "me.1");
            assert!(completion.outcome.is_ok(), "{:?}", completion.outcome);
            answers += 1;
        }
    }
    cleanup(&config).await;
}

/// Dropping `run_until`'s future (a timeout, a `select!`) leaves no task of the worker's behind,
/// and so no connection.
async fn dropping_a_serving_worker_releases_its_tasks_and_connection() {
    let config = config("dropped");
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(config.clone())
        .connect()
        .await
        .unwrap();
    let serving = worker.run_until(std::future::pending());
    let served = tokio::time::timeout(Duration::from_millis(300), serving).await;
    assert!(served.is_err(), "still serving when dropped");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > before {
        let left = metrics.num_alive_tasks() - before;
        assert!(
            Instant::now() < deadline,
            "{left} tasks outlive the dropped worker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cleanup(&config).await;
}

/// Nothing more would come to a worker whose consumer is gone: `run_until` returns the error,
/// however long it was asked to serve.
async fn a_worker_whose_consumer_is_deleted_says_so_and_returns() {
    let config = config("deleted");
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(config.clone())
        .connect()
        .await
        .unwrap();
    let serving = tokio::spawn(worker.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let stream = js.get_stream(&config.stream).await.unwrap();
    stream.delete_consumer("m-workers").await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(20), serving).await;
    let error = served
        .expect("returned")
        .expect("no panic")
        .expect_err("an error");
    assert!(error.is_consumer_gone(), "{error}");
    assert!(error.to_string().contains("consumer"), "{error}");
    cleanup(&config).await;
}

/// A started strategy and a run of it whose task waits in the stream (no worker takes it).
async fn a_task_in_the_stream(
    config: &NatsConfig,
) -> (
    NatsStrategy,
    tokio::task::JoinHandle<Result<coordinator::Value, coordinator::TaskError>>,
) {
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .unwrap();
    let running = task_core::run(&strategy, Task::portable("out", Echo(1)).into_erased());
    let running = tokio::spawn(running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tasks_in_stream(config).await == 0 {
        assert!(Instant::now() < deadline, "the task reached the stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (strategy, running)
}

/// A strategy dropped without `shutdown` while a run is out (no worker has taken its task):
/// the run ends, as at shutdown, and its task leaves the stream. A run accepted before the drop
/// and first polled after it ends the same way, its task never sent.
async fn runs_out_when_the_strategy_is_dropped_end_and_are_withdrawn() {
    let config = config("dropped-strategy");
    let (strategy, running) = a_task_in_the_stream(&config).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let late = task_core::run(&strategy, Task::portable("late", Echo(2)).into_erased());
    drop(strategy);
    let ended = tokio::time::timeout(Duration::from_secs(10), running).await;
    let error = ended
        .expect("the run ended")
        .expect("no panic")
        .expect_err("no answer");
    assert!(error.is_shutdown(), "{error}");
    let late = tokio::time::timeout(Duration::from_secs(10), late).await;
    let error = late.expect("the late run ended").expect_err("no answer");
    assert!(error.is_shutdown(), "{error}");
    while tasks_in_stream(&config).await > 0 {
        assert!(Instant::now() < deadline, "the task was withdrawn");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cleanup(&config).await;
}

/// The same, the strategy dropped on a thread with no runtime (as a dropped coordinator ends
/// what it had open on a thread of its own), or inside a short-lived runtime: the task still
/// leaves the stream, and the strategy's completion consumer and advisories' reader leave the
/// server, on the runtime it was started on.
async fn a_strategy_dropped_off_its_runtime_still_withdraws_and_tidies() {
    for short_lived in [false, true] {
        let config = config(if short_lived {
            "dropped-in-other"
        } else {
            "dropped-off"
        });
        let (strategy, running) = a_task_in_the_stream(&config).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        std::thread::spawn(move || {
            if short_lived {
                let other = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                other.unwrap().block_on(async move { drop(strategy) });
            } else {
                drop(strategy);
            }
        })
        .join()
        .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), running).await;
        let error = ended
            .expect("ended")
            .expect("no panic")
            .expect_err("no answer");
        assert!(error.is_shutdown(), "{error}");
        let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
        loop {
            let mut done = js.get_stream(config.completion_stream()).await.unwrap();
            let consumers = done.info().await.unwrap().state.consumer_count;
            let tasks = tasks_in_stream(&config).await;
            let readers = advisory_readers(&config).await;
            if tasks == 0 && consumers == 0 && readers.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "left behind ({short_lived}): {tasks} tasks, {consumers} completion consumers, readers {readers:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cleanup(&config).await;
    }
}

/// A task or an output too large for the streams and the server, however near the limit (its
/// message-id header counts too), fails at once as an encoding error: never retried as if the
/// server were away, never run again and again until the server gives up on it.
async fn messages_over_the_servers_limits_fail_at_once_typed() {
    let config = config("limits");
    let _worker = Worker::start(&config, &[]);
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .unreachable_after(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().strategy("nats", strategy).build();
    coordinator.start(&publisher).unwrap();
    let limit = usize::try_from(config.max_message_size).unwrap();
    let kind = |error: &coordinator::SubmitError| {
        let error = error.task_error();
        let said = |is: fn(&coordinator::TaskError) -> bool| error.is_some_and(is);
        (said(|e| e.is_encoding_error()), said(|e| e.is_node_error()))
    };
    // An output twice the limit.
    let big = coordinator.submit(Task::portable("big-output", Pad(2 * limit)), "nats");
    let big = tokio::time::timeout(Duration::from_secs(10), big).await;
    let error = big.expect("the big output failed at once").unwrap_err();
    assert!(error.to_string().contains("completion"), "{error}");
    assert_eq!(kind(&error), (true, false), "{error}");
    // Tasks whose bodies end within a header's length of the limit, either side of it: each
    // too large to send, or run and its error (which holds the text) too large to store, or
    // run and its error stored.
    for i in 0..24 {
        let text = "y".repeat(limit - 200 + i * 8);
        let task = Task::portable(format!("near-{i}"), Fail(text));
        let ran = coordinator.submit(task, "nats");
        let ran = tokio::time::timeout(Duration::from_secs(10), ran).await;
        let error = ran
            .expect("the task near the limit ended at once")
            .unwrap_err();
        let said: String = error.to_string().chars().take(300).collect();
        assert_ne!(kind(&error), (false, false), "task {i}: {said}");
    }
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// The consumer deleted while the worker's only place is busy, so that no pull is at the
/// server to be told: the next pull gets no answer, and `run_until` still returns the error.
async fn a_worker_whose_consumer_is_deleted_while_it_is_busy_says_so() {
    let config = config("deleted-busy");
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(config.clone())
        .concurrency(1)
        .connect()
        .await
        .unwrap();
    let serving = tokio::spawn(worker.run_until(std::future::pending()));
    let (publisher, coordinator, shared) = coordinator(&config).await;
    let gate = Gate::new("deleted-busy");
    let task = Task::portable("busy", gate.node());
    let busy = coordinator
        .try_spawn(task, "nats", SubmitOptions::new())
        .unwrap();
    // The worker's only place is taken, its node waiting at the gate, and no pull of it waits
    // at the server: the gate opens once the consumer is gone, so the next pull comes after.
    until_workers_consumer(&config, "the worker to take the task", |info| {
        info.num_ack_pending == 1 && info.num_waiting == 0
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let stream = js.get_stream(&config.stream).await.unwrap();
    let deleted = stream.delete_consumer("m-workers").await;
    gate.open();
    deleted.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(30), serving).await;
    let error = served
        .expect("returned")
        .expect("no panic")
        .expect_err("an error");
    assert!(error.is_consumer_gone(), "{error}");
    assert!(error.to_string().contains("consumer"), "{error}");
    drop(busy);
    coordinator.shutdown().await;
    publisher.shutdown().await;
    // The spare handle, still reading the advisories, would make their stream again
    // after the cleanup and leave it on the server.
    drop(shared);
    cleanup(&config).await;
}

/// A restarted server forgets the pull an idle worker had made: the worker makes it again
/// once reconnected, not when the lost pull would have run out.
async fn an_idle_worker_pulls_again_as_soon_as_its_server_is_back() {
    let mut server = OwnServer::start();
    let config = NatsConfig {
        url: server.url(),
        ..config("pull-again")
    };
    let (publisher, coordinator, _strategy) = coordinator(&config).await;
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(config.clone())
        .connect()
        .await
        .unwrap();
    // The worker's first pull is made after this; one the server forgot runs out, and is made
    // again, no sooner than 6 s after it was made (the server's 5 s for it, and one more).
    let first_pull = Instant::now();
    let serving = tokio::spawn(worker.run_until(std::future::pending()));
    // The worker's pull is at the server when it goes.
    until_a_pull_waits(&config, "the worker's first pull").await;
    server.kill();
    server.spawn();
    // The worker's pull is at the restarted server (which forgot the one made before) well
    // before that one would run out: made once the worker was back.
    until_a_pull_waits(&config, "the worker's pull after the restart").await;
    let pulled = first_pull.elapsed();
    assert!(
        pulled < Duration::from_secs(6),
        "pulled again only {pulled:?} after the lost pull was made"
    );
    let ran = coordinator.submit(Task::portable("after", Nap(10)), "nats");
    let ran = tokio::time::timeout(Duration::from_secs(20), ran).await;
    ran.expect("taken by the idle worker").expect("ran");
    serving.abort();
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// Returns (within 20 s) once a pull of the workers waits at the server, which may be starting
/// (each look connects anew), waiting for `what`.
async fn until_a_pull_waits(config: &NatsConfig, what: &str) {
    let name = format!("{}-workers", config.mode);
    let start = Instant::now();
    loop {
        let waiting = async {
            let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.ok()?);
            let stream = js.get_stream(&config.stream).await.ok()?;
            let info = stream.consumer_info(&name).await.ok()?;
            Some(info.num_waiting)
        };
        if waiting.await.is_some_and(|n| n > 0) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The limit is the one the streams were made with, whichever side made them and whatever the
/// other side's configuration says: a task or an output over it fails at once as an encoding
/// error, never retried as if the server were away, never run again and again.
async fn the_size_limit_is_the_streams_whoever_made_them() {
    const SMALL: i32 = 64 * 1024;
    let encoding_error = |ran: Result<task_core::Outcome, tokio::time::error::Elapsed>| {
        let error = ran.expect("ended at once").expect_err("too large");
        let said: String = error.to_string().chars().take(300).collect();
        assert!(error.is_encoding_error(), "{said}");
    };
    // The submitting side makes the streams with a smaller limit; the worker's is the default.
    let submitter = config("limit-submitter");
    let strategy = NatsStrategy::builder()
        .config(submitter.clone())
        .max_message_size(SMALL)
        .start()
        .await
        .unwrap();
    let worker = Worker::start(&submitter, &[]);
    let ran = task_core::run(&strategy, Task::portable("out", Pad(100_000)).into_erased());
    encoding_error(tokio::time::timeout(Duration::from_secs(10), ran).await);
    drop((strategy, worker));
    cleanup(&submitter).await;
    // A worker makes them with the smaller limit; the submitting side's is the default.
    let config = config("limit-worker");
    let small = NatsConfig {
        max_message_size: SMALL,
        ..config.clone()
    };
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(small)
        .connect()
        .await
        .unwrap();
    let serving = tokio::spawn(worker.run_until(std::future::pending()));
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .unwrap();
    let task = Task::portable("in", Fail("x".repeat(100_000)));
    let ran = task_core::run(&strategy, task.into_erased());
    encoding_error(tokio::time::timeout(Duration::from_secs(10), ran).await);
    serving.abort();
    drop(strategy);
    cleanup(&config).await;
}

/// A shutdown whose grace runs out while tasks are still being handed over (no worker; the
/// program ends right after it): what was out is withdrawn, those handed over meanwhile too, so
/// a worker that comes later finds nothing of them.
async fn a_shutdown_past_its_grace_leaves_no_task_for_a_later_worker() {
    // Each round shuts down at another moment of the hand-overs.
    for round in 0..6_u64 {
        let config = config("shutdown-handed-over");
        let program = {
            let config = config.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime.block_on(async {
                    let strategy = NatsStrategy::builder()
                        .config(config.clone())
                        .start()
                        .await
                        .unwrap();
                    let runs: Vec<_> = (0..200_u64)
                        .map(|i| {
                            let task = Task::portable(format!("r{i}"), Echo(i)).into_erased();
                            tokio::spawn(task_core::run(&strategy, task))
                        })
                        .collect();
                    tokio::time::sleep(Duration::from_millis(2 + 2 * round)).await;
                    task_core::TaskExecutionStrategy::shutdown(&strategy, Duration::ZERO).await;
                    for run in runs {
                        let outcome = run.await.unwrap();
                        assert!(outcome.unwrap_err().is_shutdown());
                    }
                });
                // The program ends: whatever it left running stops here.
            })
        };
        tokio::task::spawn_blocking(move || program.join().unwrap())
            .await
            .unwrap();
        let state = stream_state(&config).await;
        cleanup(&config).await;
        assert_eq!(
            state.messages, 0,
            "round {round}: of {} tasks stored, some were left for a worker that comes later",
            state.last_sequence
        );
    }
}

/// A run accepted before a shutdown and first polled after it (its runtime was busy) ends at
/// once as shut down, as one accepted before a drop does: nothing would read its completion.
async fn a_run_first_polled_after_a_shutdown_ends_at_once() {
    let config = config("polled-after-shutdown");
    let program = {
        let config = config.clone();
        std::thread::spawn(move || {
            // One thread: the run is not polled before the shutdown yields.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let strategy = NatsStrategy::builder()
                    .config(config.clone())
                    .start()
                    .await
                    .unwrap();
                let task = Task::portable("late", Echo(1)).into_erased();
                let running = task_core::run(&strategy, task);
                task_core::TaskExecutionStrategy::shutdown(&strategy, Duration::ZERO).await;
                let ended = tokio::time::timeout(Duration::from_secs(10), running).await;
                let error = ended.expect("the run ended").expect_err("no answer");
                assert!(error.is_shutdown(), "{error}");
            });
        })
    };
    tokio::task::spawn_blocking(move || program.join().unwrap())
        .await
        .unwrap();
    cleanup(&config).await;
}

/// Returns (within 20 s) once the advisory stream was made again after `since` and this side
/// reads it for good. A stream and a reader that merely exist may be about to be replaced: a
/// stream made again while its deletion is still under way keeps nothing (then or later), and
/// the strategy, whose probe finds that, deletes it and makes it anew a second later; an
/// advisory sent meanwhile is lost. So the stream must hold the strategy's probe (on the
/// advisories' subject, named after its reader: the strategy keeps that stream), and its reader
/// must have been delivered a marker the test stored there (on the advisories' subject too,
/// naming no task: passed over), the stream the same all along.
async fn until_advisories_read_from_a_stream_made_since(
    config: &NatsConfig,
    since: std::time::SystemTime,
) {
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let since = since.duration_since(std::time::UNIX_EPOCH).unwrap();
    let since = i128::try_from(since.as_nanos()).unwrap();
    // The advisory stream, if made since, and when it was made (which tells it from another).
    let made_since = || async {
        let stream = js.get_stream(config.advisory_stream()).await.ok()?;
        let created = stream.cached_info().created.unix_timestamp_nanos();
        (created >= since).then_some((stream, created))
    };
    let subject = |last: &str| {
        let stream = &config.stream;
        format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{last}")
    };
    // When the stream holding the marker was made, and the marker's sequence there.
    let mut marker: Option<(i128, u64)> = None;
    let start = Instant::now();
    loop {
        // Room for many of the strategy's probe cycles (4 s each): on server 2.9 a stream made
        // again while its deletion settles keeps nothing, often several times in a row, and the
        // strategy makes it again after each failed probe.
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the advisory stream was not made again and read (marker: {marker:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Some((stream, created)) = made_since().await else {
            continue;
        };
        let names = stream.consumer_names().collect::<Vec<_>>().await;
        let Some(Ok(reader)) = names.into_iter().next() else {
            continue;
        };
        let probe = subject(&reader);
        if stream
            .get_last_raw_message_by_subject(&probe)
            .await
            .is_err()
        {
            continue;
        }
        let at = match marker {
            Some((made, at)) if made == created => at,
            _ => {
                let stored = match js.publish(subject("marker"), "{}".into()).await {
                    Ok(ack) => ack.await.ok(),
                    Err(_) => None,
                };
                marker = stored
                    .filter(|ack| ack.stream == config.advisory_stream())
                    .map(|ack| (created, ack.sequence));
                continue;
            }
        };
        let delivered = stream.consumer_info(&reader).await;
        if delivered.is_ok_and(|info| info.delivered.stream_sequence >= at)
            && made_since()
                .await
                .is_some_and(|(_, again)| again == created)
        {
            return;
        }
    }
}

/// The workers' consumer's state once `until` holds of it (within 20 s), waiting for `what`.
async fn until_workers_consumer(
    config: &NatsConfig,
    what: &str,
    until: impl Fn(&async_nats::jetstream::consumer::Info) -> bool,
) -> async_nats::jetstream::consumer::Info {
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let stream = js
        .get_stream(&config.stream)
        .await
        .expect("the task stream");
    let name = format!("{}-workers", config.mode);
    let start = Instant::now();
    loop {
        let info = stream
            .consumer_info(&name)
            .await
            .expect("the workers' consumer");
        if until(&info) {
            return info;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited for {what}: {} pending, {} delivered unacknowledged",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The consumers the advisory stream holds (this side's reader of the advisories is one).
async fn advisory_readers(config: &NatsConfig) -> Vec<String> {
    let client = async_nats::connect(&config.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(config.advisory_stream())
        .await
        .expect("the advisory stream");
    let names = stream.consumer_names().collect::<Vec<_>>().await;
    names.into_iter().flatten().collect()
}

/// Shutting a strategy down leaves nothing of it behind: no task on the runtime, no reader of
/// the advisories at the server; dropping one without a shutdown leaves no task either, and its
/// reader is removed as soon as the drop can tell the server (well before the server's own
/// 30 s limit for a reader nobody pulls from).
async fn a_strategy_shut_down_or_dropped_leaves_no_task_or_reader_behind() {
    let config = config("released");
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .unwrap();
    assert_eq!(advisory_readers(&config).await.len(), 1, "reading");
    task_core::TaskExecutionStrategy::shutdown(&strategy, Duration::ZERO).await;
    let left = advisory_readers(&config).await;
    assert!(left.is_empty(), "readers left by the shutdown: {left:?}");
    drop(strategy);
    let strategy = NatsStrategy::builder()
        .config(config.clone())
        .start()
        .await
        .unwrap();
    drop(strategy);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (tasks, readers) = (metrics.num_alive_tasks(), advisory_readers(&config).await);
        if tasks <= before && readers.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} tasks and the readers {readers:?} outlive the dropped strategy",
            tasks.saturating_sub(before)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cleanup(&config).await;
}

/// Every stream the strategy uses is deleted while it runs (by an operator, or lost with the
/// server's store), with a task waiting in the task stream: the strategy makes each again
/// itself (no worker is there to make the task stream), publishes the lost task again, hands
/// later tasks over, and reads the advisories from a new advisory stream: a task that kills its
/// workers still ends as poison. (Under load the server 2.9 let the advisory stream made again
/// at once keep nothing, or its reader read nothing, in 3 of 4 runs of the whole suite: the
/// strategy probes a stream it made again.)
async fn streams_deleted_while_the_strategy_runs_are_made_again() {
    let config = config("deleted-streams");
    let (publisher, coordinator, shared) = coordinator(&config).await;
    drop(shared);
    let guard = Duration::from_secs(60);
    let stranded = spawn_submit(&coordinator, Task::portable("stranded", Echo(1)), guard);
    until_published(&config).await;
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    // Before the deletions: the strategy may make a stream again before they return.
    let deleted = std::time::SystemTime::now();
    for stream in [
        config.stream.clone(),
        config.completion_stream(),
        config.advisory_stream(),
    ] {
        js.delete_stream(&stream).await.expect("deleted");
    }
    let later = spawn_submit(&coordinator, Task::portable("later", Echo(2)), guard);
    // Both tasks are in the task stream again before any worker comes (a worker would make the
    // stream itself).
    let start = Instant::now();
    loop {
        let held = match js.get_stream(&config.stream).await {
            Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        };
        if held == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the task stream was not made again with both tasks ({held} held)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flags = ["--ack-wait-ms", "300", "--max-deliver", "2"];
    let worker = Worker::start(&config, &flags);
    let within = |call| tokio::time::timeout(Duration::from_secs(20), call);
    let stranded = within(stranded)
        .await
        .expect("answered")
        .expect("the caller");
    assert_eq!(stranded.expect("the lost task ran"), 1);
    let later = within(later).await.expect("answered").expect("the caller");
    assert_eq!(later.expect("the later task ran"), 2);
    // Killed once the server has its acknowledgements (a caller hears before the worker
    // acknowledges): a task it answered and had not acknowledged would be delivered again, next
    // to the poison task.
    until_workers_consumer(&config, "the first worker's acknowledgements", |info| {
        (info.num_pending, info.num_ack_pending) == (0, 0)
    })
    .await;
    drop(worker);
    // The advisory stream is made again, and this side reads it: the advisory of the poison
    // task, sent once, is read.
    until_advisories_read_from_a_stream_made_since(&config, deleted).await;
    // A task that kills its workers ends through the advisory stream made again.
    let respawner = Respawner::start(&config, &["--ack-wait-ms", "300", "--max-deliver", "2"]);
    let poison = spawn_submit(
        &coordinator,
        Task::portable("poison", Fail("exit:".into())),
        Duration::from_secs(30),
    );
    let error = poison.await.expect("the caller").unwrap_err();
    assert!(error.task_error().unwrap().is_poison(), "{error}");
    respawner.stop();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// A stream `max_age` of 10 s or less (the duplicate window is no longer) still lets a task's
/// hand-over try again: here its first try finds the task stream gone (deleted), and the next,
/// once the stream is made again, stores it. A duplicate window shorter than one try, and than
/// `max_age`, leaves no time to try again: the strategy refuses it, saying why.
async fn a_short_max_age_leaves_publish_retries_on() {
    let short_window = NatsConfig {
        duplicate_window: Duration::from_secs(5),
        ..config("short-window")
    };
    let config = NatsConfig {
        max_age: Duration::from_secs(10),
        ..config("short-max-age")
    };
    let (publisher, coordinator, shared) = coordinator(&config).await;
    drop(shared);
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    js.delete_stream(&config.stream).await.expect("deleted");
    let call = spawn_submit(
        &coordinator,
        Task::portable("r", Echo(1)),
        Duration::from_secs(60),
    );
    let start = Instant::now();
    while js.get_stream(&config.stream).await.is_err() || tasks_in_stream(&config).await == 0 {
        assert!(
            !call.is_finished(),
            "the request ended untried: {:?}",
            call.await
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the task is published"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _worker = Worker::start(&config, &[]);
    let within = tokio::time::timeout(Duration::from_secs(20), call).await;
    assert_eq!(
        within.expect("answered").expect("the caller").expect("ran"),
        1
    );
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
    let short = short_window;
    let error = NatsStrategy::builder()
        .config(short.clone())
        .start()
        .await
        .expect_err("no time to try again");
    cleanup(&short).await;
    assert!(error.is_config_error(), "{error}");
    assert!(error.to_string().contains("duplicate_window"), "{error}");
}

/// A task message whose body no worker can decode (another protocol's, or damaged): the worker
/// answers it from the message's headers with a protocol error, and the request (which has no
/// timeout of its own) ends at once with it, instead of waiting forever.
async fn a_task_no_worker_can_decode_is_answered_at_once() {
    let config = config("undecodable");
    let (publisher, coordinator, shared) = coordinator(&config).await;
    drop(shared);
    let call = {
        let coordinator = coordinator.clone();
        tokio::spawn(async move {
            coordinator
                .submit(Task::portable("r", Echo(1)), "nats")
                .await
        })
    };
    until_published(&config).await;
    // The task as the strategy sent it, its body damaged, in place of the original.
    let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
    let stream = js.get_stream(&config.stream).await.unwrap();
    let sent = stream.get_raw_message(1).await.expect("the task");
    stream.delete_message(1).await.expect("taken out");
    let mut headers = sent.headers.clone();
    headers.insert("Nats-Msg-Id", "damaged");
    let damaged = bytes::Bytes::from_static(&[0xff; 7]);
    let stored = js.publish_with_headers(config.task_subject(), headers, damaged);
    stored.await.unwrap().await.unwrap();
    let _worker = Worker::start(&config, &[]);
    let ended = tokio::time::timeout(Duration::from_secs(20), call).await;
    let error = ended
        .expect("answered, though no worker could decode its task")
        .expect("the caller")
        .unwrap_err();
    let task_error = error.task_error().expect("a task error");
    assert!(task_error.is_protocol_error(), "{error}");
    assert!(error.to_string().contains("decode"), "{error}");
    assert_eq!(tasks_in_stream(&config).await, 0, "nothing left");
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
}

/// A worker asked to run as many tasks at once as it likes (`usize::MAX`) serves: tokio's
/// semaphore, which holds its places, panicked on a count that large once the worker had bound
/// its consumer, and requests then waited for their timeout.
async fn a_worker_of_unbounded_concurrency_serves() {
    let config = config("unbounded_concurrency");
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(config.clone())
        .concurrency(usize::MAX)
        .connect()
        .await
        .expect("the worker connects");
    let serving = tokio::spawn(worker.run_until(std::future::pending()));
    let (publisher, coordinator, _) = coordinator(&config).await;
    let call = coordinator.submit(Task::portable("c1", Echo(7)), "nats");
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
    let serving_still = !serving.is_finished();
    serving.abort();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    cleanup(&config).await;
    assert!(
        serving_still,
        "the worker stopped serving; the request: {answer:?}"
    );
    assert_eq!(answer.expect("answered in time").expect("echoed"), 7);
}

/// `Duration::MAX` as the stream's `max_age`, its duplicate window or a worker's `ack_wait` is
/// cut to a century (the server reads spans as signed 64-bit nanoseconds): it
/// reached the server as -1, which refused the stream with a misleading error, or answered the
/// consumer's creation with what the client could not read.
async fn the_longest_spans_are_taken_as_the_most_the_server_reads() {
    let longest = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let (day, minutes) = (Duration::from_secs(24 * 3600), Duration::from_secs(120));
    let cases = [
        (Duration::MAX, minutes, minutes, (longest, minutes)),
        (day, minutes, Duration::MAX, (day, minutes)),
        (
            Duration::ZERO,
            Duration::MAX,
            minutes,
            (Duration::ZERO, longest),
        ),
    ];
    for (i, (max_age, duplicate_window, ack_wait, stored)) in cases.into_iter().enumerate() {
        let config = NatsConfig {
            max_age,
            duplicate_window,
            ..config(&format!("longest_{i}"))
        };
        let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
            .config(config.clone())
            .ack_wait(ack_wait)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("case {i}: the worker connects: {e}"));
        let serving = tokio::spawn(worker.run_until(std::future::pending()));
        let (publisher, coordinator, _) = coordinator(&config).await;
        let call = coordinator.submit(Task::portable("r", Echo(7)), "nats");
        let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
        let js = async_nats::jetstream::new(async_nats::connect(&config.url).await.unwrap());
        let mut stream = js.get_stream(&config.stream).await.unwrap();
        let info = stream.info().await.unwrap().config.clone();
        serving.abort();
        coordinator.shutdown().await;
        publisher.shutdown().await;
        cleanup(&config).await;
        assert_eq!(answer.expect("answered in time").unwrap(), 7, "case {i}");
        assert_eq!((info.max_age, info.duplicate_window), stored, "case {i}");
    }
}

/// The CPU time, in clock ticks, process `pid` has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A worker's `ack_wait` of `Duration::MAX`, cut to the largest span the server reads, made the
/// server spin on a core for as long as any task of the consumer was unacknowledged (a running
/// one): it is cut to a century. On a server of its own, whose CPU time it reads.
async fn the_longest_ack_wait_leaves_the_server_idle() {
    let server = OwnServer::start();
    let server_pid = server.child.as_ref().unwrap().id();
    let config = NatsConfig {
        url: server.url(),
        ..config("longest_ack_wait")
    };
    let worker = exec_nats::NatsWorker::builder(exec_nats::example_nodes::registry())
        .config(config.clone())
        .ack_wait(Duration::MAX)
        .connect()
        .await
        .expect("the worker connects");
    let serving = tokio::spawn(worker.run_until(std::future::pending()));
    let (publisher, coordinator, _) = coordinator(&config).await;
    let submitting = coordinator.clone();
    let call = tokio::spawn(async move {
        let nap = Task::portable("nap", Nap(3000));
        submitting.submit(nap, "nats").await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(server_pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(server_pid) - before;
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
    serving.abort();
    coordinator.shutdown().await;
    publisher.shutdown().await;
    drop(server);
    assert!(
        answer.is_ok_and(|a| a.unwrap().is_ok()),
        "the nap was answered"
    );
    // A spinning server spends a whole core: 200 ticks in 2 s.
    assert!(
        spent < 50,
        "the server spun while the task ran: {spent} ticks in 2 s"
    );
}
