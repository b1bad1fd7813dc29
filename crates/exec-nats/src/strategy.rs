//! [`NatsStrategy`]: the submitting side.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use task_core::{BoxFuture, ErasedTask, StrategyStats, TaskError, TaskExecutionStrategy};
use tokio_util::task::TaskTracker;

use crate::advisories::{Advisories, listen_advisories, reader_name, remove_reader};
use crate::client::{Inner, StreamSeen, completion_consumer};
use crate::config::{NatsConfig, config_setters, connect, stream_limit, url_without_credentials};
use crate::error::NatsError;
use crate::listen::{listen_answers, listen_completions, watch};

/// Builds a [`NatsStrategy`].
#[derive(Debug)]
pub struct NatsBuilder {
    config: NatsConfig,
    options: Option<async_nats::ConnectOptions>,
    unreachable_after: Duration,
}

impl Default for NatsBuilder {
    fn default() -> Self {
        Self {
            config: NatsConfig::default(),
            options: None,
            unreachable_after: DEFAULT_UNREACHABLE_AFTER,
        }
    }
}

/// How long the server may stay unreachable before the requests waiting on it fail.
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(60);

impl NatsBuilder {
    config_setters!();

    /// The largest task message, in bytes (default 1 MiB); set on the stream when it is created.
    #[must_use]
    pub fn max_message_size(mut self, bytes: i32) -> Self {
        self.config.max_message_size = bytes;
        self
    }

    /// How long the server may stay unreachable before every request waiting on it fails with
    /// [`TaskError::is_strategy_error`], saying so (default 60 s). A shorter outage is ridden
    /// out: tasks and completions are kept by the server and flow again after reconnecting.
    #[must_use]
    pub fn unreachable_after(mut self, after: Duration) -> Self {
        self.unreachable_after = after;
        self
    }

    /// Connects, creates the stream if missing, and starts listening for completions.
    ///
    /// # Errors
    ///
    /// When the configuration cannot work ([`NatsConfig::validate`]), or the server cannot be
    /// reached or refuses the stream or the subscriptions.
    pub async fn start(self) -> Result<NatsStrategy, NatsError> {
        self.config.validate()?;
        let client = connect(&self.config.url, self.options).await?;
        let js = jetstream::new(client.clone());
        let stream = self.config.ensure_stream(&js).await?;
        let seen = StreamSeen::new(stream.cached_info())?;
        let inbox = client.new_inbox();
        let client_id = inbox.rsplit('.').next().unwrap_or("client").to_owned();
        let completion_subject = self.config.completion_subject(&client_id);
        let consumer = completion_consumer(&js, &self.config, &client_id).await?;
        let answer_subject = self.config.answer_subject(&client_id);
        let answers = match client.subscribe(answer_subject.clone()).await {
            Ok(answers) => answers,
            Err(e) => {
                remove_consumers(&js, &self.config, &client_id).await;
                return Err(NatsError::new("subscribing to direct completions", e));
            }
        };
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let name = reader_name(&client_id);
        let advisories =
            Advisories::start(js.clone(), &self.config, name, Arc::clone(&reconnected));
        let advisories = match advisories.await {
            Ok(advisories) => advisories,
            // A refused start leaves no consumer of this side's on the server.
            Err(refused) => {
                remove_consumers(&js, &self.config, &client_id).await;
                return Err(refused);
            }
        };
        let inner = Arc::new(Inner {
            client_id,
            client,
            js,
            task_subject: self.config.task_subject(),
            cancel_subject: self.config.cancel_subject(),
            completion_subject,
            answer_subject,
            unreachable_after: self.unreachable_after,
            // The stream's own, which an earlier setup may have made other than ours.
            max_message_size: stream_limit(&stream),
            config: self.config,
            table: Mutex::default(),
            next_run: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            running: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stopped: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            reconnected,
            stream: Mutex::new(seen),
            // Where `start` runs: withdrawals and the tidying after a drop run here, wherever
            // the strategy or a run is dropped (a coordinator ends what it had open on a thread
            // of its own).
            runtime: tokio::runtime::Handle::current(),
        });
        let listeners = vec![
            tokio::spawn(listen_completions(Arc::downgrade(&inner), consumer)),
            tokio::spawn(listen_answers(Arc::downgrade(&inner), answers)),
            tokio::spawn(listen_advisories(Arc::downgrade(&inner), advisories)),
            tokio::spawn(watch(Arc::downgrade(&inner))),
        ];
        Ok(NatsStrategy {
            inner,
            listeners: Mutex::new(listeners),
        })
    }
}

