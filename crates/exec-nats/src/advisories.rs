//! The server's advisories of tasks that reached their last delivery unanswered, as the
//! submitting side reads them: from the stream that keeps them, each once, in order, however
//! often the connection goes and comes back.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::context::PublishErrorKind;
use futures::StreamExt;
use task_core::TaskError;
use tokio::sync::Notify;

use crate::client::Inner;
use crate::config::NatsConfig;
use crate::error::NatsError;

/// How long the server keeps a reader nobody pulls from (its side died without a shutdown).
const READER_IDLE: Duration = Duration::from_secs(30);

/// How long one pull of the reader waits at the server.
const READER_PULL: Duration = Duration::from_secs(10);

/// How often the server tells a waiting pull of the reader that it is still there: two missed
/// (a stream deleted, whose consumers the server 2.9 drops without a word) have the reader, and
/// the stream if it is gone, made again.
const READER_HEARTBEAT: Duration = Duration::from_secs(2);

/// How long the reader of an advisory stream made again has to read the probe this side stored
/// in it, after which the reader is made again.
const PROBE_READ_WITHIN: Duration = Duration::from_secs(4);

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
    /// The sequence of the probe stored in an advisory stream this side made again, and when the
    /// reader must have read it by; `None` once read.
    probe: Option<(u64, tokio::time::Instant)>,
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
            probe: None,
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
            let probe_due = self.probe.map(|(_, by)| by);
            let next = tokio::select! {
                next = messages.next() => next,
                () = self.reconnected.notified() => {
                    self.messages = None;
                    continue;
                }
                () = sleep_until(probe_due) => {
                    tracing::warn!("the advisories' new reader did not read its probe: made again");
                    self.messages = None;
                    self.probe = self
                        .probe
                        .map(|(seq, _)| (seq, tokio::time::Instant::now() + PROBE_READ_WITHIN));
                    continue;
                }
            };
            match next {
                Some(Ok(message)) => {
                    let seq = message.info().map_or(0, |info| info.stream_sequence);
                    if self.probe.is_some_and(|(probe, _)| seq >= probe) {
                        self.probe = None;
                    }
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
            self.stream = stream;
            let messages = self.reader().await?;
            self.probe = self.probe().await?;
            return Ok(messages);
        }
        self.stream = stream;
        self.reader().await
    }

    /// Checks an advisory stream made again (found gone): the server (2.9, measured) may let a
    /// stream made again while its deletion is still under way keep nothing on its subjects, or
    /// give its reader of the same name nothing it keeps; either way every advisory would be
    /// lost for good, and the requests they end would wait for their timeouts. A probe stored
    /// on the advisories' subject shows the first: the stream is then deleted again (it keeps
    /// nothing for anyone) and made anew at the next try. The probe's sequence, which the
    /// reader must read within [`PROBE_READ_WITHIN`], shows the second (`Ok(None)`: this side's
    /// own stream was not made again by this side, and is not probed).
    async fn probe(&self) -> Result<Option<(u64, tokio::time::Instant)>, NatsError> {
        let name = self.config.advisory_stream();
        if self.stream.cached_info().config.name != name {
            return Ok(None);
        }
        // Not an advisory: every reader passes over it (it names no task).
        let subject = self.subject.replace('*', &self.name);
        let stored = match self.js.publish(subject, "{}".into()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match stored {
            Ok(ack) if ack.stream == name => {
                let by = tokio::time::Instant::now() + PROBE_READ_WITHIN;
                Ok(Some((ack.sequence, by)))
            }
            // Nothing keeps the advisories' subject, though the stream says it does.
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                tracing::warn!("the advisory stream made again keeps nothing: deleted");
                let _ = self.js.delete_stream(&name).await;
                Err(NatsError::new("probing the advisory stream made again", e))
            }
            // Not a sign of a broken stream (a publish this side may not make, say): unprobed.
            Ok(_) | Err(_) => Ok(None),
        }
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

/// Completes at `at`; never, when there is none.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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
            crate::recorded(|| metrics::counter!("nats_tasks_undeliverable_total").increment(1));
            // The server keeps an unacknowledged message; nobody will take it now. Deleted before
            // the caller hears, so a program that ends then leaves nothing behind.
            let _ = inner.delete(seq).await;
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
