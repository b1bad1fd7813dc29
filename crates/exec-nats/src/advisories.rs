//! The server's advisories of tasks that reached their last delivery unanswered, as the
//! submitting side reads them: from the stream that keeps them, each once, in order, however
//! often the connection goes and comes back.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use futures::StreamExt;
use task_core::TaskError;
use tokio::sync::Notify;

use crate::client::Inner;
use crate::config::{NatsConfig, NatsError};

/// How long the server keeps a reader nobody pulls from (its side died without a shutdown).
const READER_IDLE: Duration = Duration::from_secs(30);

/// How long one pull of the reader waits at the server.
const READER_PULL: Duration = Duration::from_secs(10);

/// How often the server tells a waiting pull of the reader that it is still there: two missed
/// (a stream deleted, whose consumers the server 2.9 drops without a word) have the reader, and
/// the stream if it is gone, made again.
const READER_HEARTBEAT: Duration = Duration::from_secs(2);

/// The name of the consumer through which submitting side `client_id` reads the advisories: one
/// name, known to this side, so that its shutdown (or drop) removes it from the server at once.
pub(crate) fn reader_name(client_id: &str) -> String {
    format!("advisories-{client_id}")
}

/// Reads the advisories a stream keeps after a sequence, each once, in order. Its consumer (no
/// acknowledgements, one reader) is made again from the last advisory read after each
/// reconnection (a pull the server lost while this side was away would otherwise be noticed only
/// after two missed heartbeats, and an advisory sent meanwhile read that late), and whenever the
/// server says it is gone or stops sending its heartbeats.
pub(crate) struct Advisories {
    js: jetstream::Context,
    config: NatsConfig,
    stream: jetstream::stream::Stream,
    /// When `stream` was made (nanoseconds since the epoch): one made since is another.
    created: i128,
    subject: String,
    /// The consumer's name ([`reader_name`]).
    name: String,
    messages: Option<jetstream::consumer::pull::Stream>,
    /// The sequence of the last advisory read; at first, of the last one kept from before the
    /// start. Those are about earlier tasks, whose sequences a task of this side may have taken
    /// since (the task stream made again): never read as this side's.
    last: u64,
    /// Told by the connection's watch when the connection is back.
    reconnected: Arc<Notify>,
}

impl Advisories {
    /// Reads what `stream` keeps on the advisories' subject from now on, through the consumer
    /// named `name`.
    pub(crate) async fn start(
        js: jetstream::Context,
        config: &NatsConfig,
        name: String,
        reconnected: Arc<Notify>,
    ) -> Result<Self, NatsError> {
        let stream = config.ensure_advisory_stream(&js).await?;
        let mut advisories = Self {
            js,
            config: config.clone(),
            last: stream.cached_info().state.last_sequence,
            created: stream.cached_info().created.unix_timestamp_nanos(),
            stream,
            subject: config.advisory_subject(),
            name,
            messages: None,
            reconnected,
        };
        advisories.messages = Some(advisories.reader().await?);
        Ok(advisories)
    }

    /// The next advisory.
    async fn next(&mut self) -> jetstream::Message {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.remake().await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(e) => {
                        tracing::debug!(error = %e, "making the advisories' reader again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            };
            let next = tokio::select! {
                next = messages.next() => next,
                () = self.reconnected.notified() => {
                    self.messages = None;
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let seq = message.info().map_or(0, |info| info.stream_sequence);
                    if seq > self.last {
                        self.last = seq;
                        return message;
                    }
                }
                // Gone (deleted, or lost with the server's store), or silent: made again.
                Some(Err(e))
                    if matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::NoResponders
                            | MessagesErrorKind::MissingHeartbeat
                    ) =>
                {
                    tracing::debug!(error = %e, "the advisories' reader is made again");
                    self.messages = None;
                }
                // An error of one pull passes.
                Some(Err(e)) => tracing::debug!(error = %e, "reading the advisories"),
                None => {
                    self.messages = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// The reader made again, with the stream if it is gone (deleted, or lost with the server's
    /// store). A stream made since this side started holds only advisories from after its
    /// start: it is read from its beginning.
    async fn remake(&mut self) -> Result<jetstream::consumer::pull::Stream, NatsError> {
        let stream = self.config.ensure_advisory_stream(&self.js).await?;
        let info = stream.cached_info();
        let created = info.created.unix_timestamp_nanos();
        if created != self.created || info.config.name != self.stream.cached_info().config.name {
            tracing::warn!(
                stream = info.config.name,
                "the advisory stream was made again: read from its beginning"
            );
            (self.created, self.last) = (created, 0);
        }
        self.stream = stream;
        self.reader().await
    }

    /// The consumer of the advisories after the last read, made in place of any earlier one of
    /// its name (which starts elsewhere).
    async fn reader(&self) -> Result<jetstream::consumer::pull::Stream, NatsError> {
        let context = "reading the delivery advisories";
        let _ = self.stream.delete_consumer(&self.name).await;
        let config = jetstream::consumer::pull::Config {
            name: Some(self.name.clone()),
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: self.last + 1,
            },
            ack_policy: jetstream::consumer::AckPolicy::None,
            filter_subject: self.subject.clone(),
            inactive_threshold: READER_IDLE,
            memory_storage: true,
            ..Default::default()
        };
        let consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| NatsError::new(context, e))?;
        consumer
            .stream()
            .expires(READER_PULL)
            .heartbeat(READER_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| NatsError::new(context, e))
    }
}

/// Removes submitting side `client_id`'s reader of the advisories from the server (nothing to
/// do when it is gone already).
pub(crate) async fn remove_reader(js: &jetstream::Context, config: &NatsConfig, client_id: &str) {
    let probe = config.advisory_subject().replace('*', "probe");
    if let Ok(stream) = js.stream_by_subject(probe).await {
        let _ = js
            .delete_consumer_from_stream(reader_name(client_id), stream)
            .await;
    }
}

/// Fails the runs the server stopped delivering.
pub(crate) async fn listen_advisories(inner: std::sync::Weak<Inner>, mut advisories: Advisories) {
    loop {
        let message = advisories.next().await;
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
        let run = inner.table().by_seq.get(&seq).cloned();
        if let Some(run) = run {
            #[cfg(feature = "metrics")]
            metrics::counter!("nats_tasks_undeliverable_total").increment(1);
            // The server keeps an unacknowledged message; nobody will take it now. Deleted before
            // the caller hears, so a program that ends then leaves nothing behind.
            inner.delete(seq).await;
            // Poison: the server ran it again already, so no retry policy runs it once more (and
            // loses more workers).
            inner.resolve(
                &run,
                Err(TaskError::poison(format!(
                    "the task was delivered {deliveries} times without an outcome (the workers \
                     running it died or stalled); the server stopped redelivering it"
                ))),
            );
        }
    }
}
