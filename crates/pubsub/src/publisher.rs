//! [`Publisher`]: ordered fan-out to callbacks, streams and one-shot listeners, where publishing
//! never waits for a subscriber.
//!
//! Bounded subscribers (the default) read the same ring of the last messages (a
//! `tokio::sync::broadcast` channel), so a publish writes a message once however many of them
//! there are. A subscriber that falls a whole ring behind has its oldest unread messages
//! overwritten, and reads a [`Missed`] saying exactly how many, never a silent skip. An
//! [unbounded](Buffer::Unbounded) subscriber (and a pending listener) has a queue of its own
//! instead, and misses nothing. Both are written under the one lock that orders publishes, so
//! every subscriber sees one total publish order. Filters run on the subscriber's side, as it
//! reads: no code of a subscriber ever runs on the publishing thread.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use task_core::panic_message;
use tokio::sync::broadcast::{self};
use tokio::sync::{mpsc, oneshot};

use crate::bus::{
    Buffer, Envelope, Filter, IDLE, Inner, PHASE_BITS, Queue, RUNNING, SHUT_DOWN, Shared, Stop,
    SubscriberId, next_id,
};
use crate::defer::defer_drops;
use crate::error::{Error, Kind, Missed, PublishError, Refusal};
use crate::grace::wait_for_callbacks;
use crate::subscription::{Listener, Ring, Source, Subscription};

/// The default buffer of each bounded subscriber: how many messages it may fall behind before it
/// misses some.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The largest capacity a publisher takes ([`Publisher::with_capacity`] clamps to it): the ring
/// of that many messages is allocated when the publisher is made.
pub const MAX_CAPACITY: usize = 1 << 16;

/// How long [`Publisher::shutdown`] waits for callback subscribers to finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Fans messages out to subscribers, in order, and never waits for one.
///
/// - **Order**: every subscriber sees messages in one total publish order.
/// - **Isolation**: [`publish`](Self::publish) never waits for a subscriber, so a slow, stuck or
///   unread subscriber delays neither the publisher nor the other subscribers. A bounded
///   subscriber ([`Buffer::Bounded`], the default) that falls a whole buffer behind misses the
///   oldest messages it had not read and is told exactly how many ([`Missed`]); an unbounded one
///   ([`Buffer::Unbounded`]) never misses a message, and its memory grows with its lag. Each
///   callback subscriber runs on a thread of its own: a callback that blocks or panics stalls
///   only itself (a panic is logged at `warn` and the callback keeps receiving).
/// - **One copy per message**: bounded subscribers read a shared ring of the last `capacity`
///   messages, so publishing to many of them writes each message once.
/// - **Nobody listening costs nothing**: with no subscriber and no listener, a publish is one
///   atomic load; [`has_subscribers`](Self::has_subscribers) lets a caller skip building a
///   message nobody reads.
/// - **Filters** (of filtered subscribers and listeners) run on the subscriber's side, as it
///   reads: a slow filter delays only its own subscriber.
/// - **Listeners** are subscribed when created, so they cannot miss a message published after
///   that, and unsubscribed when they resolve or are dropped.
/// - **Shutdown** refuses later publishes (handing the message back), resolves pending listeners
///   with an error, lets every subscriber drain what was published before it, and waits a bounded
///   grace for callback subscribers to finish.
/// - **No polling**: an idle publisher costs no CPU.
///
/// Cloning a `Publisher` gives another handle to the same bus. Dropping the last handle without
/// [`shutdown`](Self::shutdown) closes the bus: each subscriber is given what was published, then
/// ends, and each callback's thread with it. A callback that holds a handle of its own bus (to
/// publish from it, say) keeps the bus open, and its own thread alive, until `shutdown` or
/// [`unsubscribe`](Self::unsubscribe).
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use pubsub::Publisher;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = Publisher::<String>::new();
/// publisher.start()?;
/// let mut stream = publisher.subscribe_stream()?;
/// let first_long = publisher.listener(|m: &String| m.len() > 3, |m| m.to_uppercase());
///
/// publisher.publish("hi".to_string())?;
/// publisher.publish("hello".to_string())?;
///
/// assert_eq!(first_long.await?, "HELLO");
/// assert_eq!(stream.next().await, Some(Ok("hi".to_string())));
/// publisher.shutdown().await;
/// assert!(publisher.publish("late".to_string()).unwrap_err().is_shut_down());
/// # Ok(())
/// # }
/// ```
pub struct Publisher<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Publisher<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M> fmt::Debug for Publisher<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.inner.lock();
        let phase = match self.inner.phase() {
            IDLE => "idle",
            RUNNING => "running",
            _ => "shut down",
        };
        f.debug_struct("Publisher")
            .field("phase", &phase)
            .field("subscribers", &shared.attached())
            .field("capacity", &self.inner.capacity)
            .finish()
    }
}

