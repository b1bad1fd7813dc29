//! The server's advisories of tasks that reached their last delivery unanswered, as the
//! submitting side reads them: from the stream that keeps them, each once, in order, however
//! often the connection goes and comes back.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::Ordered;
use futures::StreamExt;
use task_core::TaskError;
use tokio::sync::Notify;

use crate::client::Inner;
use crate::config::NatsError;

/// Reads the advisories a stream keeps after a sequence, each once, in order. Its ordered
/// consumer is made again after each reconnection, from the last advisory read: a pull the
/// server lost while this side was away would otherwise be noticed only after two missed
/// heartbeats (half a minute), and an advisory sent meanwhile read that late.
pub(crate) struct Advisories {
    stream: jetstream::stream::Stream,
    subject: String,
    messages: Option<Ordered>,
    /// The sequence of the last advisory read; at first, of the last one kept from before the
    /// start. Those are about earlier tasks, whose sequences a task of this side may have taken
    /// since (the task stream made again): never read as this side's.
    last: u64,
    /// Told by the connection's watch when the connection is back.
    reconnected: Arc<Notify>,
}

impl Advisories {
    /// Reads what `stream` keeps on `subject` from now on.
    pub(crate) async fn start(
        stream: jetstream::stream::Stream,
        subject: String,
        reconnected: Arc<Notify>,
    ) -> Result<Self, NatsError> {
        let last = stream.cached_info().state.last_sequence;
        let messages = Some(reader(&stream, &subject, last).await?);
        Ok(Self {
            stream,
            subject,
            messages,
            last,
            reconnected,
        })
    }

    /// The next advisory.
    async fn next(&mut self) -> jetstream::Message {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match reader(&self.stream, &self.subject, self.last).await {
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
                // The consumer makes itself again when it must; an error of one pull passes.
                Some(Err(e)) => tracing::debug!(error = %e, "reading the advisories"),
                None => {
                    self.messages = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// An ordered consumer of the advisories `stream` keeps on `subject` after sequence `last`.
async fn reader(
    stream: &jetstream::stream::Stream,
    subject: &str,
    last: u64,
) -> Result<Ordered, NatsError> {
    let context = "reading the delivery advisories";
    let config = jetstream::consumer::pull::OrderedConfig {
        deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: last + 1,
        },
        filter_subject: subject.to_owned(),
        ..Default::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| NatsError::new(context, e))?;
    consumer
        .messages()
        .await
        .map_err(|e| NatsError::new(context, e))
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
