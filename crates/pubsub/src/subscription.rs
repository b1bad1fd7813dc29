//! The subscriber's side: [`Subscription`], a stream of messages, and [`Listener`], a future of
//! the first matching one.

use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::mpsc;
use tokio_util::sync::ReusableBoxFuture;

use crate::bus::{Buffer, Envelope, Filter, Inner, Stop, SubscriberId};
use crate::defer::defer_drops;
use crate::error::{Error, Kind, Missed};

pub(crate) type Received<M> = (
    Result<Envelope<M>, RecvError>,
    broadcast::Receiver<Envelope<M>>,
);

/// Receives the next message, handing the receiver back, so a stream can keep the receive in a
/// reusable box between polls.
pub(crate) async fn recv_owned<M: Clone>(mut rx: broadcast::Receiver<Envelope<M>>) -> Received<M> {
    let result = rx.recv().await;
    (result, rx)
}

/// A bounded subscriber's place in the shared ring.
pub(crate) struct Ring<M> {
    /// The receiver, while no receive waits for a message; `None` while one waits (it owns the
    /// receiver then) and once the stream ended.
    pub(crate) rx: Option<broadcast::Receiver<Envelope<M>>>,
    /// The receive that waits for the next message when none was queued, under way while `rx`
    /// is `None`. Boxed once and reused: a subscriber that keeps up reads queued messages
    /// without it.
    pub(crate) waiting: Option<ReusableBoxFuture<'static, Received<M>>>,
    pub(crate) stop: Arc<Stop>,
    /// The number of the next message it should read.
    pub(crate) next_seq: u64,
}

impl<M> Ring<M> {
    /// Drops the receiver: the stream yields nothing more. The ring drops the messages this
    /// subscriber was the last to leave unread as its receiver goes, under locks of the ring's
    /// own that a publish takes too: they are let go of, and dropped once the receiver is gone.
    pub(crate) fn end(&mut self) {
        let _later = defer_drops();
        self.rx = None;
        self.waiting = None;
    }
}

impl<M: Clone + Send + 'static> Ring<M> {
    pub(crate) fn poll_item(
        &mut self,
        id: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<M, Missed>>> {
        // Registered before `at` is read: an unsubscribe after that wakes this poll's task.
        self.stop.waker.register(cx.waker());
        loop {
            let stop_at = self.stop.at.load(Ordering::SeqCst);
            if self.next_seq >= stop_at {
                // Unsubscribed, and everything published before was read (or missed).
                self.end();
                return Poll::Ready(None);
            }
            let result = if let Some(rx) = self.rx.as_mut() {
                // A message already queued is read without a future.
                match rx.try_recv() {
                    Ok(envelope) => Ok(envelope),
                    Err(TryRecvError::Empty) => {
                        let Some(rx) = self.rx.take() else {
                            return Poll::Ready(None);
                        };
                        match self.waiting.as_mut() {
                            Some(waiting) => waiting.set(recv_owned(rx)),
                            None => self.waiting = Some(ReusableBoxFuture::new(recv_owned(rx))),
                        }
                        continue;
                    }
                    Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                }
            } else {
                // No receiver at hand: a receive is under way, or the stream ended.
                let Some(waiting) = self.waiting.as_mut() else {
                    return Poll::Ready(None);
                };
                let (result, rx) = std::task::ready!(waiting.poll(cx));
                self.rx = Some(rx);
                result
            };
            // Read again: an unsubscribe that came while this receive was under way stores `at`
            // before any later message is published, so the message received shows it.
            let stop_at = self.stop.at.load(Ordering::SeqCst);
            match result {
                Ok(envelope) if envelope.seq >= stop_at => {
                    // Unsubscribed: what was published before arrived; this one does not.
                    self.end();
                    return Poll::Ready(None);
                }
                Ok(envelope) => {
                    self.next_seq = envelope.seq + 1;
                    self.stop.read.store(self.next_seq, Ordering::Relaxed);
                    // `None`: its `Clone` panicked for this subscriber.
                    let message = envelope.take().ok_or(Missed::unclonable());
                    return Poll::Ready(Some(message));
                }
                Err(RecvError::Closed) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Err(RecvError::Lagged(missed)) => {
                    // Only messages published before an unsubscribe were meant for it.
                    let meant = stop_at.saturating_sub(self.next_seq).min(missed);
                    self.next_seq = self.next_seq.saturating_add(missed);
                    self.stop.read.store(self.next_seq, Ordering::Relaxed);
                    if meant > 0 {
                        tracing::debug!(
                            subscriber = id,
                            missed = meant,
                            "subscriber missed messages"
                        );
                        return Poll::Ready(Some(Err(Missed::new(meant))));
                    }
                }
            }
        }
    }
}

pub(crate) enum Source<M> {
    Ring(Ring<M>),
    Queue {
        rx: mpsc::UnboundedReceiver<Option<M>>,
        /// Messages queued and not read yet, shared with the publisher.
        unread: Arc<AtomicUsize>,
    },
}

/// Whether `filter` takes `message`; a filter that panics does not (logged).
fn takes<M>(filter: &Filter<M>, message: &M, id: u64) -> Result<bool, ()> {
    catch_unwind(AssertUnwindSafe(|| filter(message))).map_err(|payload| {
        let reason = task_core::panic_message(payload.as_ref());
        tracing::warn!(subscriber = id, %reason, "subscriber filter panicked");
    })
}

