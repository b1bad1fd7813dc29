//! A live dashboard for a running [`Coordinator`]: open it in a browser, scrape it with
//! Prometheus.
//!
//! [`Dashboard::builder`] serves, for one coordinator and its bus:
//!
//! - `/`: a page with live per-mode counts, throughput over the last five minutes as a chart,
//!   p50/p99 run times per node (of successful requests, sampled: at most one each 2 ms, the
//!   last 512 per node, of the first 64 nodes), the oldest requests in flight and their age,
//!   the latest failures with their error and node, the process workers, a live feed of
//!   outcomes, and the broadcast events of one chosen request as they stream. Its assets are in
//!   this crate: no build step, no network.
//! - `/api/overview`: the same as JSON ([`Coordinator::overview`] and the recent history),
//!   made at most once a second however often it is asked.
//! - `/api/events`: server-sent events, one per job state change (`opened`, then `success` or
//!   `failure`) and per node event (`event`), in bus order (`?request=ID` for one request's
//!   only; an empty ID is a `400`), for tools that must see every change. While one is open,
//!   the coordinator announces the requests it accepts
//!   ([`follow_openings`](coordinator::Coordinator::follow_openings)), so a stream opened
//!   mid-run sees outcomes of requests opened before it. Each event's data
//!   is a JSON object: `request_id`, `node`, `node_id`, `parent`, `at` (Unix seconds), and
//!   `mode` (`opened`) or `error` (`failure`); `result` and `event` only with
//!   [`show_payloads`](DashboardBuilder::show_payloads). When messages were lost on the way, a
//!   `missed` event says how many (`{"missed": N}`): the dashboard fell a whole bus buffer
//!   behind (a burst), or the stream fell a whole feed of updates behind. The stream goes on
//!   either way; nothing is skipped silently.
//! - `/api/feed`: the page's live feed: the overview once a second (`overview`, as
//!   `/api/overview` has it, made once for every page) and a sample of the outcomes, at most
//!   one each 50 ms however fast requests end, written together at most four times a second,
//!   so an open page costs the coordinator's machine four writes a second and no polling.
//! - `/api/jobs/{id}`: one job's record as JSON, found by its request id (ids, node name,
//!   status, result, attempts, times, error), `404` when the job table holds none.
//! - `/metrics`: the counters in the Prometheus text format, and how far behind each bus
//!   subscriber is (`pubsub_subscriber_lag`).
//!
//! Safe by default: it binds `127.0.0.1:8080` unless told otherwise, it only reads, it shows no
//! outputs and no event payloads unless [`show_payloads`](DashboardBuilder::show_payloads) says so
//! (they may hold secrets), it can require a bearer token, and its memory is bounded however many
//! jobs ran: it keeps recent history, not everything, and cuts every error, payload, id and node
//! name it keeps or sends to 1 KiB (`?request=` matches that 1 KiB). Its one bus subscriber takes
//! only openings, outcomes and node events, from a bounded buffer, and turns a message into an
//! update only while an event stream is open; every stream shares that update. A client that takes
//! no data (or only a trickle, under 16 KiB) for 10 s while there is some to send it is
//! disconnected ([`client_stall_timeout`](DashboardBuilder::client_stall_timeout)), a stream a
//! whole feed behind is told what it missed, a connection that sends no whole request head within
//! 10 s of opening or of its last answer is closed
//! ([`request_head_timeout`](DashboardBuilder::request_head_timeout)), every connection closes when
//! the dashboard stops (even one halfway through its request), and at most 4,096 are open at once
//! (more wait to be taken, and idle ones cannot hold them; a request head over 64 KiB is answered
//! 431): nothing waits for a client.
//!
//! # Examples
//!
//! ```no_run
//! use coordinator::{Coordinator, RequestCompletionPublisher};
//! use dashboard::Dashboard;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = RequestCompletionPublisher::new();
//! publisher.start()?;
//! let coordinator = Coordinator::builder().with_async().build();
//! coordinator.start(&publisher)?;
//! let dashboard = Dashboard::builder(&coordinator, &publisher).start().await?;
//! println!("dashboard at {}", dashboard.url());
//! # Ok(())
//! # }
//! ```

