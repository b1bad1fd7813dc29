//! The dashboard as its users see it: in a real browser (headless Chromium), through its event
//! stream and its `/metrics`, with a workload running.
//!
//! Without Chromium (`chromium` or `$CHROMIUM`) the browser test is reported as ignored, with the
//! reason, never as passed; with `REQUIRE_CHROMIUM=1` (CI sets it) it fails instead. The trials
//! run under `libtest-mimic`, which decides at run time whether a test runs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use coordinator::ExecutionMode;
use dashboard::Dashboard;
use futures::future::BoxFuture;
use tokio::io::AsyncBufReadExt;

mod cdp;
mod connections;
mod payloads;
mod support;
use cdp::Page;
use support::*;

type Test = fn() -> BoxFuture<'static, ()>;

/// The Chromium binary, if there is one.
fn chromium() -> Option<PathBuf> {
    let named = std::env::var_os("CHROMIUM").map(PathBuf::from);
    let candidates = named.into_iter().chain(
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from),
    );
    candidates.into_iter().find(|path| {
        Command::new(path)
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let browser = chromium();
    let required = std::env::var("REQUIRE_CHROMIUM").as_deref() == Ok("1");
    if browser.is_none() && !required {
        eprintln!(
            "no Chromium found (chromium, or $CHROMIUM): the browser test is ignored (set REQUIRE_CHROMIUM=1 to make this a failure)"
        );
    }
    let run = |test: Test| {
        move || -> Result<(), libtest_mimic::Failed> {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(test());
            Ok(())
        }
    };
    let page: Test = || Box::pin(the_page_shows_counts_that_move_and_end_at_the_coordinators());
    let has_browser = browser.is_some();
    let mut trials = vec![
        libtest_mimic::Trial::test(
            "the_page_shows_counts_that_move_and_end_at_the_coordinators",
            move || {
                if !has_browser {
                    return Err("REQUIRE_CHROMIUM=1 but no Chromium was found".into());
                }
                run(page)()
            },
        )
        .with_ignored_flag(!has_browser && !required),
    ];
    let others: &[(&str, Test)] = &[
        (
            "the_event_stream_delivers_every_state_change_in_order",
            || Box::pin(the_event_stream_delivers_every_state_change_in_order()),
        ),
        ("metrics_parse_and_match_the_overview", || {
            Box::pin(metrics_parse_and_match_the_overview())
        }),
        ("a_token_is_required_once_set", || {
            Box::pin(a_token_is_required_once_set())
        }),
        ("a_token_beyond_ascii_is_taken_in_the_header_too", || {
            Box::pin(a_token_beyond_ascii_is_taken_in_the_header_too())
        }),
        (
            "clients_that_never_read_are_dropped_and_stall_nothing",
            || Box::pin(connections::clients_that_never_read_are_dropped_and_stall_nothing()),
        ),
        ("the_page_feed_is_a_sample_of_the_outcomes", || {
            Box::pin(the_page_feed_is_a_sample_of_the_outcomes())
        }),
        (
            "openings_are_announced_while_an_event_stream_is_open",
            || Box::pin(openings_are_announced_while_an_event_stream_is_open()),
        ),
        (
            "the_oldest_requests_in_flight_are_listed_oldest_first",
            || Box::pin(the_oldest_requests_in_flight_are_listed_oldest_first()),
        ),
        (
            "requests_in_flight_are_listed_wherever_the_table_keeps_them",
            || Box::pin(requests_in_flight_are_listed_wherever_the_table_keeps_them()),
        ),
        (
            "a_half_sent_request_holds_up_neither_shutdown_nor_drop",
            || Box::pin(connections::a_half_sent_request_holds_up_neither_shutdown_nor_drop()),
        ),
        ("open_streams_end_whole_when_the_dashboard_stops", || {
            Box::pin(connections::open_streams_end_whole_when_the_dashboard_stops())
        }),
        (
            "an_idle_connection_is_closed_and_an_open_feed_is_not",
            || Box::pin(connections::an_idle_connection_is_closed_and_an_open_feed_is_not()),
        ),
        (
            "a_result_whose_debug_fails_leaves_the_dashboard_reading",
            || Box::pin(payloads::a_result_whose_debug_fails_leaves_the_dashboard_reading()),
        ),
        ("a_job_is_found_by_its_request_id", || {
            Box::pin(a_job_is_found_by_its_request_id())
        }),
        (
            "a_stream_follows_a_request_whose_id_is_over_the_cut",
            || Box::pin(payloads::a_stream_follows_a_request_whose_id_is_over_the_cut()),
        ),
        ("timeouts_too_long_to_add_to_now_never_run_out", || {
            Box::pin(connections::timeouts_too_long_to_add_to_now_never_run_out())
        }),
    ];
    trials.extend(
        others
            .iter()
            .map(|&(name, test)| libtest_mimic::Trial::test(name, run(test))),
    );
    libtest_mimic::run(&args, trials).exit();
}

async fn the_page_shows_counts_that_move_and_end_at_the_coordinators() {
    let (publisher, coordinator, dashboard) = started().await;
    let url = dashboard.url();
    // Work until the page has been seen to move, however long the browser takes to start: 20
    // at a time, 40 ms each.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (coordinator, stop) = (coordinator.clone(), stop.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let more = move |_: &u64| {
                let go = !stop.load(std::sync::atomic::Ordering::SeqCst);
                async move { go }
            };
            futures::stream::iter(0..)
                .take_while(more)
                .map(|i| coordinator.submit(work(i, 40), ExecutionMode::ASYNC))
                .buffer_unordered(20)
                .for_each(|_| async {})
                .await;
        })
    };
    let chromium = chromium().expect("Chromium");
    let mut page = Page::open(&chromium, &url).await;
    // The page may not have a body yet.
    page.until("document.body?.dataset.refreshed").await;
    let first = shown(&mut page, "closed").await;
    next_overview(&mut page).await;
    let second = shown(&mut page, "closed").await;
    assert!(second > first, "the counts move: {first} then {second}");
    // The live feed (server-sent events) lists outcomes as they come.
    page.until("document.getElementById('feed').textContent.includes(' work success')")
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    within("the workload", load).await.unwrap();
    // The workload is over: the page comes to show the coordinator's final counts, all from one
    // overview.
    let counts = coordinator.counts();
    let closed = format!(
        "document.getElementById('closed').textContent === '{}'",
        counts.closed
    );
    page.until(&closed).await;
    assert_eq!(shown(&mut page, "failed").await, counts.failed);
    assert_eq!(shown(&mut page, "succeeded").await, counts.succeeded);
    let failures = page
        .eval("document.getElementById('failures').textContent")
        .await;
    assert!(
        failures.as_str().unwrap().contains("failed on purpose"),
        "the latest failures are listed: {failures}"
    );
    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    page.screenshot(&screenshot).await;
    assert!(
        std::fs::read(&screenshot).is_ok_and(|png| png.starts_with(b"\x89PNG")),
        "a screenshot at {}",
        screenshot.display()
    );
    eprintln!("screenshot: {}", screenshot.display());
    page.close().await;
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn the_event_stream_delivers_every_state_change_in_order() {
    const BATCHES: u64 = 20;
    const BATCH: u64 = 100;
    let (publisher, coordinator, dashboard) = started().await;
    let mut all = open_events(&dashboard, "").await;
    let mut one = open_events(&dashboard, "?request=r5").await;
    // Read as a page does, while the requests run; each batch waits for the reader, so the
    // dashboard is never a whole buffer behind (past that it would say what it missed).
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = std::sync::Arc::clone(&read);
    let reader = tokio::spawn(async move {
        let (mut ended, mut events) = (HashMap::new(), HashMap::<String, u32>::new());
        let mut opened = std::collections::HashSet::new();
        while ended.len() < (BATCHES * BATCH) as usize {
            let (kind, data) = next_event(&mut all).await;
            assert_ne!(kind, "missed", "{data}");
            let json: serde_json::Value = serde_json::from_str(&data).unwrap();
            let id = json["request_id"].as_str().unwrap().to_owned();
            match kind.as_str() {
                "opened" => {
                    assert!(!events.contains_key(&id), "{id}: opened after its events");
                    assert!(!ended.contains_key(&id), "{id}: opened after its outcome");
                    assert!(opened.insert(id), "one opening per request");
                }
                "event" => {
                    assert!(opened.contains(&id), "{id}: an event before its opening");
                    assert!(!ended.contains_key(&id), "{id}: an event after its outcome");
                    *events.entry(id).or_default() += 1;
                }
                "success" | "failure" => {
                    assert!(opened.contains(&id), "{id}: an outcome before its opening");
                    assert_eq!(events.get(&id), Some(&2), "{id}: both events first");
                    assert!(ended.insert(id, kind).is_none(), "one outcome per request");
                    progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                other => panic!("unexpected {other}: {data}"),
            }
            assert!(json.get("event").is_none(), "no payloads unless asked for");
        }
        ended
    });
    for batch in 0..BATCHES {
        run_all(&coordinator, batch * BATCH..(batch + 1) * BATCH, 0).await;
        within("the reader", async {
            while read.load(std::sync::atomic::Ordering::SeqCst) < (batch + 1) * BATCH {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    let ended = within("the stream", reader).await.unwrap();
    let counts = coordinator.counts();
    let failures = ended.values().filter(|k| *k == "failure").count() as u64;
    assert_eq!(
        (ended.len() as u64, failures),
        (counts.closed, counts.failed)
    );
    // The filtered stream: r5's opening, its two events, then its outcome, nothing of another
    // request.
    let mut seen = Vec::new();
    for _ in 0..4 {
        let (kind, data) = within("r5's stream", next_event(&mut one)).await;
        assert!(data.contains("\"request_id\":\"r5\""), "{data}");
        seen.push(kind);
    }
    assert_eq!(seen, ["opened", "event", "event", "success"]);
    // A page still open does not hold the shutdown up: its stream ends.
    within("the shutdown with a page open", dashboard.shutdown()).await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn metrics_parse_and_match_the_overview() {
    let (publisher, coordinator, dashboard) = started().await;
    // A subscriber that never reads: its lag is served.
    let unread = publisher.subscribe_stream().unwrap();
    for i in 0..50 {
        let _ = coordinator.submit(work(i, 0), ExecutionMode::ASYNC).await;
    }
    let (status, text) = get(&dashboard, "/metrics", "").await;
    assert_eq!(status, 200);
    let mut values = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        values.insert(name.to_owned(), value);
    }
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(["counter", "gauge"].contains(&kind), "{line}");
    }
    let detail = coordinator.overview();
    let async_counts = &detail.requests["async"];
    let metric = |name: &str| values.get(name).copied().unwrap_or(-1.0) as u64;
    assert_eq!(
        metric(r#"coordinator_requests_total{mode="async",result="success"}"#),
        async_counts.succeeded
    );
    assert_eq!(
        metric(r#"coordinator_requests_total{mode="async",result="failure"}"#),
        async_counts.failed
    );
    assert_eq!(
        metric(r#"coordinator_jobs_closed_total{result="failure"}"#),
        detail.counts.failed
    );
    assert_eq!(metric("coordinator_jobs_open"), 0);
    let waiting = r#"coordinator_requests_waiting{mode="async"}"#;
    let waiting = values.get(waiting).copied();
    assert_eq!(waiting, Some(async_counts.waiting as f64), "{text}");
    let lag = metric(&format!(
        "pubsub_subscriber_lag{{subscriber=\"{}\"}}",
        unread.id()
    ));
    let (_, expected) = publisher
        .lags()
        .into_iter()
        .find(|(id, _)| *id == unread.id())
        .unwrap();
    // 50 outcomes and their 100 events, all published before the scrape.
    assert_eq!((lag, expected), (150, 150));
    // The history takes the bus's messages in batches, and the overview is made at most once
    // a second: it shows the failures shortly after they happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    let json = loop {
        let (status, json) = get(&dashboard, "/api/overview", "").await;
        assert_eq!(status, 200);
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        if json["failures"].as_array().unwrap().len() == 7 || Instant::now() > deadline {
            break json;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(json["counts"]["closed"], 50);
    assert_eq!(json["failures"].as_array().unwrap().len(), 7);
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn a_token_is_required_once_set() {
    let (publisher, coordinator, dashboard) = started_with(|b| b.token("s3cret")).await;
    for path in ["/", "/api/overview", "/metrics"] {
        assert_eq!(get(&dashboard, path, "").await.0, 401, "{path}");
        let wrong = "Authorization: Bearer nope\r\n";
        assert_eq!(get(&dashboard, path, wrong).await.0, 401, "{path}");
        let right = "Authorization: Bearer s3cret\r\n";
        assert_eq!(get(&dashboard, path, right).await.0, 200, "{path}");
    }
    assert_eq!(get(&dashboard, "/metrics?token=s3cret", "").await.0, 200);
    assert_eq!(get(&dashboard, "/metrics?token=nope", "").await.0, 401);
    let lower = "Authorization: bearer s3cret\r\n";
    assert_eq!(get(&dashboard, "/metrics", lower).await.0, 200, "any case");
    let (_, head) = get_with_head(&dashboard, "/", "").await;
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{head}"
    );
    // The streams take the token in the query, percent-encoded as the page sends it.
    let (publisher, coordinator, dashboard) = {
        dashboard.shutdown().await;
        coordinator.shutdown().await;
        publisher.shutdown().await;
        started_with(|b| b.token("a+b/c=&d")).await
    };
    for path in ["/api/feed", "/api/events"] {
        let encoded = format!("{path}?token=a%2Bb%2Fc%3D%26d");
        assert_eq!(stream_status(&dashboard, &encoded).await, 200, "{path}");
        let raw = format!("{path}?token=a+b/c=&d");
        assert_eq!(stream_status(&dashboard, &raw).await, 401, "{path}");
        assert_eq!(stream_status(&dashboard, path).await, 401, "{path}");
    }
    // An empty token would let a bare `?token=` through: refused.
    let refused = Dashboard::builder(&coordinator, &publisher)
        .bind(([127, 0, 0, 1], 0).into())
        .token("")
        .start()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput);
    // So would a zero timeout close every connection: refused, whichever.
    let zero = Duration::ZERO;
    let zeroes = [
        Dashboard::builder(&coordinator, &publisher).client_stall_timeout(zero),
        Dashboard::builder(&coordinator, &publisher).request_head_timeout(zero),
    ];
    for builder in zeroes {
        let refused = builder.bind(([127, 0, 0, 1], 0).into()).start().await;
        let refused = refused.expect_err("a zero timeout is refused");
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::InvalidInput,
            "{refused}"
        );
        assert!(refused.to_string().contains("is zero"), "{refused}");
    }
    // An address in use (another dashboard's) is named in the error.
    let taken = dashboard.local_addr();
    let refused = Dashboard::builder(&coordinator, &publisher)
        .bind(taken)
        .start()
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
    let said = refused.to_string();
    assert!(
        said.contains(&format!("the dashboard cannot listen on {taken}")),
        "{said}"
    );
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A token is any string: one beyond ASCII is taken as its UTF-8 bytes in the header, as it is
/// percent-encoded in the query.
async fn a_token_beyond_ascii_is_taken_in_the_header_too() {
    let (publisher, coordinator, dashboard) = started_with(|b| b.token("pässwört")).await;
    let right = "Authorization: Bearer pässwört\r\n";
    assert_eq!(get(&dashboard, "/metrics", right).await.0, 200);
    let wrong = "Authorization: Bearer passwort\r\n";
    assert_eq!(get(&dashboard, "/metrics", wrong).await.0, 401);
    let query = "/metrics?token=p%C3%A4ssw%C3%B6rt";
    assert_eq!(get(&dashboard, query, "").await.0, 200);
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn the_page_feed_is_a_sample_of_the_outcomes() {
    const N: u64 = 3_000;
    let (publisher, coordinator, dashboard) = started().await;
    let mut feed = open_stream(&dashboard, "/api/feed").await;
    // A second page counts the feed's writes: each is a chunk, its size on a line of its own.
    let mut second = open_stream(&dashboard, "/api/feed").await;
    let start = Instant::now();
    let until = tokio::time::Instant::now() + Duration::from_millis(3000);
    let writes = tokio::spawn(async move {
        let (mut writes, mut line) = (0, String::new());
        while let Ok(Ok(1..)) = tokio::time::timeout_at(until, second.read_line(&mut line)).await {
            let size = line.trim_end();
            if !size.is_empty() && size.bytes().all(|b| b.is_ascii_hexdigit()) {
                writes += 1;
            }
            line.clear();
        }
        writes
    });
    run_all(&coordinator, 0..N, 1).await;
    // The last outcome sampled reaches the feed within a pause of the dashboard's reader, and an
    // overview comes each second.
    let (mut kinds, mut overviews) = (Vec::new(), 0);
    while let Ok((kind, data)) = tokio::time::timeout_at(until, next_event(&mut feed)).await {
        match kind.as_str() {
            // The page's overview, once a second.
            "overview" => {
                let overview: serde_json::Value = serde_json::from_str(&data).unwrap();
                assert!(overview["counts"]["closed"].is_u64(), "{data}");
                overviews += 1;
            }
            // The dashboard fell a whole bus buffer behind.
            "missed" => {}
            _ => {
                assert!(data.contains("\"request_id\":\"r"), "{data}");
                kinds.push(kind);
            }
        }
    }
    assert!(overviews > 0, "the feed brought no overview");
    let elapsed = start.elapsed();
    assert!(!kinds.is_empty(), "the feed showed no outcome");
    assert!(
        kinds.iter().all(|k| k == "success" || k == "failure"),
        "outcomes only: {kinds:?}"
    );
    // At most one outcome each 50 ms, however many ended.
    let most = elapsed.as_millis() as usize / 50 + 1;
    assert!(
        kinds.len() <= most,
        "{} outcomes in {elapsed:?} (at most {most})",
        kinds.len()
    );
    // At most four writes a second, whatever they carry.
    let writes = writes.await.unwrap();
    let most = elapsed.as_millis() as usize / 250 + 1;
    assert!(
        writes > 0 && writes <= most,
        "{writes} writes in {elapsed:?}"
    );
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn the_oldest_requests_in_flight_are_listed_oldest_first() {
    let (publisher, coordinator, dashboard) = started().await;
    // Done ones first (the listing passes them), then 40 that wait, opened in order.
    run_all(&coordinator, 0..100, 0).await;
    let waiting: Vec<_> = (100..140)
        .map(|i| {
            (coordinator.try_spawn(work(i, 60_000), ExecutionMode::ASYNC, Default::default()))
                .unwrap()
        })
        .collect();
    let (status, body) = get(&dashboard, "/api/overview", "").await;
    assert_eq!(status, 200);
    let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
    let listed: Vec<&str> = (overview["in_flight"].as_array().unwrap().iter())
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    let oldest: Vec<String> = (100..120).map(|i| format!("r{i}")).collect();
    assert_eq!(listed, oldest);
    waiting.iter().for_each(|handle| handle.cancel());
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// A bounded table moves records as it drops old ones, and a reused request id takes its closed
/// job's place: the requests in flight are listed all the same.
async fn requests_in_flight_are_listed_wherever_the_table_keeps_them() {
    let publisher = coordinator::RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let builder = coordinator::Coordinator::builder().with_async();
    let coordinator = builder
        .retention(coordinator::Retention::KeepLast(10))
        .build();
    coordinator.start(&publisher).unwrap();
    let dashboard = Dashboard::builder(&coordinator, &publisher);
    let dashboard = dashboard
        .bind(([127, 0, 0, 1], 0).into())
        .start()
        .await
        .unwrap();
    let spawn = |i| {
        let task = work(i, 60_000);
        coordinator.try_spawn(task, ExecutionMode::ASYNC, Default::default())
    };
    let in_flight = || async {
        // A fresh overview: one is made at most once a second.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let (_, body) = get(&dashboard, "/api/overview", "").await;
        let overview: serde_json::Value = serde_json::from_str(&body).unwrap();
        let listed = overview["in_flight"].as_array().unwrap().iter();
        let mut ids: Vec<String> = listed.map(|r| r["request_id"].to_string()).collect();
        ids.sort();
        ids
    };
    run_all(&coordinator, 0..30, 0).await;
    assert!(in_flight().await.is_empty());
    // Open while closed jobs are dropped around them, then one under a closed job's id.
    let mut waiting = vec![spawn(100).unwrap(), spawn(101).unwrap()];
    run_all(&coordinator, 30..60, 0).await;
    waiting.push(spawn(55).unwrap());
    assert_eq!(in_flight().await, ["\"r100\"", "\"r101\"", "\"r55\""]);
    waiting.iter().for_each(|handle| handle.cancel());
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn openings_are_announced_while_an_event_stream_is_open() {
    let (publisher, coordinator, dashboard) = started().await;
    // The server learns a client left when a write to it fails: outcomes make writes.
    let until_off = |what| {
        within(what, async {
            let mut i = 0;
            while coordinator.announces_openings() {
                let _ = coordinator.submit(work(i, 0), ExecutionMode::ASYNC).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    assert!(!coordinator.announces_openings(), "off with no stream open");
    let first = open_events(&dashboard, "").await;
    let second = open_events(&dashboard, "?request=r1").await;
    assert!(
        coordinator.announces_openings(),
        "on while a stream is open"
    );
    drop(first);
    drop(second);
    until_off("openings turned off after the last stream").await;
    // The user's own setting stands beside the streams, whatever it is when they open or close.
    let stream = open_events(&dashboard, "").await;
    coordinator.announce_openings(true);
    drop(stream);
    for i in 1000..1020 {
        let _ = coordinator.submit(work(i, 0), ExecutionMode::ASYNC).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        coordinator.announces_openings(),
        "the user's choice is kept"
    );
    let stream = open_events(&dashboard, "").await;
    coordinator.announce_openings(false);
    assert!(
        coordinator.announces_openings(),
        "still followed by the open stream"
    );
    drop(stream);
    until_off("openings turned off after the user and the stream").await;
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn a_job_is_found_by_its_request_id() {
    let (publisher, coordinator, dashboard) = started().await;
    // r6 fails on purpose.
    run_all(&coordinator, 0..7, 0).await;
    // An id with a slash, and an error longer than the dashboard keeps.
    let long = "e".repeat(5_000);
    let failing = coordinator::Task::from_fn("tool/42", "long", move || async move {
        Err::<u64, coordinator::BoxError>(long.into())
    });
    assert!(
        coordinator
            .submit(failing, ExecutionMode::ASYNC)
            .await
            .is_err()
    );
    let job = |path: &'static str| {
        let dashboard = &dashboard;
        async move {
            let (status, body) = get(dashboard, path, "").await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            (status, json, body.len())
        }
    };
    let (status, r3, _) = job("/api/jobs/r3").await;
    assert_eq!(status, 200);
    assert_eq!(
        (&r3["request_id"], &r3["status"], &r3["result"]),
        (&"r3".into(), &"closed".into(), &"success".into())
    );
    let (_, r6, _) = job("/api/jobs/r6").await;
    assert_eq!(r6["result"], "failure");
    assert!(
        r6["error"].to_string().contains("failed on purpose"),
        "{r6}"
    );
    let (status, tool, size) = job("/api/jobs/tool/42").await;
    assert_eq!((status, &tool["request_id"]), (200, &"tool/42".into()));
    assert!(size < 3_000, "the error is cut: {size} bytes");
    let (status, none, _) = job("/api/jobs/nope").await;
    assert_eq!((status, &none["request_id"]), (404, &"nope".into()));
    // No id at all: the same shape, not an empty body.
    let (status, none, _) = job("/api/jobs/").await;
    assert_eq!((status, &none["request_id"]), (404, &"".into()));
    assert!(none["error"].to_string().contains("/api/jobs/{request id}"));
    // What cannot be read is a JSON 400, as every other error: an id that is not text once
    // decoded, an empty filter.
    let (status, bad, _) = job("/api/jobs/%FF").await;
    assert_eq!(status, 400);
    assert!(bad["error"].to_string().contains("request id"), "{bad}");
    let (status, bad, _) = job("/api/events?request=").await;
    assert_eq!(status, 400);
    assert!(
        bad["error"].to_string().contains("empty request id"),
        "{bad}"
    );
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
