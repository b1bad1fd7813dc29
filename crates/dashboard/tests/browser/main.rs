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

use coordinator::{
    BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, SubmitOptions, Task,
    broadcast,
};
use dashboard::Dashboard;
use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

mod cdp;
use cdp::Page;

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
        (
            "clients_that_never_read_are_dropped_and_stall_nothing",
            || Box::pin(clients_that_never_read_are_dropped_and_stall_nothing()),
        ),
        ("the_page_feed_is_a_sample_of_the_outcomes", || {
            Box::pin(the_page_feed_is_a_sample_of_the_outcomes())
        }),
        (
            "openings_are_announced_while_an_event_stream_is_open",
            || Box::pin(openings_are_announced_while_an_event_stream_is_open()),
        ),
    ];
    trials.extend(
        others
            .iter()
            .map(|&(name, test)| libtest_mimic::Trial::test(name, run(test))),
    );
    libtest_mimic::run(&args, trials).exit();
}

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

async fn started() -> (RequestCompletionPublisher, Coordinator, Dashboard) {
    started_with(|builder| builder).await
}

/// A coordinator on the async mode and its dashboard on a free loopback port, set up by
/// `set_up`.
async fn started_with(
    set_up: impl FnOnce(dashboard::DashboardBuilder) -> dashboard::DashboardBuilder,
) -> (RequestCompletionPublisher, Coordinator, Dashboard) {
    let publisher = RequestCompletionPublisher::new();
    publisher.start().unwrap();
    let coordinator = Coordinator::builder().with_async().build();
    coordinator.start(&publisher).unwrap();
    let builder = Dashboard::builder(&coordinator, &publisher).bind(([127, 0, 0, 1], 0).into());
    (
        publisher,
        coordinator,
        set_up(builder).start().await.unwrap(),
    )
}

/// A task that streams two events and sleeps `ms`; every seventh fails.
fn work(i: u64, ms: u64) -> Task<u64> {
    Task::from_fn(format!("r{i}"), "work", move || async move {
        broadcast("started")?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        broadcast("finishing")?;
        if i % 7 == 6 {
            return Err::<u64, BoxError>(format!("request {i} failed on purpose").into());
        }
        Ok(i)
    })
}

/// Runs the requests `ids` (of `work` sleeping `ms`) at once, and waits for every one to end.
async fn run_all(coordinator: &Coordinator, ids: std::ops::Range<u64>, ms: u64) {
    let handles: Vec<_> = ids
        .map(|i| {
            coordinator
                .try_spawn(work(i, ms), ExecutionMode::ASYNC, SubmitOptions::new())
                .unwrap()
        })
        .collect();
    for handle in handles {
        let _ = handle.await;
    }
}

/// `GET path` on `dashboard`, with extra headers; the status and the body.
async fn get(dashboard: &Dashboard, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(dashboard.local_addr()).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Opens the event stream; returns the reader past the response's head.
async fn open_events(dashboard: &Dashboard, query: &str) -> BufReader<TcpStream> {
    open_stream(dashboard, &format!("/api/events{query}")).await
}

/// Opens the event stream at `path`; returns the reader past the response's head.
async fn open_stream(dashboard: &Dashboard, path: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(dashboard.local_addr()).await.unwrap();
    read_head(stream, path).await
}

/// Opens the event stream, on a connection whose receive buffer the kernel does not grow (a
/// client that stops reading soon stops the server's writes too).
async fn open_events_small(dashboard: &Dashboard) -> BufReader<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(dashboard.local_addr()).await.unwrap();
    read_head(stream, "/api/events").await
}

/// Asks for `path` on `stream`; returns the reader past the response's head.
async fn read_head(mut stream: TcpStream, path: &str) -> BufReader<TcpStream> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            return reader;
        }
    }
}

/// The next `(event, data)` of an event stream (chunked: size lines are skipped).
async fn next_event(reader: &mut BufReader<TcpStream>) -> (String, String) {
    let (mut kind, mut data, mut line) = (String::new(), String::new(), String::new());
    loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).await.unwrap() > 0,
            "the connection closed"
        );
        assert!(line != "0\r\n", "the server ended the stream");
        let line = line.trim_end();
        if let Some(k) = line.strip_prefix("event: ") {
            kind = k.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data = d.to_owned();
        } else if line.is_empty() && !kind.is_empty() {
            return (kind, data);
        }
    }
}