mod auth;
mod conn;
mod history;
mod jobs;
mod prometheus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use coordinator::pubsub::SubscriberId;
use coordinator::{Buffer, Coordinator, RequestCompletionMessage, RequestCompletionPublisher};
use futures::FutureExt;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::history::{History, Update};

/// The page, served as is.
const PAGE: &str = include_str!("page.html");

/// Updates kept for event streams that read slowly: one that falls this far behind is told
/// how many it missed.
const FEED_CAPACITY: usize = 8 * 1024;
/// The page's live feed carries at most one outcome per this long (and every missed-messages
/// notice): however fast requests end, an open page costs a few writes a second.
const PAGE_EVERY: Duration = Duration::from_millis(50);
/// After a small batch, the dashboard pauses this long before reading the bus again, and an
/// event stream [`STREAM_GATHER`] before reading its feed: what arrives meanwhile is taken
/// together, so a busy bus costs a wake-up per pause, not per message.
const BUS_GATHER: Duration = Duration::from_millis(5);
/// A batch of at least this many messages means the bus is busy: the reader reads on without
/// a pause. (A stream whose write was full writes on, too.)
const BUSY: usize = 64;
/// The most messages the reader, or updates a stream, takes before letting other tasks run.
const MAX_BATCH: usize = 4096;
const STREAM_GATHER: Duration = Duration::from_millis(20);
/// The page's feed gathers longer: a person reads a few refreshes a second, and each refresh
/// costs every open page a write.
const PAGE_GATHER: Duration = Duration::from_millis(250);
/// An event stream with nothing to send writes a comment this often, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// At most this many bytes of updates go out in one write (the server buffers a few writes per
/// connection whose client reads slowly).
const MAX_CHUNK: usize = 8 * 1024;
/// A client that takes (almost) no data for this long while there is some to send is
/// disconnected.
const DEFAULT_STALL: Duration = Duration::from_secs(10);
/// A connection that sends no whole request head for this long is closed.
const DEFAULT_REQUEST_HEAD: Duration = Duration::from_secs(10);

/// What the handlers share.
struct Shared {
    coordinator: Coordinator,
    publisher: RequestCompletionPublisher,
    token: Option<String>,
    history: Arc<History>,
    feed: broadcast::Sender<Arc<Update>>,
    /// The page's live feed: a sample of [`feed`](Self::feed)'s outcomes, the overview each second.
    page_feed: broadcast::Sender<Arc<Update>>,
    /// Set when the dashboard stops: every open event stream ends, so the server can close.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// How a [`Dashboard`] is set up: where it listens, whether it asks for a token, whether it
/// shows payloads. Made by [`Dashboard::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct DashboardBuilder {
    coordinator: Coordinator,
    publisher: RequestCompletionPublisher,
    addr: SocketAddr,
    token: Option<String>,
    payloads: bool,
    stall: Duration,
    request_head: Duration,
}

impl DashboardBuilder {
    /// Disconnects a client that takes less than 16 KiB in `stall` spent waiting for it to take
    /// more (default 10 s): an event stream whose reader stopped, or reads a trickle, holds
    /// nothing for longer. Only time with a write waiting counts: a spell with nothing to send
    /// does not. `Duration::MAX` never runs out; [`start`](Self::start) refuses zero.
    pub fn client_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// Closes a connection whose client sends no whole request head within `timeout` of
    /// connecting, or of the end of its last answer (default 10 s): sockets that send nothing,
    /// or half a request, with a token or without, hold none of the 4,096 places for longer. An
    /// answer being written (an event stream, the page's feed) is not timed. A timeout over a
    /// century ([`LONGEST_TIMER`](task_core::LONGEST_TIMER)), `Duration::MAX` say, never runs
    /// out; [`start`](Self::start) refuses zero.
    pub fn request_head_timeout(mut self, timeout: Duration) -> Self {
        self.request_head = timeout;
        self
    }

