//! What the trials share: a coordinator with its dashboard, a workload, and a raw HTTP client
//! that reads event streams.

use std::time::Duration;

use coordinator::{
    BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, SubmitOptions, Task,
    broadcast,
};
use dashboard::Dashboard;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::cdp::Page;

/// Fails the test instead of hanging it.
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 60 s"))
}

pub(crate) async fn started() -> (RequestCompletionPublisher, Coordinator, Dashboard) {
    started_with(|builder| builder).await
}

/// A coordinator on the async mode and its dashboard on a free loopback port, set up by
/// `set_up`.
pub(crate) async fn started_with(
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
pub(crate) fn work(i: u64, ms: u64) -> Task<u64> {
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
pub(crate) async fn run_all(coordinator: &Coordinator, ids: std::ops::Range<u64>, ms: u64) {
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
pub(crate) async fn get(dashboard: &Dashboard, path: &str, headers: &str) -> (u16, String) {
    let (response, head) = get_with_head(dashboard, path, headers).await;
    (head[9..12].parse().unwrap(), response)
}

/// The body of the answer to `GET path`, and its head.
pub(crate) async fn get_with_head(
    dashboard: &Dashboard,
    path: &str,
    headers: &str,
) -> (String, String) {
    let mut stream = TcpStream::connect(dashboard.local_addr()).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (body.to_owned(), head.to_owned())
}

/// The status of the answer to `GET path`, read from its first line only (a stream's answer
/// does not end).
pub(crate) async fn stream_status(dashboard: &Dashboard, path: &str) -> u16 {
    let mut stream = TcpStream::connect(dashboard.local_addr()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    within("a status line", BufReader::new(stream).read_line(&mut line))
        .await
        .unwrap();
    line[9..12].parse().unwrap()
}

/// Opens the event stream; returns the reader past the response's head.
pub(crate) async fn open_events(dashboard: &Dashboard, query: &str) -> BufReader<TcpStream> {
    open_stream(dashboard, &format!("/api/events{query}")).await
}

/// Opens the event stream at `path`; returns the reader past the response's head.
pub(crate) async fn open_stream(dashboard: &Dashboard, path: &str) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(dashboard.local_addr()).await.unwrap();
    read_head(stream, path).await
}

/// Opens the event stream, on a connection whose receive buffer the kernel does not grow (a
/// client that stops reading soon stops the server's writes too).
pub(crate) async fn open_events_small(dashboard: &Dashboard) -> BufReader<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(dashboard.local_addr()).await.unwrap();
    read_head(stream, "/api/events").await
}

/// Asks for `path` on `stream`; returns the reader past the response's head.
pub(crate) async fn read_head(mut stream: TcpStream, path: &str) -> BufReader<TcpStream> {
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
pub(crate) async fn next_event(reader: &mut BufReader<TcpStream>) -> (String, String) {
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
pub(crate) async fn dashboard_missed(dashboard: &Dashboard) -> u64 {
    let (_, text) = get(dashboard, "/metrics", "").await;
    let line = text
        .lines()
        .find(|l| l.starts_with("dashboard_bus_missed_total "));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the missed count")
}

/// The number the page shows in `#{id}`.
pub(crate) async fn shown(page: &mut Page, id: &str) -> u64 {
    let text = page
        .eval(&format!("document.getElementById('{id}').textContent"))
        .await;
    let text = text.as_str().unwrap_or_default();
    text.parse()
        .unwrap_or_else(|_| panic!("#{id} shows {text:?}, not a number"))
}

/// Waits until the page has shown an overview fetched after this call: two refreshes past the
/// one it had shown (the next one may have been under way already).
pub(crate) async fn next_overview(page: &mut Page) {
    let refreshed = "Number(document.body.dataset.refreshed ?? 0)";
    let now = page.eval(refreshed).await.as_u64().unwrap();
    page.until(&format!("{refreshed} >= {}", now + 2)).await;
}
