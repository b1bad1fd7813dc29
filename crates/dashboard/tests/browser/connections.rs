//! The dashboard's connections: clients that never read, read a trickle, send half a request or
//! none hold up neither the other clients nor the dashboard's stopping; a feed is never cut off
//! for sending no request.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

pub(crate) async fn clients_that_never_read_are_dropped_and_stall_nothing() {
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
    // And one that reads a trickle, 64 bytes each 50 ms, far less than the stream sends, until
    // told to read what is left at full speed.
    let mut trickle = open_events_small(&dashboard).await;
    let drain = std::sync::Arc::new(tokio::sync::Notify::new());
    let trickling = tokio::spawn({
        let drain = std::sync::Arc::clone(&drain);
        async move {
            let mut buffer = [0u8; 64];
            let mut draining = std::pin::pin!(drain.notified());
            while matches!(trickle.read(&mut buffer).await, Ok(1..)) {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = &mut draining => break,
                }
            }
            // What the kernels still hold, then the end of the stream.
            let mut rest = Vec::new();
            let _ = trickle.read_to_end(&mut rest).await;
        }
    });
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
    // Their connections took no data (or a trickle) for `stall`: the server let go of every
    // one, and with the last stream, of the openings it followed.
    within("the stuck clients' streams dropped", async {
        while coordinator.announces_openings() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    drain.notify_one();
    within("the trickling client's stream ending", trickling)
        .await
        .unwrap();
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

/// Reads `client` to its end, which the server's closing brings with nothing more written.
async fn closed_unanswered(client: &mut (impl tokio::io::AsyncRead + Unpin), how: &str) {
    let mut answer = Vec::new();
    let read = within("the connection closing", client.read_to_end(&mut answer)).await;
    assert!(
        read.is_err() || answer.is_empty(),
        "{how}: answered after stopping: {answer:?}"
    );
}

pub(crate) async fn a_half_sent_request_holds_up_neither_shutdown_nor_drop() {
    let half = "GET /api/overview HTTP/1.1\r\nHost: te";
    for how in ["shutdown", "drop"] {
        let (publisher, coordinator, dashboard) = started().await;
        let mut client = TcpStream::connect(dashboard.local_addr()).await.unwrap();
        client.write_all(half.as_bytes()).await.unwrap();
        // Let the server start reading it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        match how {
            "shutdown" => within("the shutdown", dashboard.shutdown()).await,
            _ => drop(dashboard),
        }
        // The server let go of the connection: the client's read ends, with no answer.
        closed_unanswered(&mut client, how).await;
        coordinator.shutdown().await;
        publisher.shutdown().await;
    }
}

/// The dashboard's stopping ends the event streams it serves: each client reads the end of its
/// stream (chunked: the last, empty chunk), not a connection cut halfway through the body, which
/// an event-stream client takes for a network error and reconnects after.
pub(crate) async fn open_streams_end_whole_when_the_dashboard_stops() {
    for how in ["shutdown", "drop"] {
        let (publisher, coordinator, dashboard) = started().await;
        let streams = [
            open_stream(&dashboard, "/api/events").await,
            open_stream(&dashboard, "/api/feed").await,
        ];
        // A connection kept alive after its answer, idle: closed at once all the same.
        let mut idle = TcpStream::connect(dashboard.local_addr()).await.unwrap();
        let request = "GET /api/overview HTTP/1.1\r\nHost: test\r\n\r\n";
        idle.write_all(request.as_bytes()).await.unwrap();
        let mut idle = tokio::io::BufReader::new(idle);
        let (mut line, mut length) = (String::new(), None);
        while line != "\r\n" {
            line.clear();
            idle.read_line(&mut line).await.unwrap();
            let header = line.to_ascii_lowercase();
            if let Some(n) = header.strip_prefix("content-length:") {
                length = n.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.expect("an answer of known length")];
        idle.read_exact(&mut body).await.unwrap();
        match how {
            "shutdown" => within("the shutdown", dashboard.shutdown()).await,
            _ => drop(dashboard),
        }
        for (mut stream, path) in streams.into_iter().zip(["/api/events", "/api/feed"]) {
            let mut rest = Vec::new();
            let read = within("the stream ending", stream.read_to_end(&mut rest)).await;
            let rest = String::from_utf8_lossy(&rest);
            assert!(
                read.is_ok(),
                "{how}: {path} was cut off: {read:?} after {rest:?}"
            );
            assert!(
                rest.ends_with("0\r\n\r\n"),
                "{how}: {path} ended with {rest:?}"
            );
        }
        closed_unanswered(&mut idle, how).await;
        coordinator.shutdown().await;
        publisher.shutdown().await;
    }
}

pub(crate) async fn an_idle_connection_is_closed_and_an_open_feed_is_not() {
    let head = Duration::from_millis(300);
    let (publisher, coordinator, dashboard) = started_with(|b| b.request_head_timeout(head)).await;
    let mut feed = open_stream(&dashboard, "/api/feed").await;
    let opened = Instant::now();
    // A connection that sends nothing is closed once it has had its time for a request.
    let mut silent = TcpStream::connect(dashboard.local_addr()).await.unwrap();
    let mut answer = Vec::new();
    let read = within(
        "the silent connection closing",
        silent.read_to_end(&mut answer),
    )
    .await;
    assert!(
        read.is_err() || answer.is_empty(),
        "answered a silent client"
    );
    // The feed, answered all along, brings the overview once a second: long past the timeout.
    let mut overviews = 0;
    while overviews < 3 {
        let (kind, _) = within("the feed's next event", next_event(&mut feed)).await;
        overviews += usize::from(kind == "overview");
    }
    assert!(opened.elapsed() > head * 5, "{:?}", opened.elapsed());
    within("the dashboard's shutdown", dashboard.shutdown()).await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}

/// `Duration::MAX` as the request head timeout and the stall time: no timer runs out, and
/// every request is answered.
pub(crate) async fn timeouts_too_long_to_add_to_now_never_run_out() {
    let (publisher, coordinator, dashboard) = started_with(|builder| {
        builder
            .request_head_timeout(Duration::MAX)
            .client_stall_timeout(Duration::MAX)
    })
    .await;
    for path in ["/api/overview", "/metrics"] {
        let (status, _) = within(path, get(&dashboard, path, "")).await;
        assert_eq!(status, 200, "{path}");
    }
    within("the dashboard's stopping", dashboard.shutdown()).await;
    coordinator.shutdown().await;
    publisher.shutdown().await;
}