/// Runs tasks on worker processes anywhere, through NATS JetStream.
///
/// Only portable tasks ([`Task::portable`](task_core::Task::portable)) can go; any other task
/// fails with [`TaskError::is_unsupported`]. The workers ([`NatsWorker`](crate::NatsWorker)) must
/// register the node.
///
/// Each run is a future handed to [`Completion::spawn`](task_core::Completion::spawn): it runs
/// where the coordinator runs its own work. When the request is cancelled or times out the
/// coordinator drops that future, which withdraws the run and announces the cancellation: a
/// worker that has not started it when the announcement arrives skips it, one running it drops
/// the node's future (one that took it just before may have begun it). This side
/// cannot see when a remote node stops, so the run is let go then: under a coordinator's limit
/// on the mode the request's place frees at once, and a node that does not stop at its next
/// wake-up (blocked in a system call, a CPU loop) may run on beside the next request's.
///
/// # Metrics
///
/// With the `metrics` feature, through the [`metrics`](https://docs.rs/metrics) facade to the
/// application's recorder: `nats_connected` (gauge, 1 or 0, updated every 250 ms),
/// `nats_reconnects_total`, `nats_duplicate_completions_total` (answers dropped as
/// duplicates), `nats_tasks_undeliverable_total` (tasks the server stopped redelivering), and on
/// the workers' side `nats_task_redeliveries_total` (tasks delivered more than once) and
/// `nats_events_missed_total` (events of running nodes not sent: see
/// [`wire::missed_event`](crate::wire::missed_event)).
pub struct NatsStrategy {
    inner: Arc<Inner>,
    listeners: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl NatsStrategy {
    /// A builder with the default configuration.
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.inner.config
    }

    /// Completions that arrived for a run no longer waiting (duplicates after a redelivery, or
    /// answers after the caller gave up): dropped, and counted here.
    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }
}

impl TaskExecutionStrategy for NatsStrategy {
    fn execute(&self, task: ErasedTask, completion: task_core::Completion) {
        let inner = Arc::clone(&self.inner);
        // Counted in, then checked: `shutdown` closes, then waits for the tasks in flight, so a
        // task is either refused here or waited for there.
        let in_flight = inner.tasks.token();
        if inner.tasks.is_closed() {
            // The node goes before its completion (a panic in its `Drop` is the node's, logged).
            if let Some(reason) = task_core::catch_panic(move || drop(task)) {
                tracing::error!(%reason, "the body of a task refused at shutdown panicked when dropped");
            }
            completion.complete(Err(TaskError::shutdown("nats")));
            return;
        }
        // The token moves into the future: it counts the task out when the run ends, or when the
        // future is dropped unfinished (the request was cancelled), and then it is stopped.
        // Made before the future, which may be dropped before its first poll.
        let unfinished = Unfinished::new(&inner);
        completion.spawn(async move {
            let _in_flight = in_flight;
            let outcome = inner.run(task).await;
            let counter = match &outcome {
                Ok(_) => &inner.succeeded,
                Err(error) if error.is_cancelled() => &inner.stopped,
                Err(_) => &inner.failed,
            };
            // Counted before it leaves the runs in flight, as the other strategies count.
            counter.fetch_add(1, Ordering::Relaxed);
            unfinished.ended();
            outcome
        });
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.inner.tasks.close();
        Box::pin(async move {
            let drained = self.inner.tasks.wait();
            // A grace too long to add to now never runs out.
            let in_time = match task_core::deadline_after(Instant::now(), grace) {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), drained)
                    .await
                    .is_ok(),
                None => {
                    drained.await;
                    true
                }
            };
            if !in_time {
                tracing::warn!(
                    in_flight = self.inner.tasks.len(),
                    "nats strategy: grace period over with tasks still out"
                );
            }
            let listeners =
                std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
            for listener in listeners {
                listener.abort();
            }
            // What is still out past the grace gets no completion now: it ends here, and is
            // withdrawn (below) so that no worker runs it later; as does a run accepted before
            // and first polled after this.
            self.inner.table().closed = true;
            let failed = self
                .inner
                .fail_waiting(|_| true, |_| TaskError::shutdown("nats"));
            self.inner.tidy(failed).await;
        })
    }

    fn name(&self) -> &str {
        "nats"
    }

    fn stats(&self) -> StrategyStats {
        let inner = &self.inner;
        StrategyStats::new(
            inner.running.load(Ordering::Relaxed),
            inner.succeeded.load(Ordering::Relaxed),
            inner.failed.load(Ordering::Relaxed),
            !inner.tasks.is_closed(),
        )
        .with_stopped(inner.stopped.load(Ordering::Relaxed))
    }
}

