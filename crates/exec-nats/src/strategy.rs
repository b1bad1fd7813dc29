//! [`NatsStrategy`]: the submitting side.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use task_core::{BoxFuture, ErasedTask, Outcome, StrategyStats, TaskError, TaskExecutionStrategy};
use tokio::sync::{Notify, oneshot};

use crate::wire::{Completion, PROTOCOL_VERSION, TaskMessage, decode, encode};
use crate::{NatsConfig, NatsError, connect};

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

/// The longest one try to hand a task to the stream takes (the JetStream context's default
/// acknowledgement timeout, and a margin).
const PUBLISH_TRY: Duration = Duration::from_secs(10);

/// How long the server may stay unreachable before the requests waiting on it fail.
pub const DEFAULT_UNREACHABLE_AFTER: Duration = Duration::from_secs(60);

impl NatsBuilder {
    /// The server URL (default `$EXEC_NATS_URL`, else `nats://127.0.0.1:4222`).
    #[must_use]
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.config.url = url.into();
        self
    }

    /// Connect options passed through as they are: credentials, TLS, timeouts, names...
    #[must_use]
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// The whole shared configuration (stream, subjects, limits) at once.
    #[must_use]
    pub fn config(mut self, config: NatsConfig) -> Self {
        self.config = config;
        self
    }

    /// The stream name (default `EXEC_TASKS`).
    #[must_use]
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.config.stream = stream.into();
        self
    }

    /// The subject prefix (default `exec`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// The mode token of the task subject (default `distributed`); workers of the same mode
    /// take these tasks.
    #[must_use]
    pub fn mode(mut self, mode: impl Into<String>) -> Self {
        self.config.mode = mode.into();
        self
    }

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
    /// When the server cannot be reached or refuses the stream or the subscriptions.
    pub async fn start(self) -> Result<NatsStrategy, NatsError> {
        let client = connect(&self.config.url, self.options).await?;
        let js = jetstream::new(client.clone());
        self.config.ensure_stream(&js).await?;
        let inbox = client.new_inbox();
        let client_id = inbox.rsplit('.').next().unwrap_or("client").to_owned();
        let completion_subject = self.config.completion_subject(&client_id);
        let consumer = completion_consumer(&js, &self.config, &client_id).await?;
        let advisories = client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                self.config.stream
            ))
            .await
            .map_err(|e| NatsError::new("subscribing to delivery advisories", e))?;
        let inner = Arc::new(Inner {
            client_id,
            client,
            js,
            task_subject: self.config.task_subject(),
            cancel_subject: self.config.cancel_subject(),
            completion_subject,
            unreachable_after: self.unreachable_after,
            max_message_size: usize::try_from(self.config.max_message_size).unwrap_or(usize::MAX),
            config: self.config,
            table: Mutex::default(),
            next_run: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            idle: Notify::new(),
        });
        let listeners = vec![
            tokio::spawn(listen_completions(Arc::downgrade(&inner), consumer)),
            tokio::spawn(listen_advisories(Arc::downgrade(&inner), advisories)),
            tokio::spawn(watch(Arc::downgrade(&inner))),
        ];
        Ok(NatsStrategy {
            inner,
            listeners: Mutex::new(listeners),
        })
    }
}

/// A run waiting for its completion.
struct Waiting {
    answer: oneshot::Sender<Result<Vec<u8>, TaskError>>,
    /// When its task was handed to the stream (it expires from there `max_age` later).
    published: Instant,
    /// The task as published, to publish it again if the server lost it.
    task: bytes::Bytes,
}

