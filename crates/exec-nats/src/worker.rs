//! [`NatsWorker`]: the working side.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::{FutureExt, StreamExt};
use task_core::{NodeRegistry, TaskError};
use tokio::sync::{Semaphore, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::config::{NatsConfig, bad_token, config_setters, connect, stream_limit};
use crate::error::NatsError;
use crate::wire::{ANSWER_HEADER, PROTOCOL_VERSION, REPLY_HEADER, RUN_HEADER, TaskMessage, decode};
use task_core::context::EventSink;

mod cancels;
mod completion;
mod confirm;
mod events;

use cancels::Cancels;
use confirm::Confirmations;
use events::EventBuffer;

/// How long a pull for tasks waits at the server for them before it is made again.
const PULL_WAIT: Duration = Duration::from_secs(5);

/// How long past [`PULL_WAIT`] a pull the server has not ended counts as lost.
const PULL_LOST_AFTER: Duration = Duration::from_secs(1);

/// How often a waiting pull looks for a reconnection, after which it is made again.
const RECONNECTED_LOOK: Duration = Duration::from_millis(100);

/// Builds a [`NatsWorker`].
#[derive(Debug)]
pub struct NatsWorkerBuilder {
    registry: NodeRegistry,
    config: NatsConfig,
    options: Option<async_nats::ConnectOptions>,
    consumer: Option<String>,
    concurrency: usize,
    ack_wait: Duration,
    max_deliver: i64,
    exit_before_ack_after: Option<u64>,
}

impl NatsWorkerBuilder {
    config_setters!();

    /// The durable consumer's name, shared by every worker of the mode (default
    /// `{mode}-workers`).
    #[must_use]
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Tasks this worker runs at once (default: the machine's cores); 0 is taken as 1, and any
    /// count above [`Semaphore::MAX_PERMITS`] (`usize::MAX` for "no limit") as that.
    #[must_use]
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks.clamp(1, Semaphore::MAX_PERMITS);
        self
    }

    /// How long the server waits for an acknowledgement before redelivering a task to another
    /// worker (default 30 s; 0 leaves it to the server, whose default is 30 s). A running task
    /// is kept from redelivery by progress acknowledgements sent every third of the consumer's
    /// own. Set when the consumer is created; at most a century (a longer wait is taken as
    /// that).
    #[must_use]
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait.min(crate::config::LONGEST_SPAN);
        self
    }

    /// Deliveries of one task before the server gives up on it (default 5); the submitting side
    /// then fails the request saying so, as poison ([`TaskError::is_poison`]: no retry policy
    /// runs it again). At least 1 (0 and below count as 1). Set when the consumer is created.
    #[must_use]
    pub fn max_deliver(mut self, deliveries: i64) -> Self {
        self.max_deliver = deliveries.max(1);
        self
    }

    /// Fault injection for testing delivery guarantees: exit the process right after publishing
    /// the `n`-th completion, before acknowledging its task (the worst moment to die: the task is
    /// redelivered and answered twice). Not for production use.
    #[must_use]
    pub fn exit_before_ack_after(mut self, n: u64) -> Self {
        self.exit_before_ack_after = Some(n);
        self
    }

    /// Connects and binds the stream and the durable consumer (creating them if missing).
    ///
    /// # Errors
    ///
    /// When the configuration cannot work ([`NatsConfig::validate`], a consumer name the server
    /// would refuse: the default `{mode}-workers` for a mode holding `/` or `\\`), or the server
    /// cannot be reached or refuses the stream or the consumer.
    pub async fn connect(self) -> Result<NatsWorker, NatsError> {
        self.config.validate()?;
        let name = self
            .consumer
            .unwrap_or_else(|| format!("{}-workers", self.config.mode));
        if let Some(why) = bad_token(&name, true) {
            let why = format!(
                "the consumer name `{name}` cannot work: {why} (a mode that holds one needs NatsWorkerBuilder::consumer)"
            );
            return Err(NatsError::config("checking the configuration", why));
        }
        let client = connect(&self.config.url, self.options).await?;
        let js = jetstream::new(client.clone());
        let stream = self.config.ensure_stream(&js).await?;
        let completions = self.config.ensure_completion_stream(&js).await?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: self.max_deliver,
                    filter_subject: self.config.task_subject(),
                    max_ack_pending: -1,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| NatsError::new("creating or binding the worker consumer", e))?;
        // The consumer's own (the server's default for a zero; an existing consumer's may differ
        // from ours): its progress acknowledgements keep a running task from redelivery.
        let ack_wait = consumer.cached_info().config.ack_wait;
        let cancels = client
            .subscribe(self.config.cancel_subject())
            .await
            .map_err(|e| NatsError::new("subscribing to cancellations", e))?;
        let replies = client.new_inbox();
        let confirmations = client
            .subscribe(format!("{replies}.*"))
            .await
            .map_err(|e| NatsError::new("subscribing to confirmations", e))?;
        Ok(NatsWorker {
            shared: Arc::new(Shared {
                id: format!("{}:{}", hostname(), std::process::id()),
                client,
                js,
                registry: self.registry,
                ack_wait,
                // The stream's own, which an earlier setup may have made other than ours.
                max_message_size: stream_limit(&completions),
                answers: self.config.answer_subject(""),
                replies,
                confirmations: Mutex::default(),
                cancels: Mutex::default(),
                completed: AtomicU64::new(0),
                exit_before_ack_after: self.exit_before_ack_after,
            }),
            consumer,
            cancel_feed: Some(cancels),
            confirmation_feed: Some(confirmations),
            concurrency: self.concurrency,
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "worker".into())
}

struct Shared {
    id: String,
    client: async_nats::Client,
    js: jetstream::Context,
    registry: NodeRegistry,
    ack_wait: Duration,
    /// The completion stream's `max_message_size`.
    max_message_size: usize,
    /// What the subjects submitting sides take completions on start with (`{prefix}.answer.`):
    /// a task naming another is answered through the completion stream alone.
    answers: String,
    /// Where the sides' confirmations come (`{inbox}.<token>`).
    replies: String,
    confirmations: Mutex<Confirmations>,
    cancels: Mutex<Cancels>,
    completed: AtomicU64,
    exit_before_ack_after: Option<u64>,
}

impl Shared {
    fn cancels(&self) -> MutexGuard<'_, Cancels> {
        self.cancels.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cancel(&self, run: String) {
        self.cancels().cancel(run);
    }

    /// Runs one delivered task to its completion, publishes it, then acknowledges the task.
    async fn handle(self: Arc<Self>, message: jetstream::Message) {
        #[cfg(feature = "metrics")]
        if message.info().is_ok_and(|info| info.delivered > 1) {
            crate::recorded(|| metrics::counter!("nats_task_redeliveries_total").increment(1));
        }
        // The answers to an undecodable task are boxed: rare, and inline their future would sit
        // in every task's handling.
        let task = match decode::<TaskMessage>(&message.payload) {
            // Its run id goes into headers and its reply is a subject: a line break or a space
            // in either (a message published by hand) could never be answered.
            Ok(task) if !answerable(&task.run) || !answerable(&task.reply) => {
                let why = "the task names a run or a reply subject holding a space or a control \
                           character";
                return Box::pin(self.undecodable(message, TaskError::protocol(why))).await;
            }
            Ok(task) => task,
            Err(e) => return Box::pin(self.undecodable(message, e)).await,
        };
        let (stop, stopped) = oneshot::channel();
        let (skip, delivery) = {
            let mut cancels = self.cancels();
            let skip = cancels.remembered.remove(&task.run);
            cancels.deliveries += 1;
            let delivery = cancels.deliveries;
            if !skip {
                let running = cancels.running.entry(task.run.clone()).or_default();
                running.push((delivery, stop));
            }
            (skip, delivery)
        };
        if skip {
            tracing::debug!(run = task.run, "skipping a cancelled task");
            let _ = message.ack().await;
            return;
        }
        let (events, forwarding) = self.forward_events(&task);
        let sink = Arc::clone(&events);
        let running = async {
            let outcome = self.run_node(&task, &message, events, stopped).await;
            self.cancels().ran(&task.run, delivery);
            // Closed now, even if the node kept its sink: the forwarder sends what is kept (at
            // most `EVENTS_KEPT`, and the count of any it missed) and ends, so every event goes to
            // the connection before the completion, which the server then stores after them; a
            // later event is dropped.
            sink.close();
            outcome
        };
        // The events go out beside the run, in this same task: whenever the node awaits.
        let (outcome, ()) = tokio::join!(running, forwarding);
        let Some(outcome) = outcome else {
            // Cancelled while running: the caller is gone; the task is done with.
            let _ = message.ack().await;
            return;
        };
        // The completion must reach the submitting side (confirmed by it) or be stored in the
        // completion stream before the task is acknowledged: if this worker dies, or the server
        // goes away, in between, the task is redelivered and answered again (a duplicate the
        // submitting side drops), never lost. Stored, it reaches the submitting side even if
        // that side is disconnected now. A run that sent events has its completion stored after
        // them, in order.
        let direct = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(ANSWER_HEADER))
            .map(|subject| subject.as_str())
            .filter(|subject| self.answers_there(subject) && !sink.broadcast_any());
        let stored = tokio::select! {
            stored = self.answer(&task, outcome, direct) => stored,
            // Never ends: keeps the task from redelivery while the answer is tried.
            () = keep_alive(&message, self.ack_wait) => false,
        };
        if !stored {
            // The server is away: the task runs again later (once it is back), here or elsewhere.
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        }
        let completed = self.completed.fetch_add(1, Ordering::SeqCst) + 1;
        if self.exit_before_ack_after == Some(completed) {
            tracing::warn!("exiting before the acknowledgement, as configured for testing");
            std::process::exit(3);
        }
        if let Err(e) = message.ack().await {
            tracing::warn!(%e, "acknowledging a task failed; it may be redelivered");
        }
    }
}