    /// Listens on `addr` (default `127.0.0.1:8080`; port 0 picks a free one). Anything but a
    /// loopback address lets other machines read the dashboard: set a [`token`](Self::token).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Requires `token` on every request: as `Authorization: Bearer <token>`, or as
    /// `?token=<token>`, percent-encoded (how the page passes it on, since a browser's event
    /// stream cannot set a header). [`start`](Self::start) refuses an empty token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Shows node outputs and event payloads (off by default: they may hold secrets).
    pub fn show_payloads(mut self, show: bool) -> Self {
        self.payloads = show;
        self
    }

    /// Binds, subscribes to the bus and serves, on the current tokio runtime (it needs its time
    /// driver and I/O driver), until [`Dashboard::shutdown`] or the dashboard is dropped.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound, the bus is shut down, or the token or a timeout is
    /// empty or zero ([`InvalidInput`](std::io::ErrorKind::InvalidInput)).
    pub async fn start(self) -> std::io::Result<Dashboard> {
        let refused = if self.token.as_deref() == Some("") {
            Some("the dashboard's token is empty: give a token, or none")
        } else if self.stall.is_zero() {
            Some("the client stall timeout is zero: every client would be disconnected at once")
        } else if self.request_head.is_zero() {
            Some("the request head timeout is zero: every connection would close unanswered")
        } else {
            None
        };
        if let Some(why) = refused {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| {
                let addr = self.addr;
                std::io::Error::new(
                    e.kind(),
                    format!("the dashboard cannot listen on {addr}: {e}"),
                )
            })?;
        let addr = listener.local_addr()?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (page_feed, _) = broadcast::channel(FEED_CAPACITY);
        let history = Arc::new(History::new(self.payloads));
        // Every state change: openings (announced while an event stream is open), events,
        // outcomes.
        let wanted = |m: &RequestCompletionMessage| {
            m.is_terminal()
                || m.is_broadcast()
                || matches!(m, RequestCompletionMessage::Creation(_))
        };
        // Bounded, as the dashboard's memory is: when it falls a whole buffer behind (the
        // reader below empties it a few times a second), it counts what it missed and the event
        // streams say so.
        let subscription = self
            .publisher
            .subscribe_stream_where(Buffer::Bounded, wanted)
            .map_err(std::io::Error::other)?;
        let subscriber = subscription.id();
        let reader = tokio::spawn(read_bus(
            subscription,
            self.coordinator.clone(),
            Arc::clone(&history),
            feed.clone(),
            page_feed.clone(),
        ));
        let sampler = tokio::spawn(every_second(
            self.coordinator.clone(),
            Arc::clone(&history),
            page_feed.clone(),
        ));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            coordinator: self.coordinator,
            publisher: self.publisher.clone(),
            token: self.token,
            history,
            feed,
            page_feed,
            stopping: stopping.clone(),
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/api/overview", get(overview))
            .route("/api/events", get(events))
            .route("/api/feed", get(live_feed))
            .route("/api/jobs/{*id}", get(jobs::job))
            .route("/api/jobs/", get(jobs::no_id))
            .route("/metrics", get(prometheus::metrics))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                auth::authorize,
            ))
            .with_state(shared);
        let listener = conn::GuardedListener {
            inner: listener,
            stall: self.stall,
            head: self.request_head,
            stopping,
            open: Arc::new(tokio::sync::Semaphore::new(conn::MAX_CONNECTIONS)),
        };
        let server = tokio::spawn(conn::serve(listener, app));
        tracing::info!(%addr, "dashboard serving");
        Ok(Dashboard {
            addr,
            publisher: self.publisher,
            subscriber: Some(subscriber),
            stop: Some(stop),
            server: Some(server),
            sampler,
            reader,
        })
    }
}

