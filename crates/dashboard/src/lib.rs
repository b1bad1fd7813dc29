//! A live dashboard for a running [`Coordinator`]: open it in a browser, scrape it with
//! Prometheus.
//!
//! [`Dashboard::builder`] serves, for one coordinator and its bus:
//!
//! - `/`: a page with live per-mode counts, throughput over the last five minutes as a chart,
//!   p50/p99 run times per node, the oldest requests in flight and their age, the latest
//!   failures with their error and node, the process workers, a live feed of outcomes, and the
//!   broadcast events of one chosen request as they stream. Its assets are in this crate: no
//!   build step, no network.
//! - `/api/overview`: the same as JSON ([`Coordinator::overview`] and the recent history).
//! - `/api/events`: server-sent events, one per job state change (`opened`, then `success` or
//!   `failure`) and per node event (`event`), in bus order (`?request=ID` for one request's
//!   only). Starting the dashboard turns on the coordinator's
//!   [`announce_openings`](coordinator::Coordinator::announce_openings).
//! - `/metrics`: the counters in the Prometheus text format.
//!
//! Safe by default: it binds `127.0.0.1:8080` unless told otherwise, it only reads, it shows no
//! outputs and no event payloads unless [`show_payloads`](DashboardBuilder::show_payloads) says
//! so (they may hold secrets), it can require a bearer token, and its memory is bounded however
//! many jobs ran: it keeps recent history, not everything. Its one bus subscriber takes only
//! openings, outcomes and node events, into a buffer of its own, and every open page shares what it reads:
//! a page that stops reading is dropped, and nothing waits for it.
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

mod history;
mod prometheus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use coordinator::pubsub::SubscriberId;
use coordinator::{Buffer, Coordinator, RequestCompletionMessage, RequestCompletionPublisher};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::history::{History, Update};

/// The page, served as is.
const PAGE: &str = include_str!("page.html");

/// Updates kept for pages that read slowly: one that falls this far behind is dropped.
const FEED_CAPACITY: usize = 1024;

/// What the handlers share.
struct Shared {
    coordinator: Coordinator,
    token: Option<String>,
    history: Arc<History>,
    feed: broadcast::Sender<Arc<Update>>,
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
}

impl DashboardBuilder {
    /// Listens on `addr` (default `127.0.0.1:8080`; port 0 picks a free one). Anything but a
    /// loopback address lets other machines read the dashboard: set a [`token`](Self::token).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Requires `token` on every request: as `Authorization: Bearer <token>`, or as
    /// `?token=<token>` (how the page passes it on, since a browser's event stream cannot set a
    /// header).
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
    /// When the address cannot be bound, or the bus is shut down.
    pub async fn start(self) -> std::io::Result<Dashboard> {
        let listener = tokio::net::TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let history = Arc::new(History::new(self.payloads));
        let subscriber = {
            let (coordinator, history, feed) =
                (self.coordinator.clone(), Arc::clone(&history), feed.clone());
            // Every state change: openings (announced from now on), events, outcomes.
            self.coordinator.announce_openings(true);
            let wanted = |m: &RequestCompletionMessage| {
                m.is_terminal()
                    || m.is_broadcast()
                    || matches!(m, RequestCompletionMessage::Creation(_))
            };
            self.publisher
                .subscribe_where(Buffer::Bounded, wanted, move |message| {
                    let update = history.record(&coordinator, message);
                    // Nobody reading is not an error.
                    let _ = feed.send(Arc::new(update));
                })
                .map_err(std::io::Error::other)?
        };
        let sampler = tokio::spawn(sample_throughput(
            self.coordinator.clone(),
            Arc::clone(&history),
        ));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            coordinator: self.coordinator,
            token: self.token,
            history,
            feed,
            stopping: stopping.clone(),
        });
        let app = Router::new()
            .route("/", get(page))
            .route("/api/overview", get(overview))
            .route("/api/events", get(events))
            .route("/metrics", get(metrics))
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&shared),
                authorize,
            ))
            .with_state(shared);
        let mut stopped = stopping;
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "the dashboard's server stopped");
            }
        });
        tracing::info!(%addr, "dashboard serving");
        Ok(Dashboard {
            addr,
            publisher: self.publisher,
            subscriber: Some(subscriber),
            stop: Some(stop),
            server: Some(server),
            sampler,
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
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Counts the requests closed each second, for the throughput chart.
async fn sample_throughput(coordinator: Coordinator, history: Arc<History>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        history.sample(coordinator.counts().closed);
    }
}

/// Lets a request through when no token is set or it carries the token.
async fn authorize(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let Some(token) = &shared.token else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let query = request.uri().query().unwrap_or_default();
    let in_query = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="))
        .any(|given| given == token);
    if bearer == Some(token.as_str()) || in_query {
        next.run(request).await
    } else {
        (StatusCode::UNAUTHORIZED, "a token is required").into_response()
    }
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn overview(State(shared): State<Arc<Shared>>) -> Response {
    let json = shared.history.overview(&shared.coordinator);
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = prometheus::render(&shared.coordinator.overview(), shared.history.missed());
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], text).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Only this request's updates.
    request: Option<String>,
}

async fn events(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>> {
    let receiver = shared.feed.subscribe();
    let stopping = shared.stopping.clone();
    let stream = futures::stream::unfold(
        (receiver, query.request, stopping),
        |(mut receiver, request, mut stopping)| async move {
            loop {
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    // The dashboard stops: the stream ends.
                    _ = stopping.wait_for(|stop| *stop) => return None,
                };
                match received {
                    Ok(update) => {
                        if request
                            .as_deref()
                            .is_some_and(|id| update.request_id.as_deref() != Some(id))
                        {
                            continue;
                        }
                        let event = Event::default().event(update.kind).data(&update.json);
                        return Some((Ok(event), (receiver, request, stopping)));
                    }
                    // Fell a whole feed behind (it stopped reading): dropped.
                    Err(_) => return None,
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