impl Shared {
    /// Runs `task`'s node, its events going to `events`, until it ends (its outcome), or is
    /// cancelled (`stopped`): `None` then.
    async fn run_node(
        &self,
        task: &TaskMessage,
        message: &jetstream::Message,
        events: Arc<EventBuffer>,
        stopped: oneshot::Receiver<()>,
    ) -> Option<Result<Vec<u8>, TaskError>> {
        if task.version != PROTOCOL_VERSION {
            return Some(Err(TaskError::protocol(format!(
                "the task speaks protocol {} and this worker {PROTOCOL_VERSION}",
                task.version
            ))));
        }
        let mut run = match self.registry.run(&task.name, &task.payload) {
            Ok(run) => AssertUnwindSafe(run)
                .catch_unwind()
                .map(|r| r.unwrap_or_else(|panic| Err(TaskError::panic(panic))))
                .boxed(),
            Err(e) => futures::future::ready(Err(e)).boxed(),
        };
        let run = std::future::poll_fn(move |cx| {
            let sink: Arc<dyn EventSink> = Arc::clone(&events) as _;
            task_core::context::with_events(sink, || run.as_mut().poll(cx))
        });
        let progress = keep_alive(message, self.ack_wait);
        tokio::select! {
            outcome = run => Some(outcome),
            // Only a cancellation sends; a dropped switch (never expected) is not one.
            Ok(()) = stopped => None,
            () = progress => None,
        }
    }
}