/// A running dashboard. Dropping it stops it, as [`shutdown`](Self::shutdown) does without
/// waiting.
#[derive(Debug)]
pub struct Dashboard {
    addr: SocketAddr,
    publisher: RequestCompletionPublisher,
    subscriber: Option<SubscriberId>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    server: Option<tokio::task::JoinHandle<()>>,
    sampler: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Dashboard {
    /// A dashboard of `coordinator` and its bus `publisher`, to set up and
    /// [`start`](DashboardBuilder::start).
    pub fn builder(
        coordinator: &Coordinator,
        publisher: &RequestCompletionPublisher,
    ) -> DashboardBuilder {
        DashboardBuilder {
            coordinator: coordinator.clone(),
            publisher: publisher.clone(),
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            payloads: false,
            stall: DEFAULT_STALL,
            request_head: DEFAULT_REQUEST_HEAD,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The page's address, `http://<address>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops serving: open pages' event streams end, the bus subscriber is removed. Waits for
    /// the server to close its connections.
    pub async fn shutdown(mut self) {
        self.stop_now();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(id) = self.subscriber.take() {
            // Shut down already: nothing to remove.
            let _ = self.publisher.unsubscribe(id);
        }
        self.sampler.abort();
        self.reader.abort();
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Takes the bus's messages into the history and the event streams. It reads in batches,
/// pausing after a small one, so the bus wakes it at most a few hundred times a second rather
/// than once per message, and reading on after a large one, so a burst does not overflow it.
async fn read_bus(
    mut subscription: coordinator::pubsub::Subscription<RequestCompletionMessage>,
    coordinator: Coordinator,
    history: Arc<History>,
    feed: broadcast::Sender<Arc<Update>>,
    page_feed: broadcast::Sender<Arc<Update>>,
) {
    let mut last_on_page: Option<Instant> = None;
    let mut take = |message: Result<RequestCompletionMessage, coordinator::Missed>| {
        history.note(&coordinator, &message);
        // The update is made only when a stream is open to take it.
        let to_all = feed.receiver_count() > 0;
        let to_page = page_feed.receiver_count() > 0
            && match &message {
                Err(_) => true,
                Ok(m) if m.is_terminal() => {
                    let due = last_on_page.is_none_or(|at| at.elapsed() >= PAGE_EVERY);
                    if due {
                        last_on_page = Some(Instant::now());
                    }
                    due
                }
                Ok(_) => false,
            };
        if to_all || to_page {
            let update = Arc::new(history.update(&message));
            // Nobody reading is not an error.
            if to_page {
                let _ = page_feed.send(Arc::clone(&update));
            }
            if to_all {
                let _ = feed.send(update);
            }
        }
    };
    while let Some(message) = subscription.recv().await {
        take(message);
        let mut taken = 1;
        // Unconstrained: every message waiting (not only as many as a task's budget allows), up
        // to a bound, so a bus that never empties still lets the worker run other tasks.
        while taken < MAX_BATCH
            && let Some(Some(message)) =
                tokio::task::unconstrained(subscription.recv()).now_or_never()
        {
            take(message);
            taken += 1;
        }
        if taken >= BUSY {
            // A busy bus: read on (letting other tasks run) rather than let the buffer fill.
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(BUS_GATHER).await;
        }
    }
}

/// Each second: counts the requests closed, for the throughput chart, and sends the open
/// pages the overview on their feed (made once for all of them), so no page polls.
async fn every_second(
    coordinator: Coordinator,
    history: Arc<History>,
    page_feed: broadcast::Sender<Arc<Update>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        history.sample(coordinator.counts().closed);
        if page_feed.receiver_count() > 0 {
            let overview = Update {
                kind: "overview",
                request_id: None,
                json: history.refresh_overview(&coordinator).await.to_string(),
            };
            // Nobody reading is not an error.
            let _ = page_feed.send(Arc::new(overview));
        }
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn overview(State(shared): State<Arc<Shared>>) -> Response {
    let json = shared.history.overview(&shared.coordinator).await;
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

async fn events(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<jobs::EventsQuery>, QueryRejection>,
) -> Response {
    let request = match jobs::request_filter(query) {
        Ok(request) => request,
        Err(why) => return jobs::bad_request(why),
    };
    // Openings are announced while a stream is open: its first update about a request
    // accepted from now on is the opening (subscribed first, so none is announced before).
    let receiver = shared.feed.subscribe();
    let following = shared.coordinator.follow_openings();
    event_stream(
        receiver,
        request,
        shared.stopping.clone(),
        Some(following),
        Pace::Stream,
    )
}

async fn live_feed(State(shared): State<Arc<Shared>>) -> Response {
    event_stream(
        shared.page_feed.subscribe(),
        None,
        shared.stopping.clone(),
        None,
        Pace::Page,
    )
}

/// Server-sent events of the updates `receiver` gets (of one request's only, when `request` is
/// set). Each write takes every update already waiting, so a busy bus costs a stream a write per
/// wake-up, not per update. A stream a whole feed behind (its client reads too slowly) is told
/// how many updates it missed; the dashboard's stopping ends it. A client that stopped reading
/// altogether holds its connection's buffers, not this stream: the connection closes it
/// ([`conn`]).
fn event_stream(
    receiver: broadcast::Receiver<Arc<Update>>,
    request: Option<String>,
    stopping: tokio::sync::watch::Receiver<bool>,
    following: Option<coordinator::OpeningsFollower>,
    pace: Pace,
) -> Response {
    let state = Some((receiver, request, stopping, following));
    let stream = futures::stream::unfold(state, move |state| async move {
        let (mut receiver, request, mut stopping, following) = state?;
        let mut chunk = String::new();
        let (mut full, mut taken) = (false, 0);
        let keep_alive = tokio::time::sleep(KEEP_ALIVE);
        tokio::pin!(keep_alive);
        while chunk.is_empty() {
            let received = tokio::select! {
                received = receiver.recv() => received,
                () = &mut keep_alive => {
                    chunk.push_str(":\n\n");
                    break;
                }
                _ = stopping.wait_for(|stop| *stop) => return None,
            };
            let mut received = received.map_err(|error| match error {
                RecvError::Lagged(missed) => TryRecvError::Lagged(missed),
                RecvError::Closed => TryRecvError::Closed,
            });
            // Every update taken is written: the size is checked before taking the next.
            loop {
                match received {
                    Ok(update) => push_event(&mut chunk, &update, request.as_deref()),
                    // A whole feed behind: told how many it missed, as the bus tells its
                    // subscribers, and on with the oldest update still kept.
                    Err(TryRecvError::Lagged(missed)) => {
                        push_event(&mut chunk, &Update::missed(missed), None);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        return (!chunk.is_empty())
                            .then_some((Ok::<_, std::io::Error>(chunk), None));
                    }
                }
                taken += 1;
                // A filtered stream may take many updates and write none of them: bounded too.
                if chunk.len() >= MAX_CHUNK || taken >= MAX_BATCH {
                    full = true;
                    break;
                }
                received = receiver.try_recv();
            }
        }
        // Let the next updates gather, unless a stream had more waiting than one write takes
        // (after a keep-alive, nothing was waiting). The page's feed always gathers.
        let gather = match pace {
            Pace::Stream if full => None,
            Pace::Stream => Some(STREAM_GATHER),
            Pace::Page => Some(PAGE_GATHER),
        };
        if let Some(gather) = gather
            && !chunk.starts_with(':')
        {
            tokio::select! {
                () = tokio::time::sleep(gather) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
        }
        Some((Ok(chunk), Some((receiver, request, stopping, following))))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// How often an event stream writes.
#[derive(Clone, Copy)]
enum Pace {
    /// Every [`STREAM_GATHER`], or at once while more is waiting than a write takes.
    Stream,
    /// Every [`PAGE_GATHER`], whatever is waiting: the page's feed is a sample.
    Page,
}

/// Writes `update` as one server-sent event, unless it is another request's.
fn push_event(chunk: &mut String, update: &Update, request: Option<&str>) {
    if request.is_some_and(|id| update.request_id.as_deref() != Some(id)) {
        return;
    }
    // The JSON is compact: it holds no line break.
    for part in ["event: ", update.kind, "\ndata: ", &update.json, "\n\n"] {
        chunk.push_str(part);
    }
}