#[derive(Default)]
struct Table {
    /// Runs waiting for their completion, by run id.
    pending: HashMap<String, Waiting>,
    /// Run id by stream sequence, to fail a run the server stopped delivering.
    by_seq: HashMap<u64, String>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
    client_id: String,
    task_subject: String,
    cancel_subject: String,
    /// Where the workers publish this side's completions.
    completion_subject: String,
    unreachable_after: Duration,
    max_message_size: usize,
    table: Mutex<Table>,
    next_run: AtomicU64,
    closed: AtomicBool,
    in_flight: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    duplicates: AtomicU64,
    idle: Notify,
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn resolve(&self, run: &str, outcome: Result<Vec<u8>, TaskError>) {
        let waiter = self.table().pending.remove(run);
        match waiter {
            Some(waiter) => {
                let _ = waiter.answer.send(outcome);
            }
            None => {
                // A redelivered task answered twice, or an answer after the caller gave up.
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(run, "completion for no waiting run dropped");
            }
        }
    }

    /// This side's completion consumer, made (with its stream) if missing.
    async fn completion_consumer(&self) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        completion_consumer(&self.js, &self.config, &self.client_id).await
    }

    /// Hands a task to the stream, trying again while the server is unreachable, for at most
    /// [`NatsBuilder::unreachable_after`]. Every try carries the run id as its message id, so the
    /// stream keeps one copy however many tries reached it.
    async fn publish(
        &self,
        run: &str,
        bytes: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, TaskError> {
        let started = Instant::now();
        // Every try must land within the stream's duplicate window of the first, or a try the
        // server stored but whose acknowledgement was lost could be stored twice. A try takes up
        // to the JetStream context's acknowledgement timeout.
        let window = self.config.task_duplicate_window();
        let retry_for = self
            .unreachable_after
            .min(window.saturating_sub(PUBLISH_TRY));
        let mut pause = Duration::from_millis(50);
        loop {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", run);
            let tried = match self
                .js
                .publish_with_headers(self.task_subject.clone(), headers, bytes.clone())
                .await
            {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match tried {
                Ok(ack) => return Ok(ack),
                Err(e) if started.elapsed() >= retry_for => {
                    return Err(TaskError::strategy(format!(
                        "the NATS server was unreachable and did not take the task within \
                         {retry_for:?}: {e}"
                    )));
                }
                Err(e) => {
                    tracing::debug!(run, error = %e, "the stream did not take the task yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Fails every waiting run with `error(waited)`, or only those `expired` says.
    fn fail_waiting(
        &self,
        mut expired: impl FnMut(&Waiting) -> bool,
        error: impl Fn(&Waiting) -> TaskError,
    ) {
        let failed: Vec<Waiting> = {
            let mut table = self.table();
            let runs: Vec<String> = table
                .pending
                .iter()
                .filter(|(_, waiting)| expired(waiting))
                .map(|(run, _)| run.clone())
                .collect();
            runs.iter()
                .filter_map(|run| table.pending.remove(run))
                .collect()
        };
        for waiting in failed {
            let error = error(&waiting);
            let _ = waiting.answer.send(Err(error));
        }
    }

    /// Publishes `task` and waits for its completion. Dropping the future unfinished withdraws
    /// the run (its [`RunGuard`]).
    async fn run(&self, task: ErasedTask) -> Outcome {
        let inner = self;
        let (info, portable) = task.into_portable();
        let Some(portable) = portable else {
            return Err(TaskError::unsupported(format!(
                "node `{}` is not a PortableNode: the NATS strategy runs only tasks made with Task::portable",
                info.name()
            )));
        };
        let run = format!(
            "{}.{}",
            inner.client_id,
            inner.next_run.fetch_add(1, Ordering::Relaxed)
        );
        let message = TaskMessage {
            version: PROTOCOL_VERSION,
            run: run.clone(),
            request_id: info.request_id().to_string(),
            name: portable.name().to_owned(),
            payload: portable.payload()?.to_vec(),
            reply: inner.completion_subject.clone(),
            deadline_ms: None,
        };
        let bytes = bytes::Bytes::from(encode(&message)?);
        if bytes.len() > inner.max_message_size {
            return Err(TaskError::encoding(format!(
                "the task is {} bytes, more than the stream's maximum of {}",
                bytes.len(),
                inner.max_message_size
            )));
        }
        let (sender, answer) = oneshot::channel();
        inner.table().pending.insert(
            run.clone(),
            Waiting {
                answer: sender,
                published: Instant::now(),
                task: bytes.clone(),
            },
        );
        let mut guard = RunGuard {
            inner,
            run: Some(run.clone()),
            seq: None,
        };
        let mut answer = answer;
        // The run may be ended while its task is still being handed over (the server is away
        // past `unreachable_after`, say): then it stops trying, and answers at once.
        let early = tokio::select! {
            ack = inner.publish(&run, bytes) => {
                let ack = ack?;
                let mut table = inner.table();
                // The completion may already have come; then there is nothing to track.
                if table.pending.contains_key(&run) {
                    table.by_seq.insert(ack.sequence, run.clone());
                    guard.seq = Some(ack.sequence);
                }
                None
            }
            early = &mut answer => Some(early),
        };
        let answer = match early {
            Some(early) => early,
            None => answer.await,
        };
        guard.run = None;
        let bytes = answer.unwrap_or_else(|_| {
            Err(TaskError::strategy(
                "the strategy stopped before the task's outcome arrived",
            ))
        })?;
        portable.decode_output(&bytes)
    }
}

/// Reads this side's completions from its durable consumer, acknowledging each once applied.
/// Pulling resumes by itself after a disconnect; when the consumer (or its stream) is gone, as
/// after a server whose store was wiped, both are made again.
async fn listen_completions(
    inner: std::sync::Weak<Inner>,
    mut consumer: jetstream::consumer::PullConsumer,
) {
    use jetstream::consumer::pull::MessagesErrorKind as Kind;
    let mut pause = Duration::from_millis(50);
    loop {
        match consumer.messages().await {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    let Some(inner) = inner.upgrade() else { return };
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::debug!(error = %e, "reading completions");
                            // The consumer is gone (deleted, or lost with a wiped store): make
                            // it again. Other errors (no responders or missed heartbeats during
                            // an outage) pass: the pulls resume after reconnecting, and making
                            // the consumer again then, measured, left completions unread.
                            if matches!(e.kind(), Kind::ConsumerDeleted) {
                                break;
                            }
                            continue;
                        }
                    };
                    match decode::<Completion>(&message.payload) {
                        Ok(done) => inner.resolve(&done.run, done.outcome),
                        Err(e) => tracing::warn!(%e, "undecodable completion dropped"),
                    }
                    let _ = message.ack().await;
                    pause = Duration::from_millis(50);
                }
            }
            Err(e) => tracing::debug!(error = %e, "pulling completions"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if let Ok(again) = strong.completion_consumer().await {
            consumer = again;
        }
    }
}

/// After an outage: a server killed outright may lose the last messages it had acknowledged (it
/// writes to disk a moment later). Every run still waiting whose task is no longer in the stream
/// (a worker took it and its completion was lost, or the server lost the task) is published
/// again, under a message id of its own, once the completions stored meanwhile have had a moment
/// to arrive. A run answered twice this way is answered once: the second completion is dropped.
async fn reconcile(inner: std::sync::Weak<Inner>) {
    tokio::time::sleep(RECONCILE_AFTER).await;
    let Some(inner) = inner.upgrade() else { return };
    let Ok(stream) = inner.js.get_stream(&inner.config.stream).await else {
        return;
    };
    let waiting: Vec<(u64, String, bytes::Bytes)> = {
        let table = inner.table();
        table
            .by_seq
            .iter()
            .filter_map(|(&seq, run)| {
                let task = table.pending.get(run)?.task.clone();
                Some((seq, run.clone(), task))
            })
            .collect()
    };
    for (seq, run, task) in waiting {
        if stream.get_raw_message(seq).await.is_ok() || !inner.table().pending.contains_key(&run) {
            continue;
        }
        tracing::debug!(
            run,
            seq,
            "the task is gone from the stream unanswered: publishing it again"
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{run}.again-{seq}").as_str());
        let stored = match inner
            .js
            .publish_with_headers(inner.task_subject.clone(), headers, task)
            .await
        {
            Ok(ack) => ack.await.ok(),
            Err(_) => None,
        };
        if let Some(ack) = stored {
            let mut table = inner.table();
            table.by_seq.remove(&seq);
            if table.pending.contains_key(&run) {
                table.by_seq.insert(ack.sequence, run);
            }
        }
    }
}

/// How long after reconnecting the runs still waiting are checked against the stream.
const RECONCILE_AFTER: Duration = Duration::from_secs(1);

/// The durable consumer of one submitting side's completions (`done-{client}`), made with its
/// stream if missing. It outlives a disconnect and a server restart (the server keeps it on
/// disk), and the server deletes it an hour after its side stops pulling (it died without a
/// shutdown).
async fn completion_consumer(
    js: &jetstream::Context,
    config: &NatsConfig,
    client_id: &str,
) -> Result<jetstream::consumer::PullConsumer, NatsError> {
    let name = format!("done-{client_id}");
    config
        .ensure_completion_stream(js)
        .await?
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: config.completion_subject(client_id),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                inactive_threshold: COMPLETION_CONSUMER_IDLE,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| NatsError::new("creating the completion consumer", e))
}

/// How long a completion consumer nobody pulls from is kept by the server.
const COMPLETION_CONSUMER_IDLE: Duration = Duration::from_secs(3600);

/// Fails what can no longer be answered: every waiting run once the server has been unreachable
/// for [`NatsBuilder::unreachable_after`], and a run whose task outlived the stream's `max_age`.
async fn watch(inner: std::sync::Weak<Inner>) {
    let mut since: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let connected = inner.client.connection_state() == async_nats::connection::State::Connected;
        if connected && since.is_some() {
            // Back after an outage: the server may have lost what it took just before it went.
            tokio::spawn(reconcile(Arc::downgrade(&inner)));
        }
        since = if connected {
            None
        } else {
            since.or(Some(Instant::now()))
        };
        if let Some(since) = since
            && since.elapsed() >= inner.unreachable_after
        {
            let after = inner.unreachable_after;
            inner.fail_waiting(
                |_| true,
                |_| {
                    TaskError::strategy(format!(
                        "the NATS server has been unreachable for {after:?}: the task's outcome \
                         cannot be learnt (it may still run)"
                    ))
                },
            );
        }
        let max_age = inner.config.max_age;
        if max_age.is_zero() {
            // JetStream's "no limit".
            continue;
        }
        inner.fail_waiting(
            |waiting| waiting.published.elapsed() >= max_age,
            |_| {
                TaskError::timed_out(format!(
                    "the task expired: no worker finished it within the stream's max_age of \
                     {max_age:?}"
                ))
            },
        );
    }
}

async fn listen_advisories(inner: std::sync::Weak<Inner>, mut messages: async_nats::Subscriber) {
    while let Some(message) = messages.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Ok(advisory) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            continue;
        };
        let (Some(seq), deliveries) = (
            advisory["stream_seq"].as_u64(),
            advisory["deliveries"].as_u64().unwrap_or(0),
        ) else {
            continue;
        };
        let run = inner.table().by_seq.remove(&seq);
        if let Some(run) = run {
            inner.resolve(
                &run,
                Err(TaskError::worker_lost(format!(
                    "the task was delivered {deliveries} times without an outcome (the workers \
                     running it died or stalled); the server stopped redelivering it"
                ))),
            );
            // The server keeps an unacknowledged message; nobody will take it now.
            if let Ok(stream) = inner.js.get_stream(&inner.config.stream).await {
                let _ = stream.delete_message(seq).await;
            }
        }
    }
}

/// Withdraws a run if the caller stops waiting before its completion.
struct RunGuard<'a> {
    inner: &'a Inner,
    run: Option<String>,
    seq: Option<u64>,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            {
                let mut table = self.inner.table();
                table.pending.remove(&run);
                if let Some(seq) = self.seq {
                    table.by_seq.remove(&seq);
                }
            }
            // Tell the workers: one that has it skips it, one running it drops it.
            let client = self.inner.client.clone();
            let subject = self.inner.cancel_subject.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = client.publish(subject, run.into()).await;
                });
            }
        } else if let Some(seq) = self.seq {
            self.inner.table().by_seq.remove(&seq);
        }
    }
}