impl<M: Clone + Send + 'static> Default for Publisher<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Clone + Send + 'static> Publisher<M> {
    /// A publisher, not yet started, with [`DEFAULT_CAPACITY`] per bounded subscriber.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A publisher, not yet started, whose bounded subscribers may each fall `capacity` messages
    /// (at least 1, at most [`MAX_CAPACITY`]; other values are clamped; rounded up to a power of
    /// two) behind before they miss messages. The ring is allocated now.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            inner: Arc::new(Inner {
                capacity,
                state: AtomicUsize::new(IDLE),
                shared: Mutex::new(Shared {
                    tx: Some(tx),
                    published: 0,
                    stops: HashMap::new(),
                    queues: HashMap::new(),
                    callbacks: HashMap::new(),
                    #[cfg(feature = "metrics")]
                    lag_gauges: (HashMap::new(), 0),
                }),
            }),
        }
    }

    /// Starts taking publishes. Starting a running publisher does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] when the publisher has been shut down; it cannot restart.
    pub fn start(&self) -> Result<(), Error> {
        let shared = self.inner.lock();
        if self.inner.phase() == SHUT_DOWN {
            return Err(Error::new(Kind::ShutDown));
        }
        self.inner.set_state(&shared, RUNNING);
        Ok(())
    }

    /// Whether the publisher takes publishes (started and not shut down).
    pub fn is_running(&self) -> bool {
        self.inner.phase() == RUNNING
    }

    /// Whether the publisher has been shut down (it cannot restart).
    pub fn is_shut_down(&self) -> bool {
        self.inner.phase() == SHUT_DOWN
    }

    /// How far behind each subscriber is, by id, in no particular order: the messages published
    /// since it subscribed that it has not read yet (a filtered one reads every message, to
    /// filter it). A bounded subscriber more than the ring behind (the capacity, rounded up to a
    /// power of two) will be told it missed the oldest. A callback has read a message once it was
    /// given it. Pending listeners are not listed. The dashboard's `/metrics`
    /// serves it as `pubsub_subscriber_lag`; with the `metrics` feature, so does a gauge of that
    /// name for each subscriber, set once per 64 messages published (and to 0 once it is gone).
    /// Those gauges and the `pubsub_missed_messages_total` counters carry the subscriber's id, so
    /// a process that keeps making subscribers makes a series for each: have the recorder drop
    /// series left idle (`metrics_exporter_prometheus::PrometheusBuilder::idle_timeout`), or it
    /// keeps them all.
    ///
    /// ```
    /// let publisher = pubsub::Publisher::<u32>::new();
    /// publisher.start().unwrap();
    /// let unread = publisher.subscribe_stream().unwrap();
    /// (0..3).for_each(|n| publisher.publish(n).unwrap());
    /// assert_eq!(publisher.lags(), vec![(unread.id(), 3)]);
    /// ```
    pub fn lags(&self) -> Vec<(SubscriberId, u64)> {
        let shared = self.inner.lock();
        (shared.lags())
            .map(|(id, lag)| (SubscriberId(id), lag))
            .collect()
    }

    /// How many subscribers (callbacks and streams) and pending listeners are attached.
    pub fn subscriber_count(&self) -> usize {
        self.inner.state.load(Ordering::SeqCst) >> PHASE_BITS
    }

    /// Whether any subscriber or pending listener is attached: when not, a message published now
    /// reaches nobody, and a caller may skip building it. One atomic load.
    pub fn has_subscribers(&self) -> bool {
        self.subscriber_count() > 0
    }

    /// Calls `callback` with every message published from now on, in order, on a thread of its
    /// own, with a [bounded](Buffer::Bounded) buffer: it is given `Err(Missed)` in place of
    /// messages it fell too far behind to read.
    ///
    /// Equivalent to [`subscribe_with`](Self::subscribe_with)`(Buffer::Bounded, callback)`.
    ///
    /// # Errors
    ///
    /// As for [`subscribe_with`](Self::subscribe_with).
    pub fn subscribe<F>(&self, callback: F) -> Result<SubscriberId, Error>
    where
        F: FnMut(Result<M, Missed>) + Send + 'static,
    {
        self.subscribe_with(Buffer::Bounded, callback)
    }

    /// Calls `callback` with every message published from now on, in order, on a thread of its
    /// own (named `pubsub-subscriber-<id>`), so a callback that blocks, never returns or panics
    /// stalls only itself: never the publisher, the other subscribers or an async runtime. No
    /// runtime is needed. A panic in the callback is caught and logged at `warn`; the callback
    /// keeps receiving later messages.
    ///
    /// The thread ends after [`unsubscribe`](Self::unsubscribe) or shutdown, once the callback has
    /// been given what was published before; [`shutdown`](Self::shutdown) waits for it, within a
    /// grace. A callback that never returns keeps its thread for the life of the process (no
    /// thread can be stopped from outside); shutdown stops waiting for it after the grace.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown; [`Error::is_spawn_failure`] when the thread could
    /// not be started.
    pub fn subscribe_with<F>(&self, buffer: Buffer, callback: F) -> Result<SubscriberId, Error>
    where
        F: FnMut(Result<M, Missed>) + Send + 'static,
    {
        self.spawn_callback(buffer, None, callback)
    }

    /// Calls `callback`, as [`subscribe_with`](Self::subscribe_with) does, with the messages
    /// published from now on for which `filter` holds, and only those: a subscriber to a busy
    /// bus that wants a few of its messages (one request's broadcast events, say) is not called
    /// with the rest.
    ///
    /// `filter` runs on the subscriber's thread, on every message as it is read, never on the
    /// publishing thread: a slow filter delays only this subscriber. Its buffer holds every
    /// message until the filter has seen it, so a bounded one that falls a whole buffer behind
    /// misses messages of the bus, matching or not, and is told how many (it cannot know how
    /// many of them would have matched). A filter that panics is taken as not matching (and
    /// logged).
    ///
    /// # Errors
    ///
    /// As for [`subscribe_with`](Self::subscribe_with).
    pub fn subscribe_where<P, F>(
        &self,
        buffer: Buffer,
        filter: P,
        callback: F,
    ) -> Result<SubscriberId, Error>
    where
        P: Fn(&M) -> bool + Send + Sync + 'static,
        F: FnMut(Result<M, Missed>) + Send + 'static,
    {
        self.spawn_callback(buffer, Some(Box::new(filter)), callback)
    }

    /// Subscribes `callback`, fed on a thread of its own.
    fn spawn_callback<F>(
        &self,
        buffer: Buffer,
        filter: Option<Filter<M>>,
        mut callback: F,
    ) -> Result<SubscriberId, Error>
    where
        F: FnMut(Result<M, Missed>) + Send + 'static,
    {
        let (done_tx, done_rx) = oneshot::channel::<()>();
        // Known to shutdown from the moment it is subscribed: a shutdown that follows waits for
        // its thread to deliver what was published before.
        let mut subscription = self.attach(buffer, Some(done_rx))?;
        subscription.filter = filter;
        let id = subscription.id;
        let spawned = std::thread::Builder::new()
            .name(format!("pubsub-subscriber-{id}"))
            .spawn(move || {
                // Dropped when the thread ends, however it ends: shutdown hears of it.
                let _done = done_tx;
                while let Some(item) = futures::executor::block_on(subscription.recv()) {
                    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(item))) {
                        let reason = panic_message(payload.as_ref());
                        tracing::warn!(subscriber = id, %reason, "subscriber panicked; it keeps receiving");
                    }
                }
            });
        if let Err(error) = spawned {
            // The closure was dropped, and the subscription with it: nothing stays subscribed.
            tracing::warn!(subscriber = id, %error, "could not start a callback subscriber's thread");
            self.inner.lock().callbacks.remove(&id);
            return Err(Error::new(Kind::SpawnFailed));
        }
        Ok(SubscriberId(id))
    }

    /// A [`Stream`](futures::Stream) of every message published from now on, in order, with a
    /// [bounded](Buffer::Bounded) buffer. Dropping it unsubscribes. The stream ends after
    /// shutdown, once it has yielded what was published before.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown.
    pub fn subscribe_stream(&self) -> Result<Subscription<M>, Error> {
        self.subscribe_stream_with(Buffer::Bounded)
    }

    /// A [`Stream`](futures::Stream) of every message published from now on, in order, buffered as `buffer` says.
    /// Dropping it unsubscribes. The stream ends after shutdown, once it has yielded what was
    /// published before. An unbounded stream yields only `Ok` items.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown.
    pub fn subscribe_stream_with(&self, buffer: Buffer) -> Result<Subscription<M>, Error> {
        self.attach(buffer, None)
    }

    /// Subscribes, buffered as `buffer` says; a callback subscriber's `done` (closed when its
    /// thread ends) is kept for shutdown under the same lock.
    fn attach(
        &self,
        buffer: Buffer,
        done: Option<oneshot::Receiver<()>>,
    ) -> Result<Subscription<M>, Error> {
        let id = next_id();
        let mut shared = self.inner.lock();
        if self.inner.phase() == SHUT_DOWN {
            return Err(Error::new(Kind::ShutDown));
        }
        let source = match buffer {
            Buffer::Bounded => {
                let Some(tx) = shared.tx.as_ref() else {
                    return Err(Error::new(Kind::ShutDown));
                };
                let rx = tx.subscribe();
                let next_seq = shared.published;
                let stop = Arc::new(Stop::new(next_seq));
                shared.stops.insert(id, Arc::clone(&stop));
                Source::Ring(Ring {
                    rx: Some(rx),
                    waiting: None,
                    stop,
                    next_seq,
                })
            }
            Buffer::Unbounded => Self::add_queue(&mut shared, id, false),
        };
        if let Some(done) = done {
            shared.callbacks.insert(id, done);
        }
        self.inner.recount(&shared);
        Ok(Subscription {
            id,
            source,
            filter: None,
            inner: Arc::downgrade(&self.inner),
        })
    }

    /// A [`Stream`](futures::Stream) of the messages published from now on for which `filter`
    /// holds, in order, buffered as `buffer` says: the stream form of
    /// [`subscribe_where`](Self::subscribe_where), whose `filter` runs as the stream is polled.
    /// Dropping it unsubscribes.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown.
    ///
    /// # Examples
    ///
    /// ```
    /// use futures::StreamExt;
    /// use pubsub::{Buffer, Publisher};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let publisher = Publisher::<u32>::new();
    /// publisher.start()?;
    /// let mut even = publisher.subscribe_stream_where(Buffer::Bounded, |n| n % 2 == 0)?;
    /// for n in 1..=4 {
    ///     publisher.publish(n)?;
    /// }
    /// publisher.shutdown().await;
    /// let seen: Vec<_> = even.by_ref().collect().await;
    /// assert_eq!(seen, [Ok(2), Ok(4)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe_stream_where<P>(
        &self,
        buffer: Buffer,
        filter: P,
    ) -> Result<Subscription<M>, Error>
    where
        P: Fn(&M) -> bool + Send + Sync + 'static,
    {
        let mut subscription = self.subscribe_stream_with(buffer)?;
        subscription.filter = Some(Box::new(filter));
        Ok(subscription)
    }

    /// Adds a queue of its own for subscriber `id` (a pending listener's when `listener`).
    fn add_queue(shared: &mut Shared<M>, id: u64, listener: bool) -> Source<M> {
        let (tx, rx) = mpsc::unbounded_channel();
        let unread = Arc::new(AtomicUsize::new(0));
        let queue = Queue {
            tx,
            unread: Arc::clone(&unread),
            listener,
        };
        shared.queues.insert(id, queue);
        Source::Queue { rx, unread }
    }

    /// Removes a subscriber. Messages published before this call are still delivered to it;
    /// later ones are not. A callback's thread ends once it has been given them; a stream ends
    /// there too (dropping a [`Subscription`] unsubscribes it at once).
    ///
    /// # Errors
    ///
    /// [`Error::is_unknown_subscriber`] when no subscriber of this publisher has that id.
    pub fn unsubscribe(&self, id: SubscriberId) -> Result<(), Error> {
        let mut shared = self.inner.lock();
        if let Some(stop) = shared.stops.remove(&id.0) {
            stop.at.store(shared.published, Ordering::SeqCst);
            stop.waker.wake();
        } else if shared.queues.remove(&id.0).is_none() {
            // Dropping the sender ends the queue after what is in it.
            return Err(Error::new(Kind::UnknownSubscriber(id.0)));
        }
        // A callback's thread ends by itself; it is no longer awaited at shutdown.
        shared.callbacks.remove(&id.0);
        shared.detached(id.0);
        self.inner.recount(&shared);
        Ok(())
    }

    /// A future resolving to `mapping(m)` for the first message `m` published after this call for
    /// which `filter(&m)` holds.
    ///
    /// The listener is subscribed now, before it is first polled, so it cannot miss its message:
    /// until it resolves it queues every message published (its memory grows with them while it
    /// is not polled), and it is unsubscribed when it resolves or is dropped.
    ///
    /// `filter` runs as the listener is polled, on each message in publish order, never on the
    /// publishing thread: a slow filter delays only this listener, and it may call this
    /// publisher.
    ///
    /// The future resolves to an error when the publisher shuts down before a message published
    /// earlier matched ([`Error::is_shut_down`]), or `filter` panics
    /// ([`Error::is_filter_panic`]).
    pub fn listener<T, F, G>(&self, filter: F, mapping: G) -> Listener<M, T>
    where
        F: Fn(&M) -> bool + Send + Sync + 'static,
        G: FnOnce(M) -> T + Send + 'static,
    {
        let id = next_id();
        let mut shared = self.inner.lock();
        let subscription = (self.inner.phase() != SHUT_DOWN).then(|| {
            let source = Self::add_queue(&mut shared, id, true);
            self.inner.recount(&shared);
            Subscription {
                id,
                source,
                filter: None,
                inner: Arc::downgrade(&self.inner),
            }
        });
        drop(shared);
        Listener {
            subscription,
            filter: Box::new(filter),
            mapping: Some(Box::new(mapping)),
        }
    }

    /// Publishes `message` to every subscriber and to the listeners whose filter it matches.
    ///
    /// Never waits for a subscriber: it writes the message for every subscriber to read and
    /// returns, having run its `Clone` once per unbounded subscriber (under the publisher's
    /// lock) and the `Drop` of a copy it overwrote unread (once the lock is released). With
    /// nobody subscribed it is one atomic load.
    ///
    /// # Errors
    ///
    /// When the publisher is not started or is shut down; the error hands the message back
    /// ([`PublishError::into_inner`]).
    pub fn publish(&self, message: M) -> Result<(), PublishError<M>> {
        // Running with nobody attached: nobody to write it for.
        if self.inner.state.load(Ordering::SeqCst) == RUNNING {
            return Ok(());
        }
        // Dropped after the lock, with what the ring let go of meanwhile.
        let _later = defer_drops();
        let mut shared = self.inner.lock();
        match self.inner.phase() {
            RUNNING => {}
            IDLE => return Err(PublishError::new(message, Refusal::NotStarted)),
            _ => return Err(PublishError::new(message, Refusal::ShutDown)),
        }
        let leftover = self.send(&mut shared, message);
        drop(shared);
        drop(leftover);
        Ok(())
    }

    /// Writes the message for every subscriber. Runs under the lock, beside a [`defer_drops`]
    /// guard; returns the message when the ring did not take it.
    fn send(&self, shared: &mut Shared<M>, message: M) -> Option<M> {
        for queue in shared.queues.values() {
            queue.offer(&message);
        }
        let leftover = match &shared.tx {
            Some(tx) if !shared.stops.is_empty() => {
                let seq = shared.published;
                shared.published += 1;
                // An error only says no receiver is left.
                let _ = tx.send(Envelope::new(seq, message));
                None
            }
            _ => Some(message),
        };
        #[cfg(feature = "metrics")]
        shared.sample_lags();
        leftover
    }

    /// [`shutdown_with_grace`](Self::shutdown_with_grace) with [`DEFAULT_SHUTDOWN_GRACE`].
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(DEFAULT_SHUTDOWN_GRACE).await;
    }

    /// Stops the publisher: refuses new publishes, lets every subscriber (and pending listener)
    /// drain the messages published before this call, and waits for callback
    /// subscribers to finish them, for at most `grace`. A callback still busy then is logged at
    /// `warn` and left to finish on its own thread; this returns. A `grace` too long to represent
    /// as a deadline ([`Duration::MAX`]) means no deadline.
    ///
    /// It never blocks the async runtime it is awaited on. Calling it again returns at once. Do
    /// not await it inside a callback subscriber of this publisher: it would wait `grace` for
    /// itself.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let deadline = task_core::deadline_after(Instant::now(), grace);
        let inner = &self.inner;
        let (callbacks, tx, queues) = {
            let mut shared = inner.lock();
            // Nothing stays attached: each subscriber's stream ends once drained.
            shared.stops.clear();
            shared.detached_all();
            let taken = (
                std::mem::take(&mut shared.callbacks),
                shared.tx.take(),
                std::mem::take(&mut shared.queues),
            );
            inner.set_state(&shared, SHUT_DOWN);
            taken
        };
        // Dropping every sender closes the ring and the queues: subscribers read what is left,
        // then stop.
        drop(tx);
        drop(queues);
        wait_for_callbacks(callbacks, deadline).await;
    }
}