/// Counts a run in flight until it ended, or was dropped before: then it is counted stopped
/// (failed when a panic drops it).
struct Unfinished(Option<Arc<Inner>>);

impl Unfinished {
    fn new(inner: &Arc<Inner>) -> Self {
        inner.running.fetch_add(1, Ordering::Relaxed);
        Self(Some(Arc::clone(inner)))
    }

    /// The run ended with an outcome, counted apart.
    fn ended(mut self) {
        if let Some(inner) = self.0.take() {
            inner.running.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(inner) = &self.0 {
            inner.running.fetch_sub(1, Ordering::Relaxed);
            let counter = if std::thread::panicking() {
                &inner.failed
            } else {
                &inner.stopped
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for NatsStrategy {
    fn drop(&mut self) {
        // Dropped without a shutdown: stop pulling completions and watching; the connection
        // closes with the last handle. The completion consumer and the advisories' reader are
        // removed from the server below, on the runtime `start` ran on (once that one is gone,
        // the server removes them after their idle limits).
        for listener in self
            .listeners
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            listener.abort();
        }
        // No completion can reach the runs still out: each ends now (as does one accepted
        // before the drop that starts after it), and its task is withdrawn from the stream so
        // that no worker runs it later.
        self.inner.tasks.close();
        self.inner.table().closed = true;
        let failed = self
            .inner
            .fail_waiting(|_| true, |_| TaskError::shutdown("nats"));
        let inner = Arc::clone(&self.inner);
        inner.runtime().spawn(async move {
            inner.tidy(failed).await;
        });
    }
}

/// How long the tidying after a shutdown or a drop may take: an unreachable server would keep it
/// waiting, and cleans up by itself (the consumers' inactivity limits).
const TIDY_FOR: Duration = Duration::from_secs(2);

/// How many of the tidying's deletions wait for the server at once.
const DELETIONS_AT_ONCE: usize = 64;

impl Inner {
    /// The runtime this side's own work runs on: the one `start` ran on, where its connection
    /// and its listeners run, whichever runtime (or none) drops a run or the strategy. Once that
    /// runtime has shut down nothing runs there (the server then removes this side's consumers
    /// after their idle limits).
    pub(crate) fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.clone()
    }

    /// Once nothing will read this side's completions any more: withdraws the tasks of the runs
    /// `failed` ended (so that no worker runs them later), waits for the runs whose task the
    /// server had not acknowledged yet (their hand-over takes it out once it has), and removes
    /// this side's completion consumer and advisories' reader from the server, all within
    /// [`TIDY_FOR`]; what it could not take out by then is logged, counted.
    async fn tidy(&self, failed: Vec<(String, Option<u64>)>) {
        let stored: Vec<u64> = failed.iter().filter_map(|(_, seq)| *seq).collect();
        let total = stored.len();
        let mut out = 0;
        // Every withdrawal is announced before any task is taken out, so that a worker skips
        // one it meets while the others are still being deleted; the deletions, a request to
        // the server each, go many at a time.
        let _ = tokio::time::timeout(TIDY_FOR, async {
            for (run, _) in failed {
                self.announce_withdrawal(run).await;
            }
            let mut deletions = futures::stream::iter(stored)
                .map(|seq| self.delete(seq))
                .buffer_unordered(DELETIONS_AT_ONCE);
            while let Some(deleted) = deletions.next().await {
                out += usize::from(deleted);
            }
            self.tasks.wait().await;
            remove_consumers(&self.js, &self.config, &self.client_id).await;
            let _ = self.client.flush().await;
        })
        .await;
        // Runs not ended yet, and the hand-overs and withdrawals they left, still waiting.
        let unfinished = self.tasks.len();
        if out < total || unfinished > 0 {
            tracing::warn!(
                left = total - out,
                unfinished,
                "nats strategy: tasks of ended runs the server did not take out of the stream \
                 within the tidying's time (left), and runs, hand-overs or withdrawals not ended \
                 (unfinished): a worker may still run those tasks"
            );
        }
    }
}

/// Removes submitting side `client_id`'s completion consumer and advisories' reader from the
/// server (nothing to do for one that is gone already).
async fn remove_consumers(js: &jetstream::Context, config: &NatsConfig, client_id: &str) {
    if let Ok(stream) = js.get_stream(config.completion_stream()).await {
        let _ = stream.delete_consumer(&format!("done-{client_id}")).await;
    }
    remove_reader(js, config, client_id).await;
}

impl fmt::Debug for NatsStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsStrategy")
            .field("url", &url_without_credentials(&self.inner.config.url))
            .field("stream", &self.inner.config.stream)
            .field("subject", &self.inner.task_subject)
            .field("stats", &self.stats())
            .finish()
    }
}