/// Counts a task out of the strategy when dropped, whichever way its run ends (finished, or its
/// future dropped unfinished because the request was cancelled).
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
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
/// worker that has not started it skips it, one running it drops the node's future.
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
        let inner = &self.inner;
        // Count in, then check: `shutdown` closes, then waits for the count, so a task is either
        // refused here or waited for there (the fences order the store and the load).
        inner.in_flight.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        let in_flight = InFlight(Arc::clone(inner));
        if inner.closed.load(Ordering::SeqCst) {
            drop(in_flight);
            completion.complete(Err(TaskError::shutdown("nats")));
            return;
        }
        // The guard moves into the future: it counts the task out when the run ends, or when the
        // future is dropped unfinished (the request was cancelled).
        completion.spawn(async move {
            let inner = &in_flight.0;
            let outcome = inner.run(task).await;
            let counter = if outcome.is_ok() {
                &inner.succeeded
            } else {
                &inner.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            outcome
        });
    }

    fn shutdown(&self, grace: Duration) -> BoxFuture<'_, ()> {
        self.inner.closed.store(true, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        Box::pin(async move {
            // A grace too long to add to now never runs out.
            let deadline = Instant::now().checked_add(grace);
            loop {
                let idle = self.inner.idle.notified();
                if self.inner.in_flight.load(Ordering::SeqCst) == 0 {
                    break;
                }
                let Some(deadline) = deadline else {
                    idle.await;
                    continue;
                };
                if tokio::time::timeout_at(deadline.into(), idle)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        in_flight = self.inner.in_flight.load(Ordering::SeqCst),
                        "nats strategy: grace period over with tasks still out"
                    );
                    break;
                }
            }
            let listeners =
                std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
            for listener in listeners {
                listener.abort();
            }
            // What is still out past the grace gets no completion now: it ends here.
            self.inner
                .fail_waiting(|_| true, |_| TaskError::shutdown("nats"));
            // Nothing will read this side's completions any more. An unreachable server would
            // keep these waiting: they get a moment, then the server cleans up by itself (the
            // consumer's inactivity limit).
            let inner = &self.inner;
            let tidy = async {
                if let Ok(stream) = inner.js.get_stream(inner.config.completion_stream()).await {
                    let _ = stream
                        .delete_consumer(&format!("done-{}", inner.client_id))
                        .await;
                }
                let _ = inner.client.flush().await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), tidy).await;
        })
    }

    fn name(&self) -> &str {
        "nats"
    }

    fn stats(&self) -> StrategyStats {
        let inner = &self.inner;
        StrategyStats::new(
            inner.in_flight.load(Ordering::SeqCst),
            inner.succeeded.load(Ordering::Relaxed),
            inner.failed.load(Ordering::Relaxed),
            !inner.closed.load(Ordering::SeqCst),
        )
    }
}

impl Drop for NatsStrategy {
    fn drop(&mut self) {
        // Dropped without a shutdown: stop pulling completions (the server then deletes the
        // consumer after its idle limit) and watching; the connection closes with the last handle.
        for listener in self
            .listeners
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            listener.abort();
        }
    }
}

impl fmt::Debug for NatsStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsStrategy")
            .field("url", &self.inner.config.url)
            .field("stream", &self.inner.config.stream)
            .field("subject", &self.inner.task_subject)
            .field("stats", &self.stats())
            .finish()
    }
}