impl Shared {
    /// A task whose body cannot be decoded (another protocol's, or damaged): nothing can ever run
    /// it. Its caller is answered with a protocol error where the message's headers name the run
    /// and its reply subject (the strategy sets them), so that it ends at once instead of at its
    /// timeout; otherwise (nobody to tell) it is dropped for good.
    async fn undecodable(&self, message: jetstream::Message, error: TaskError) {
        let header = |name| {
            let headers = message.headers.as_ref()?;
            Some(headers.get(name)?.as_str().to_owned())
        };
        let (Some(run), Some(reply)) = (header(RUN_HEADER), header(REPLY_HEADER)) else {
            tracing::warn!(%error, "undecodable task, naming no run, terminated");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        };
        tracing::warn!(%error, run, "undecodable task answered with a protocol error");
        let task = TaskMessage {
            version: PROTOCOL_VERSION,
            run,
            request_id: String::new(),
            name: String::new(),
            payload: Vec::new(),
            reply,
        };
        let outcome = Err(TaskError::protocol(format!(
            "the worker could not decode the task (a message of another protocol version, or \
             damaged): {error}"
        )));
        if self.answer(&task, outcome, None).await {
            let _ = message.ack().await;
        } else {
            // The server is away: answered when the task comes again.
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}

/// Whether `text` can name a run in a header and a subject: not empty, no space or control
/// character.
pub(super) fn answerable(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Sends progress acknowledgements every third of `ack_wait` so a long task is not redelivered
/// while it runs. Never completes.
async fn keep_alive(message: &jetstream::Message, ack_wait: Duration) {
    let period = (ack_wait / 3).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        // Boxed: due only past `ack_wait / 3`; inline, its future would sit in every task's
        // handling.
        let _ = Box::pin(message.ack_with(AckKind::Progress)).await;
    }
}

/// A worker: takes tasks of its mode from the stream and runs them. Build it with
/// [`NatsWorker::builder`], then [`run_until`](Self::run_until).
pub struct NatsWorker {
    shared: Arc<Shared>,
    consumer: consumer::PullConsumer,
    cancel_feed: Option<async_nats::Subscriber>,
    confirmation_feed: Option<async_nats::Subscriber>,
    concurrency: usize,
}

impl NatsWorker {
    /// A builder for a worker running the nodes in `registry`.
    pub fn builder(registry: NodeRegistry) -> NatsWorkerBuilder {
        NatsWorkerBuilder {
            registry,
            config: NatsConfig::default(),
            options: None,
            consumer: None,
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            exit_before_ack_after: None,
        }
    }

    /// This worker's id in completions (`host:pid`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Serves tasks until `stop` completes, then lets the running ones finish (their completions
    /// are published and acknowledged) and returns.
    ///
    /// A task is pulled from the server only when there is a place to run it at once, so one
    /// this worker has no room for stays with the server for the other workers, and none waits
    /// here unstarted past its `ack_wait`. Dropping the future instead of completing `stop`
    /// stops taking tasks and drops those running here; each goes to another worker once its
    /// `ack_wait` passes.
    ///
    /// # Errors
    ///
    /// When the worker's consumer is gone (deleted, or lost with the server's store): nothing
    /// more would come. What was running is finished first.
    pub async fn run_until(mut self, stop: impl Future<Output = ()>) -> Result<(), NatsError> {
        let shared = Arc::clone(&self.shared);
        // Stopped when this future ends, or is dropped.
        let _cancel_listener = self.cancel_feed.take().map(|mut feed| {
            let shared = Arc::clone(&shared);
            AbortOnDropHandle::new(tokio::spawn(async move {
                while let Some(message) = feed.next().await {
                    shared.cancel(String::from_utf8_lossy(&message.payload).into_owned());
                }
            }))
        });
        let _confirmations = self.confirmation_feed.take().map(|feed| {
            AbortOnDropHandle::new(tokio::spawn(confirm::route(Arc::clone(&shared), feed)))
        });
        let places = Arc::new(Semaphore::new(self.concurrency));
        let mut running = tokio::task::JoinSet::new();
        let (mut served, mut failures) = (Ok(()), 0);
        futures::pin_mut!(stop);
        'serving: loop {
            let place = tokio::select! {
                place = Arc::clone(&places).acquire_owned() => match place {
                    Ok(place) => place,
                    Err(_) => break,
                },
                () = &mut stop => break,
            };
            // As many tasks as there are places free now; places only free up meanwhile.
            let room = 1 + places.available_permits();
            let pull = self.consumer.batch().max_messages(room).expires(PULL_WAIT);
            let statistics = shared.client.statistics();
            let connects = statistics.connects.load(Ordering::Relaxed);
            // The server ends a pull by `PULL_WAIT`: one it has not ended well after was lost
            // (the consumer is gone, or a restarted server forgot it).
            let lost = tokio::time::sleep(PULL_WAIT + PULL_LOST_AFTER);
            let mut look = tokio::time::interval(RECONNECTED_LOOK);
            futures::pin_mut!(lost);
            let pulled = tokio::select! {
                pulled = pull.messages() => pulled,
                () = &mut stop => break,
            };
            let mut place = Some(place);
            let failed = match pulled {
                Err(e) => Some(e.to_string()),
                Ok(mut batch) => loop {
                    let next = tokio::select! {
                        next = batch.next() => next,
                        () = &mut lost => break Some("the server never ended a pull".to_owned()),
                        _ = look.tick() => {
                            // Reconnected: the server may have forgotten the pull; make it again.
                            if statistics.connects.load(Ordering::Relaxed) != connects {
                                break None;
                            }
                            continue;
                        }
                        () = &mut stop => {
                            // Pulled and not started: back to the server at once, for the others.
                            while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                                let _ = message.ack_with(AckKind::Nak(None)).await;
                            }
                            break 'serving;
                        }
                    };
                    let message = match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => break Some(e.to_string()),
                        None => break None,
                    };
                    let place = place
                        .take()
                        .map_or_else(|| Arc::clone(&places).try_acquire_owned(), Ok);
                    // Never short: the batch asked for no more than the places free.
                    let Ok(place) = place else {
                        let _ = message.ack_with(AckKind::Nak(None)).await;
                        continue;
                    };
                    let shared = Arc::clone(&shared);
                    running.spawn(async move {
                        shared.handle(message).await;
                        drop(place);
                    });
                    while running.try_join_next().is_some() {}
                },
            };
            if let Some(error) = failed {
                failures += 1;
                let paused = tokio::select! {
                    paused = self.pause_after(&error, failures) => paused,
                    () = &mut stop => break,
                };
                if let Err(gone) = paused {
                    served = Err(gone);
                    break;
                }
            } else {
                failures = 0;
            }
        }
        while running.join_next().await.is_some() {}
        let _ = shared.client.flush().await;
        served
    }

    /// After the `failures`-th pull in a row failed: an error once the consumer is gone (the
    /// running tasks finished first), otherwise a pause before the next pull (the server may be
    /// away), longer each time, up to 4 s.
    async fn pause_after(&self, error: &str, failures: u32) -> Result<(), NatsError> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
        match self.consumer.get_info().await {
            Err(gone) if matches!(gone.kind(), Kind::NotFound | Kind::StreamNotFound) => {
                Err(NatsError::gone(gone))
            }
            _ => {
                tracing::warn!(%error, failures, "pulling tasks failed; trying again");
                let pause = Duration::from_millis(250) * 2_u32.pow(failures.min(5) - 1);
                tokio::time::sleep(pause).await;
                Ok(())
            }
        }
    }
}

impl std::fmt::Debug for NatsWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsWorker")
            .field("id", &self.shared.id)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}