/// A stream of the messages published after it was created (every one, or those its filter
/// takes), each as `Ok`, or `Err(Missed)` in place of the messages a bounded subscriber fell too
/// far behind to read. Dropping it unsubscribes.
///
/// Made by [`Publisher::subscribe_stream`](crate::Publisher::subscribe_stream),
/// [`Publisher::subscribe_stream_with`](crate::Publisher::subscribe_stream_with) and
/// [`Publisher::subscribe_stream_where`](crate::Publisher::subscribe_stream_where).
pub struct Subscription<M> {
    pub(crate) id: u64,
    pub(crate) source: Source<M>,
    /// Which messages it yields (all when `None`), asked as it reads each one.
    pub(crate) filter: Option<Filter<M>>,
    pub(crate) inner: Weak<Inner<M>>,
}

impl<M> Subscription<M> {
    /// This subscriber's id.
    pub fn id(&self) -> SubscriberId {
        SubscriberId(self.id)
    }
}

impl<M: Clone + Send + 'static> Subscription<M> {
    /// The next message (or how many were missed in its place), or `None` once the publisher is
    /// shut down or this subscriber unsubscribed, and what was published before is drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<Result<M, Missed>> {
        poll_fn(|cx| self.poll_item(cx)).await
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<M, Missed>>> {
        let polled = loop {
            let polled = self.poll_source(cx);
            match (&polled, &self.filter) {
                (Poll::Ready(Some(Ok(message))), Some(filter))
                    if takes(filter, message, self.id) != Ok(true) => {}
                _ => break polled,
            }
        };
        #[cfg(feature = "metrics")]
        if let Poll::Ready(Some(Err(missed))) = &polled {
            crate::bus::recorded(|| {
                metrics::counter!("pubsub_missed_messages_total", "subscriber" => self.id().to_string())
                    .increment(missed.count());
            });
        }
        polled
    }

    fn poll_source(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<M, Missed>>> {
        match &mut self.source {
            Source::Ring(ring) => ring.poll_item(self.id, cx),
            Source::Queue { rx, unread } => {
                let polled = std::task::ready!(rx.poll_recv(cx));
                if polled.is_some() {
                    unread.fetch_sub(1, Ordering::SeqCst);
                }
                // `None` in the queue: the message's `Clone` panicked for this subscriber.
                Poll::Ready(polled.map(|message| message.ok_or(Missed::unclonable())))
            }
        }
    }
}

impl<M: Clone + Send + 'static> Stream for Subscription<M> {
    type Item = Result<M, Missed>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_item(cx)
    }
}

impl<M> Drop for Subscription<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut shared = inner.lock();
            let removed = match self.source {
                Source::Ring(_) => shared.stops.remove(&self.id).is_some(),
                Source::Queue { .. } => shared.queues.remove(&self.id).is_some(),
            };
            if removed {
                shared.detached(self.id);
                inner.recount(&shared);
            }
        }
        if let Source::Ring(ring) = &mut self.source {
            ring.end();
        }
    }
}

impl<M> fmt::Debug for Subscription<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buffer = match self.source {
            Source::Ring(_) => Buffer::Bounded,
            Source::Queue { .. } => Buffer::Unbounded,
        };
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("buffer", &buffer)
            .field("filtered", &self.filter.is_some())
            .finish()
    }
}

pub(crate) type Mapping<M, T> = Box<dyn FnOnce(M) -> T + Send>;

/// A future resolving to the first matching message, mapped. Dropping it unsubscribes.
///
/// Made by [`Publisher::listener`](crate::Publisher::listener).
pub struct Listener<M, T> {
    /// Its own queue of every message published since it was made; `None` when it was made
    /// after shutdown.
    pub(crate) subscription: Option<Subscription<M>>,
    pub(crate) filter: Filter<M>,
    pub(crate) mapping: Option<Mapping<M, T>>,
}

impl<M: Clone + Send + 'static, T> Future for Listener<M, T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let resolved = loop {
            let Some(subscription) = this.subscription.as_mut() else {
                break Err(Error::new(Kind::ShutDown));
            };
            let message = match std::task::ready!(subscription.poll_source(cx)) {
                Some(Ok(message)) => message,
                // A message whose `Clone` panicked (logged): it cannot be matched.
                Some(Err(_)) => continue,
                None => break Err(Error::new(Kind::ShutDown)),
            };
            match takes(&this.filter, &message, subscription.id) {
                Ok(true) => break Ok(message),
                Ok(false) => {}
                Err(()) => break Err(Error::new(Kind::FilterPanicked)),
            }
        };
        // Resolved: it unsubscribes now, not when dropped.
        this.subscription = None;
        let mapping = this.mapping.take();
        Poll::Ready(resolved.and_then(|message| match mapping {
            Some(mapping) => Ok(mapping(message)),
            None => Err(Error::new(Kind::ShutDown)),
        }))
    }
}

impl<M, T> fmt::Debug for Listener<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.subscription.as_ref().map(|s| s.id);
        f.debug_struct("Listener").field("id", &id).finish()
    }
}