/// The bus messages the dashboard missed, as its `/metrics` says.
async fn dashboard_missed(dashboard: &Dashboard) -> u64 {
    let (_, text) = get(dashboard, "/metrics", "").await;
    let line = text
        .lines()
        .find(|l| l.starts_with("dashboard_bus_missed_total "));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the missed count")
}

/// The number the page shows in `#{id}`.
async fn shown(page: &mut Page, id: &str) -> u64 {
    let text = page
        .eval(&format!("document.getElementById('{id}').textContent"))
        .await;
    let text = text.as_str().unwrap_or_default();
    text.parse()
        .unwrap_or_else(|_| panic!("#{id} shows {text:?}, not a number"))
}

/// Waits until the page has shown an overview fetched after this call: two refreshes past the
/// one it had shown (the next one may have been under way already).
async fn next_overview(page: &mut Page) {
    let refreshed = "Number(document.body.dataset.refreshed ?? 0)";
    let now = page.eval(refreshed).await.as_u64().unwrap();
    page.until(&format!("{refreshed} >= {}", now + 2)).await;
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
    // The overview the page polls is at most half a second old.
    tokio::time::sleep(Duration::from_millis(600)).await;
    next_overview(&mut page).await;
    let counts = coordinator.counts();
    assert_eq!(shown(&mut page, "closed").await, counts.closed);
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
    // The history takes the bus's messages in batches, and the overview is made at most twice
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
    dashboard.shutdown().await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn clients_that_never_read_are_dropped_and_stall_nothing() {
    const CLIENTS: usize = 1000;
    const N: u64 = 20_000;
    const BATCH: u64 = 200;
    let stall = Duration::from_millis(500);
    let (publisher, coordinator, dashboard) = started_with(|b| b.client_stall_timeout(stall)).await;
    // A thousand clients that open the event stream and never read it again.
    let mut stuck = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        stuck.push(open_events_small(&dashboard).await);
    }
    assert!(
        coordinator.announces_openings(),
        "followed while the streams are open"
    );
    // In batches the dashboard reads whole before the next (each fits its bus buffer), so
    // every message reaches the stuck clients' streams, far more than their connections hold.
    let start = Instant::now();
    for batch in 0..N / BATCH {
        within("every request beside stuck clients", async {
            run_all(&coordinator, batch * BATCH..(batch + 1) * BATCH, 0).await;
            while publisher.lags().iter().any(|&(_, lag)| lag > 0) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
    eprintln!(
        "{N} requests beside {CLIENTS} stuck clients in {:?}",
        start.elapsed()
    );
    assert_eq!(coordinator.counts().closed, N);
    assert_eq!(
        dashboard_missed(&dashboard).await,
        0,
        "the dashboard read every message"
    );
    // Their connections took no data for `stall`: the server let go of every one, and with
    // the last stream, of the openings it followed.
    within("the stuck clients' streams dropped", async {
        while coordinator.announces_openings() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // A stuck client finds its connection closed after what the kernel held for it.
    let mut first = stuck.swap_remove(0);
    let mut line = String::new();
    within("a stuck client's stream ending", async {
        while matches!(first.read_line(&mut line).await, Ok(1..)) {
            line.clear();
        }
    })
    .await;
    // The server still answers, and stops with the other clients still connected.
    assert_eq!(get(&dashboard, "/api/overview", "").await.0, 200);
    within("the dashboard's shutdown", dashboard.shutdown()).await;
    drop(stuck);
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

async fn the_page_feed_is_a_sample_of_the_outcomes() {
    const N: u64 = 3_000;
    let (publisher, coordinator, dashboard) = started().await;
    let mut feed = open_stream(&dashboard, "/api/feed").await;
    let start = Instant::now();
    run_all(&coordinator, 0..N, 1).await;
    // The last outcome sampled reaches the feed within a pause of the dashboard's reader, and an
    // overview comes each second.
    let (mut kinds, mut overviews) = (Vec::new(), 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(2500);
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
