//! What the dashboard remembers: recent history only, so its memory is bounded however many
//! jobs ran.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coordinator::{Coordinator, Job, Missed, RequestCompletionMessage, TakenOutput};
use serde_json::{Value, json};

/// Failures kept for the page.
const FAILURES: usize = 50;
/// Seconds of throughput kept (five minutes).
const SECONDS: usize = 300;
/// Run times kept per node name, and node names kept.
const DURATIONS: usize = 512;
const NODES: usize = 64;
/// Run times are read from the job table at most this often (each read takes its lock).
const LOOKUP_EVERY: Duration = Duration::from_millis(2);
/// Open requests listed, and the most job records looked at (under the table's lock) to find
/// them.
const IN_FLIGHT: usize = 20;
const IN_FLIGHT_SCAN: usize = 50_000;
/// The longest error, payload, id or node name kept, in bytes: the feeds and the failures list
/// hold many, and each is the application's to choose.
const TEXT: usize = 1024;
/// How long an overview is served before it is made again.
const OVERVIEW_EVERY: Duration = Duration::from_secs(1);

/// One outcome or node event, as the event stream sends it.
#[derive(Debug)]
pub(crate) struct Update {
    pub(crate) kind: &'static str,
    /// Cut to [`TEXT`] bytes, as the JSON's: a stream's `?request=` is cut alike to match it.
    pub(crate) request_id: Option<String>,
    pub(crate) json: String,
}

impl Update {
    /// Says that `count` messages or updates were lost on the way.
    pub(crate) fn missed(count: u64) -> Self {
        Update {
            kind: "missed",
            request_id: None,
            json: json!({ "missed": count }).to_string(),
        }
    }
}

#[derive(Default)]
struct Recent {
    failures: VecDeque<Value>,
    /// (seconds since the epoch, requests closed in that second).
    throughput: VecDeque<(u64, u64)>,
    last_closed: Option<u64>,
    /// Run times in milliseconds, by node name.
    durations: BTreeMap<String, VecDeque<f64>>,
    last_lookup: Option<Instant>,
}

pub(crate) struct History {
    payloads: bool,
    recent: Mutex<Recent>,
    /// The last overview made, and when: however often `/api/overview` is asked, it is made at
    /// most once per [`OVERVIEW_EVERY`].
    overview: Mutex<Option<(Instant, Arc<str>)>>,
    /// Held while an overview is made: one at a time (each scans the job table under its
    /// lock); a request that finds one under way waits for it, and takes it.
    making: tokio::sync::Mutex<()>,
    /// Messages the dashboard's subscriber missed (it fell a whole buffer behind).
    missed: AtomicU64,
}

