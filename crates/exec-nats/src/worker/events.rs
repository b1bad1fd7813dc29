//! A running node's events on their way to its caller: a bounded buffer the node writes into
//! without ever waiting, and the future, driven beside the run, that publishes them in order.
//!
//! As with the coordinator's bus, a reader (here the publishing future) that falls a whole buffer
//! behind loses the oldest events it had not sent, and says exactly how many in their place: one
//! event [`missed_event`](crate::wire::missed_event)`(n)` before the next it sends. Events are
//! for observers; the run's outcome never waits for them to be read.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use task_core::context::EventSink;
use tokio::sync::Notify;

use super::Shared;
use crate::config::largest_body;
use crate::wire::{Reply, RunEvent, TaskMessage, encode, missed_event};

/// Events of one run kept waiting to be published; past it the oldest go, counted.
pub(super) const EVENTS_KEPT: usize = 1024;

/// Bytes of event text of one run kept waiting to be published; past it the oldest go, counted.
/// A single event longer than this is counted missed at once: it could never be kept.
pub(super) const EVENT_BYTES_KEPT: usize = 8 << 20;

/// The events of one run not published yet.
#[derive(Default)]
struct Ring {
    /// Oldest first, each with its number among the run's events (from 1); `None` at the place of
    /// one too long to keep.
    queue: VecDeque<(u64, Option<Arc<str>>)>,
    /// The text held in `queue`.
    bytes: usize,
    /// Events dropped from the front since the publisher last took one: they came just before
    /// the first in `queue`.
    dropped: u64,
    /// Events broadcast so far.
    broadcast: u64,
    /// The run ended: no event is taken any more.
    closed: bool,
    /// The most events `queue` ever held.
    peak: usize,
}

/// What the publisher finds in the buffer.
enum Next {
    /// Event number `n` (`None`: one that could not be kept), after `dropped` events it never saw.
    Event {
        n: u64,
        text: Option<Arc<str>>,
        dropped: u64,
    },
    /// Nothing yet.
    Empty,
    /// The run ended and everything was taken: `dropped` events at the end it never saw, of
    /// `broadcast` in all.
    Ended { dropped: u64, broadcast: u64 },
}

/// The sink of a running node's events: a bounded buffer, emptied by the publishing future.
pub(super) struct EventBuffer {
    ring: Mutex<Ring>,
    /// Told when an event comes or the run ends.
    ready: Notify,
}

impl EventBuffer {
    fn new() -> Self {
        Self {
            ring: Mutex::default(),
            ready: Notify::new(),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Nothing under the lock can panic half-way.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes no more events; the publisher sends what is kept and ends.
    pub(super) fn close(&self) {
        self.ring().closed = true;
        self.ready.notify_one();
    }

    /// Whether the node broadcast any event.
    pub(super) fn broadcast_any(&self) -> bool {
        self.ring().broadcast > 0
    }

    /// The most events the buffer ever held at once (never above [`EVENTS_KEPT`]).
    #[cfg(test)]
    fn peak(&self) -> usize {
        self.ring().peak
    }

    fn take(&self) -> Next {
        let mut ring = self.ring();
        let dropped = std::mem::take(&mut ring.dropped);
        match ring.queue.pop_front() {
            Some((n, text)) => {
                ring.bytes -= text.as_ref().map_or(0, |t| t.len());
                Next::Event { n, text, dropped }
            }
            None if ring.closed => Next::Ended {
                dropped,
                broadcast: ring.broadcast,
            },
            None => {
                ring.dropped = dropped;
                Next::Empty
            }
        }
    }
}

impl EventSink for EventBuffer {
    /// Never waits: a full buffer drops its oldest event instead, counted.
    fn broadcast(&self, event: Arc<str>) {
        {
            let mut ring = self.ring();
            if ring.closed {
                return;
            }
            ring.broadcast += 1;
            let n = ring.broadcast;
            if event.len() > EVENT_BYTES_KEPT {
                ring.queue.push_back((n, None));
            } else {
                ring.bytes += event.len();
                ring.queue.push_back((n, Some(event)));
            }
            while ring.queue.len() > EVENTS_KEPT || ring.bytes > EVENT_BYTES_KEPT {
                let Some((_, oldest)) = ring.queue.pop_front() else {
                    break;
                };
                ring.bytes -= oldest.as_ref().map_or(0, |t| t.len());
                ring.dropped += 1;
            }
            ring.peak = ring.peak.max(ring.queue.len());
        }
        self.ready.notify_one();
    }
}

/// Publishes what `buffer` takes, in order, until it is closed and empty: `publish(id, text)`
/// sends one event under message id suffix `id` and says whether it went. Events dropped from
/// the buffer, and those whose publish failed, are sent as one [`missed_event`] with their count
/// at their place, before the next event that goes (or at the end).
async fn forward<F, P>(buffer: &EventBuffer, mut publish: P)
where
    P: FnMut(String, String) -> F,
    F: Future<Output = bool>,
{
    let mut missed = 0_u64;
    loop {
        let (n, text) = match buffer.take() {
            Next::Empty => {
                buffer.ready.notified().await;
                continue;
            }
            Next::Ended { dropped, broadcast } => {
                missed += count_missed(dropped);
                if missed > 0 {
                    publish(format!("{}.missed", broadcast + 1), missed_event(missed)).await;
                }
                return;
            }
            Next::Event { n, text, dropped } => {
                missed += count_missed(dropped);
                (n, text)
            }
        };
        let Some(text) = text else {
            missed += count_missed(1);
            continue;
        };
        if missed > 0 && publish(format!("{n}.missed"), missed_event(missed)).await {
            missed = 0;
        }
        if !publish(n.to_string(), text.to_string()).await {
            missed += count_missed(1);
        }
    }
}

/// `count` events were not sent: counted, and passed through.
fn count_missed(count: u64) -> u64 {
    #[cfg(feature = "metrics")]
    if count > 0 {
        crate::recorded(|| metrics::counter!("nats_events_missed_total").increment(count));
    }
    count
}

impl Shared {
    /// The sink of `task`'s node's events, and the future that publishes them to its reply
    /// subject in order (ending once the sink is closed and every event kept is sent), to drive
    /// beside the run. An event's message id (`event.<run>.<n>`, `n` its number among the run's
    /// events) lets the server keep one copy when a redelivered run sends it again.
    pub(super) fn forward_events(
        self: &Arc<Self>,
        task: &TaskMessage,
    ) -> (Arc<EventBuffer>, impl Future<Output = ()> + use<>) {
        let buffer = Arc::new(EventBuffer::new());
        let (shared, subject, run) = (Arc::clone(self), task.reply.clone(), task.run.clone());
        let forwarding = {
            let buffer = Arc::clone(&buffer);
            async move {
                forward(&buffer, |id, event| {
                    let (shared, subject, run) = (&shared, subject.clone(), run.clone());
                    async move {
                        let id = format!("event.{run}.{id}");
                        let reply = Reply::Event(RunEvent { run, event });
                        let Ok(bytes) = encode(&reply) else {
                            return false;
                        };
                        // The stream would refuse it, in an acknowledgement nobody reads.
                        let largest = largest_body(
                            &shared.client,
                            shared.max_message_size,
                            &[("Nats-Msg-Id", &id)],
                        );
                        if bytes.len() > largest {
                            tracing::warn!(id, "an event too large to send");
                            return false;
                        }
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", id.as_str());
                        // Not waiting for the server's acknowledgement: the connection keeps the
                        // order.
                        let sent = shared
                            .js
                            .publish_with_headers(subject, headers, bytes.into());
                        match sent.await {
                            Ok(_) => true,
                            Err(e) => {
                                tracing::warn!(%e, id, "an event was not sent");
                                false
                            }
                        }
                    }
                })
                .await;
            }
        };
        (buffer, forwarding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::missed_count;

    /// What a forwarder published: each event's message id suffix and text.
    type Sent = Arc<Mutex<Vec<(String, String)>>>;

    /// A forwarder whose publishing waits at `gate` before each event, recording what it sends.
    fn gated_forwarder(
        buffer: &Arc<EventBuffer>,
        gate: &Arc<tokio::sync::Semaphore>,
    ) -> (Sent, tokio::task::JoinHandle<()>) {
        let sent = Sent::default();
        let task = tokio::spawn({
            let (buffer, gate, sent) = (Arc::clone(buffer), Arc::clone(gate), Arc::clone(&sent));
            async move {
                forward(&buffer, |id, text| {
                    let (gate, sent) = (Arc::clone(&gate), Arc::clone(&sent));
                    async move {
                        gate.acquire().await.expect("open").forget();
                        sent.lock().unwrap().push((id, text));
                        true
                    }
                })
                .await;
            }
        });
        (sent, task)
    }

    /// A node broadcasting a million events while publishing is stuck holds at most
    /// [`EVENTS_KEPT`] of them; once publishing moves, the first (taken before it stuck), one
    /// event counting exactly the ones dropped, then the last [`EVENTS_KEPT`] go, in order.
    #[tokio::test]
    async fn a_node_far_ahead_of_its_publisher_is_bounded_and_told_exactly_what_was_missed() {
        const N: u64 = 1_000_000;
        let buffer = Arc::new(EventBuffer::new());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let (sent, forwarder) = gated_forwarder(&buffer, &gate);
        buffer.broadcast("1".into());
        // The publisher has taken event 1 and waits at the gate with it.
        while buffer.ring().queue.len() == 1 {
            tokio::task::yield_now().await;
        }
        for i in 2..=N {
            buffer.broadcast(i.to_string().into());
        }
        assert_eq!(
            buffer.peak(),
            EVENTS_KEPT,
            "bounded while publishing is stuck"
        );
        buffer.close();
        buffer.broadcast("after the end".into());
        gate.add_permits(usize::MAX >> 4);
        tokio::time::timeout(std::time::Duration::from_secs(60), forwarder)
            .await
            .expect("the forwarder ends once the run's events are sent")
            .unwrap();
        let sent = sent.lock().unwrap().clone();
        let kept = EVENTS_KEPT as u64;
        let dropped = N - 1 - kept;
        let first_kept = N - kept + 1;
        let mut expected = vec![
            ("1".to_owned(), "1".to_owned()),
            (format!("{first_kept}.missed"), missed_event(dropped)),
        ];
        expected.extend((first_kept..=N).map(|i| (i.to_string(), i.to_string())));
        assert_eq!(sent.len(), expected.len());
        assert_eq!(sent, expected);
        assert_eq!(missed_count(&sent[1].1), Some(dropped));
    }

    /// Events dropped at the end (nothing sent after them) are counted at the end; events too
    /// long to keep, and those whose publish fails, are counted at their place.
    #[tokio::test]
    async fn missed_events_are_counted_where_they_were() {
        let buffer = Arc::new(EventBuffer::new());
        buffer.broadcast("a".into());
        buffer.broadcast("x".repeat(EVENT_BYTES_KEPT + 1).into());
        buffer.broadcast("fails".into());
        buffer.broadcast("b".into());
        buffer.close();
        let sent = Arc::new(Mutex::new(Vec::new()));
        forward(&buffer, |id, text| {
            let sent = Arc::clone(&sent);
            async move {
                if text == "fails" {
                    return false;
                }
                sent.lock().unwrap().push((id, text));
                true
            }
        })
        .await;
        let sent = sent.lock().unwrap().clone();
        let one = missed_event(1);
        let expected = [
            ("1", "a"),
            ("3.missed", &one),
            ("4.missed", &one),
            ("4", "b"),
        ];
        let expected: Vec<_> = expected
            .iter()
            .map(|(id, text)| ((*id).to_owned(), (*text).to_owned()))
            .collect();
        assert_eq!(sent, expected);

        // More than fit, none taken yet: the first kept is preceded by the count of the rest.
        let buffer = Arc::new(EventBuffer::new());
        let many = EVENTS_KEPT as u64 + 5;
        for i in 1..=many {
            buffer.broadcast(i.to_string().into());
        }
        buffer.close();
        let sent = Arc::new(Mutex::new(Vec::new()));
        forward(&buffer, |_, text| {
            let sent = Arc::clone(&sent);
            async move {
                sent.lock().unwrap().push(text);
                true
            }
        })
        .await;
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent[0], missed_event(5));
        assert_eq!(sent[1], "6");
        assert_eq!(sent.len(), EVENTS_KEPT + 1);
    }

    /// Text counts too: a few huge events hold no more than [`EVENT_BYTES_KEPT`].
    #[test]
    fn the_text_kept_is_bounded_too() {
        let buffer = EventBuffer::new();
        let big: Arc<str> = "x".repeat(EVENT_BYTES_KEPT / 3 + 1).into();
        for _ in 0..10 {
            buffer.broadcast(Arc::clone(&big));
        }
        let ring = buffer.ring();
        assert!(ring.bytes <= EVENT_BYTES_KEPT);
        assert_eq!(ring.queue.len(), 2);
        assert_eq!(ring.dropped, 8);
    }
}