/// `text`, cut to at most [`TEXT`] bytes (on a character boundary) with an ellipsis.
pub(crate) fn clip(text: impl Into<String>) -> String {
    let mut text = text.into();
    if text.len() > TEXT {
        let mut end = TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `q` quantile of `sorted`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
    sorted.get(rank).copied().unwrap_or(0.0)
}

impl History {
    pub(crate) fn new(payloads: bool) -> Self {
        Self {
            payloads,
            recent: Mutex::default(),
            overview: Mutex::new(None),
            making: tokio::sync::Mutex::new(()),
            missed: AtomicU64::new(0),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    /// Takes one message of the bus into the history, on the dashboard's bus reader: counts what
    /// was missed, keeps failures, samples run times. Cheap for every message but a failure.
    pub(crate) fn note(
        &self,
        coordinator: &Coordinator,
        message: &Result<RequestCompletionMessage, Missed>,
    ) {
        let message = match message {
            Ok(message) => message,
            Err(missed) => {
                self.missed.fetch_add(missed.count(), Ordering::Relaxed);
                return;
            }
        };
        let Some(info) = message.task_info() else {
            return;
        };
        if let RequestCompletionMessage::Failure(_) = message {
            let (_, body) = self.body(message);
            let mut recent = self.recent();
            if recent.failures.len() == FAILURES {
                recent.failures.pop_front();
            }
            recent.failures.push_back(body);
        }
        // Run times of successes, as the demo's summary gives them: a failure's is often its
        // timeout or its cancellation.
        if let RequestCompletionMessage::Success(_) = message {
            self.time_run(coordinator, info.request_id().as_str(), info.name());
        }
    }

    /// The update the event streams send for `message`.
    pub(crate) fn update(&self, message: &Result<RequestCompletionMessage, Missed>) -> Update {
        match message {
            Ok(message) => {
                let (kind, body) = self.body(message);
                Update {
                    kind,
                    // Cut as the JSON's is: the feeds keep thousands of updates.
                    request_id: message
                        .task_info()
                        .map(|info| clip(info.request_id().as_str())),
                    json: body.to_string(),
                }
            }
            Err(missed) => Update::missed(missed.count()),
        }
    }

    /// The kind of `message`'s update, and its body.
    fn body(&self, message: &RequestCompletionMessage) -> (&'static str, Value) {
        let Some(info) = message.task_info() else {
            return ("other", json!({}));
        };
        let mut body = json!({
            "request_id": clip(info.request_id().as_str()),
            "node": clip(info.name()),
            "node_id": clip(info.node_id().as_str()),
            "parent": info.parent_id().map(|p| clip(p.as_str())),
            "at": now_secs(),
        });
        let kind = match message {
            RequestCompletionMessage::Creation(opened) => {
                body["mode"] = json!(opened.mode.as_str());
                "opened"
            }
            RequestCompletionMessage::Success(success) => {
                if self.payloads {
                    // The result's own `Debug`, cut as it writes, and caught if it fails or
                    // panics: it runs on the bus reader, which must go on.
                    body["result"] = json!(TakenOutput::of(&success.result).text());
                }
                "success"
            }
            RequestCompletionMessage::Failure(failure) => {
                // With its causes, as the bus's line says it.
                body["error"] = json!(clip(format!("{:#}", failure.error)));
                "failure"
            }
            RequestCompletionMessage::Broadcast(event) => {
                if self.payloads {
                    body["event"] = json!(clip(event.event.to_string()));
                }
                "event"
            }
            _ => "other",
        };
        (kind, body)
    }

    /// Keeps the run time of a request that just ended, reading it from the job table now and
    /// then (each read takes the table's lock, which every submission takes too).
    fn time_run(&self, coordinator: &Coordinator, request_id: &str, node: &str) {
        {
            let mut recent = self.recent();
            let due = recent
                .last_lookup
                .is_none_or(|last| last.elapsed() >= LOOKUP_EVERY);
            if !due {
                return;
            }
            recent.last_lookup = Some(Instant::now());
        }
        let Some(took) = coordinator.job(request_id).and_then(|job| job.duration()) else {
            return;
        };
        let node = clip(node);
        let mut recent = self.recent();
        if !recent.durations.contains_key(&node) && recent.durations.len() == NODES {
            return;
        }
        let times = recent.durations.entry(node).or_default();
        if times.len() == DURATIONS {
            times.pop_front();
        }
        times.push_back(took.as_secs_f64() * 1000.0);
    }

    /// Records the total of requests closed, once a second.
    pub(crate) fn sample(&self, closed: u64) {
        let mut recent = self.recent();
        let last = recent.last_closed.replace(closed);
        let Some(last) = last else { return };
        if recent.throughput.len() == SECONDS {
            recent.throughput.pop_front();
        }
        recent
            .throughput
            .push_back((now_secs(), closed.saturating_sub(last)));
    }

    /// The overview `/api/overview` serves and the page's feed carries, made again when the
    /// last is older than [`OVERVIEW_EVERY`]: by one request, which the others that find it
    /// stale meanwhile wait for.
    pub(crate) async fn overview(&self, coordinator: &Coordinator) -> Arc<str> {
        if let Some(json) = self.fresh_overview() {
            return json;
        }
        let _making = self.making.lock().await;
        // Made while this request waited: taken.
        if let Some(json) = self.fresh_overview() {
            return json;
        }
        self.keep_overview(coordinator)
    }

    /// A new overview, kept for [`overview`](Self::overview): the page feed's, made each second
    /// (after any under way: never two at once).
    pub(crate) async fn refresh_overview(&self, coordinator: &Coordinator) -> Arc<str> {
        let _making = self.making.lock().await;
        self.keep_overview(coordinator)
    }

    /// The last overview made, unless it is older than [`OVERVIEW_EVERY`].
    fn fresh_overview(&self) -> Option<Arc<str>> {
        let cached = self.overview.lock().unwrap_or_else(|p| p.into_inner());
        let (made, json) = cached.as_ref()?;
        (made.elapsed() < OVERVIEW_EVERY).then(|| Arc::clone(json))
    }

    /// Makes an overview and keeps it (the caller holds [`making`](Self::making)).
    fn keep_overview(&self, coordinator: &Coordinator) -> Arc<str> {
        let json: Arc<str> = self.make_overview(coordinator).to_string().into();
        let mut cached = self.overview.lock().unwrap_or_else(|p| p.into_inner());
        *cached = Some((Instant::now(), Arc::clone(&json)));
        json
    }

    /// The oldest open requests, oldest first, among at most [`IN_FLIGHT_SCAN`] of them (the
    /// table's open jobs, which it finds without looking at its closed ones).
    fn in_flight(&self, coordinator: &Coordinator) -> Vec<Value> {
        let now = SystemTime::now();
        coordinator.with_state(|state| {
            let mut open: Vec<&Job> = state.open_jobs().take(IN_FLIGHT_SCAN).collect();
            if open.len() > IN_FLIGHT {
                open.select_nth_unstable_by_key(IN_FLIGHT, |job| job.start_time());
                open.truncate(IN_FLIGHT);
            }
            open.sort_by_key(|job| job.start_time());
            let listed = open.iter().map(|job| {
                let age = now.duration_since(job.start_time()).unwrap_or_default();
                json!({
                    "request_id": clip(job.request_id().as_str()),
                    "node": clip(job.node_name()),
                    "age_ms": age.as_millis() as u64,
                })
            });
            listed.collect()
        })
    }

    /// The coordinator's overview, and the recent history.
    fn make_overview(&self, coordinator: &Coordinator) -> Value {
        let detail = coordinator.overview();
        let in_flight = self.in_flight(coordinator);
        let recent = self.recent();
        let durations: BTreeMap<&str, Value> = recent
            .durations
            .iter()
            .map(|(node, times)| {
                let mut sorted: Vec<f64> = times.iter().copied().collect();
                sorted.sort_by(f64::total_cmp);
                let stats = json!({
                    "p50_ms": quantile(&sorted, 0.5),
                    "p99_ms": quantile(&sorted, 0.99),
                    "samples": sorted.len(),
                });
                (node.as_str(), stats)
            })
            .collect();
        json!({
            "accepting": detail.accepting,
            "counts": detail.counts,
            "requests": detail.requests,
            "modes": detail.modes,
            "throughput": recent.throughput,
            "durations": durations,
            "in_flight": in_flight,
            "failures": recent.failures,
            "missed": self.missed(),
            "payloads": self.payloads,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    use coordinator::{
        Coordinator, NodeId, RequestCompletionPublisher, RequestFailure, TaskError, TaskInfo,
    };

    use super::{History, TEXT, clip};

    /// Ids and names are the application's, of any length: a failure with long ones is kept
    /// with each cut to [`TEXT`] bytes, as its error is.
    #[tokio::test]
    async fn a_failures_ids_and_names_are_cut_as_its_error_is() {
        let publisher = RequestCompletionPublisher::new();
        publisher.start().unwrap();
        let coordinator = Coordinator::builder().with_async().build();
        coordinator.start(&publisher).unwrap();
        let history = History::new(false);
        let long = "é".repeat(100_000);
        let parent = Some(NodeId::from(long.as_str()));
        let info = TaskInfo::new(
            long.as_str().into(),
            long.as_str().into(),
            parent,
            long.clone(),
        );
        let error = TaskError::strategy(long.clone());
        history.note(&coordinator, &Ok(RequestFailure { info, error }.into()));
        let overview: serde_json::Value =
            serde_json::from_str(&history.overview(&coordinator).await).unwrap();
        let failure = &overview["failures"][0];
        for field in ["request_id", "node", "node_id", "parent", "error"] {
            let text = failure[field].as_str().unwrap();
            assert!(
                text.len() <= TEXT + '…'.len_utf8(),
                "{field}: {} bytes",
                text.len()
            );
            assert!(text.starts_with("éé") && text.ends_with('…'), "{field}");
        }
        within("the coordinator's shutdown", coordinator.shutdown()).await;
        within("the bus's shutdown", publisher.shutdown()).await;
    }

    /// The event streams' feeds keep thousands of updates for streams that read slowly: the
    /// request id each update is matched by is cut to [`TEXT`] bytes, as the one its JSON shows.
    #[test]
    fn an_updates_request_id_is_cut_as_its_json_is() {
        let history = History::new(false);
        let long = "é".repeat(100_000);
        let info = TaskInfo::new(long.as_str().into(), "n".into(), None, "work");
        let error = TaskError::strategy("failed");
        let update = history.update(&Ok(RequestFailure { info, error }.into()));
        let kept = update.request_id.unwrap();
        assert!(kept.len() <= TEXT + '…'.len_utf8(), "{} bytes", kept.len());
        assert_eq!(kept, clip(long), "matched as a stream's ?request= is");
    }

    /// Eight requests for the overview arrive while it is stale and its rebuild is held up (the
    /// job table's lock is taken): it is made once, and every one of them gets it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_for_a_stale_overview_make_it_once() {
        const REQUESTS: usize = 8;
        let publisher = RequestCompletionPublisher::new();
        publisher.start().unwrap();
        let coordinator = Coordinator::builder().with_async().build();
        coordinator.start(&publisher).unwrap();
        let history = Arc::new(History::new(false));
        let (held, release) = (mpsc::channel(), mpsc::channel::<()>());
        let holder = std::thread::spawn({
            let coordinator = coordinator.clone();
            let (held, released) = (held.0, release.1);
            move || {
                coordinator.with_state(|_| {
                    held.send(()).unwrap();
                    // Held until the test lets go (or fails and drops the sender).
                    let _ = released.recv_timeout(Duration::from_secs(10));
                });
            }
        });
        held.1.recv_timeout(Duration::from_secs(10)).unwrap();
        // Threads of their own: a rebuild waiting for the table's lock blocks its thread.
        let (made, overviews) = mpsc::channel();
        for _ in 0..REQUESTS {
            let (history, coordinator, made) =
                (Arc::clone(&history), coordinator.clone(), made.clone());
            std::thread::spawn(move || {
                let overview = futures::executor::block_on(history.overview(&coordinator));
                made.send(overview).unwrap();
            });
        }
        // Let every request arrive, then the rebuild go on.
        std::thread::sleep(Duration::from_millis(300));
        release.0.send(()).unwrap();
        holder.join().unwrap();
        let overviews: Vec<Arc<str>> = (0..REQUESTS)
            .map(|_| overviews.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        let mut made: Vec<*const u8> = overviews.iter().map(|o| Arc::as_ptr(o).cast()).collect();
        made.sort_unstable();
        made.dedup();
        let made = made.len();
        assert_eq!(made, 1, "the overview was made {made} times at once");
        within("the coordinator's shutdown", coordinator.shutdown()).await;
        within("the bus's shutdown", publisher.shutdown()).await;
    }

    /// Fails the test instead of hanging it.
    async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
    }
}
