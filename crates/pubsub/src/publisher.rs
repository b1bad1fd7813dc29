//! [`Publisher`]: ordered fan-out to callbacks, streams and one-shot listeners, where publishing
//! never waits for a subscriber.
//!
//! Bounded subscribers (the default) read the same ring of the last messages (a
//! `tokio::sync::broadcast` channel), so a publish writes a message once however many of them
//! there are. A subscriber that falls a whole ring behind has its oldest unread messages
//! overwritten, and reads a [`Missed`] saying exactly how many, never a silent skip. An
//! [unbounded](Buffer::Unbounded) subscriber has a queue of its own instead, and misses nothing.
//! Both are written under the one lock that orders publishes, so every subscriber sees one total
//! publish order.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak, mpsc as std_mpsc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use futures::task::AtomicWaker;
use task_core::panic_message;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::ReusableBoxFuture;

use crate::error::{Error, Kind, Missed, PublishError, Refusal};

/// The default buffer of each bounded subscriber: how many messages it may fall behind before it
/// misses some.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The largest capacity a publisher takes ([`Publisher::with_capacity`] clamps to it): the ring
/// of that many messages is allocated when the publisher is made.
pub const MAX_CAPACITY: usize = 1 << 16;

/// How long [`Publisher::shutdown`] waits for callback subscribers to finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Subscriber and listener ids, unique in the process: an id of one publisher never names a
/// subscriber of another.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Identifies a subscriber, to [`Publisher::unsubscribe`] it. Unique in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(u64);

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscriber-{}", self.0)
    }
}

/// How a subscriber buffers the messages it has not read yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Buffer {
    /// The publisher's shared ring of its last `capacity` messages (rounded up to a power of
    /// two). A subscriber that falls a whole ring behind misses the oldest messages it had not
    /// read and is told how many ([`Missed`]). Memory is bounded; publishing writes each message
    /// once for all bounded subscribers.
    #[default]
    Bounded,
    /// A queue of the subscriber's own: it never misses a message, and its memory grows with its
    /// lag (a subscriber that stops reading holds every message published since). Each message is
    /// cloned into it.
    Unbounded,
}

/// Phases, in the low bits of [`Inner::state`].
const IDLE: usize = 0;
const RUNNING: usize = 1;
const SHUT_DOWN: usize = 2;
const PHASE_BITS: u32 = 2;
const PHASE_MASK: usize = (1 << PHASE_BITS) - 1;

/// Where a bounded subscriber stops reading the ring.
struct Stop {
    /// The first message number it must not yield (`u64::MAX` until unsubscribed).
    at: AtomicU64,
    /// Woken by unsubscribe: a subscriber that has read everything before `at` ends then, with
    /// no later message needed to tell it.
    waker: AtomicWaker,
}

impl Stop {
    fn new() -> Self {
        Self {
            at: AtomicU64::new(u64::MAX),
            waker: AtomicWaker::new(),
        }
    }
}

/// A message on the ring, numbered in publish order.
#[derive(Clone)]
struct Envelope<M> {
    seq: u64,
    message: M,
}

struct Shared<M> {
    /// `None` after shutdown; dropping it ends every bounded subscriber's stream once drained.
    tx: Option<broadcast::Sender<Envelope<M>>>,
    /// Messages written to the ring so far; the next one's number.
    published: u64,
    /// Every bounded subscriber (a callback reads a stream of its own), with where it stops.
    stops: HashMap<u64, Arc<Stop>>,
    /// Every unbounded subscriber's queue. Removing it ends the stream once drained.
    queues: HashMap<u64, mpsc::UnboundedSender<M>>,
    /// Callback subscribers' threads, each closing its channel when it ends; awaited at shutdown.
    callbacks: HashMap<u64, oneshot::Receiver<()>>,
    listeners: HashMap<u64, ListenerSlot<M>>,
}

impl<M> Shared<M> {
    fn attached(&self) -> usize {
        self.stops.len() + self.queues.len() + self.listeners.len()
    }
}

type Filter<M> = Box<dyn Fn(&M) -> bool + Send + Sync>;

struct ListenerSlot<M> {
    filter: Filter<M>,
    tx: oneshot::Sender<Result<M, Error>>,
}

struct Inner<M> {
    capacity: usize,
    /// The phase in the low bits, the number of subscribers and listeners above: a publish with
    /// nobody to read it reads this and nothing else. Written only under `shared`'s lock.
    state: AtomicUsize,
    /// Everything a publish, a subscribe and shutdown change. A publish writes every subscriber's
    /// buffer under it, so every subscriber sees one total order; it is never held across an
    /// await, and no user code but listener filters runs under it.
    shared: Mutex<Shared<M>>,
}

impl<M> Inner<M> {
    fn lock(&self) -> MutexGuard<'_, Shared<M>> {
        // A panic never happens while the lock is held (user code under it is caught), so a
        // poisoned lock still holds consistent data.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn phase(&self) -> usize {
        self.state.load(Ordering::SeqCst) & PHASE_MASK
    }

    /// Publishes the phase and the number attached; called under the lock after every change.
    fn set_state(&self, shared: &Shared<M>, phase: usize) {
        self.state
            .store((shared.attached() << PHASE_BITS) | phase, Ordering::SeqCst);
    }

    /// Called under the lock after subscribers or listeners came or went.
    fn recount(&self, shared: &Shared<M>) {
        self.set_state(shared, self.phase());
    }
}

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
/// - **Listeners** are subscribed when created, so they cannot miss a message published after
///   that, and unsubscribed when they resolve or are dropped.
/// - **Shutdown** refuses later publishes (handing the message back), resolves pending listeners
///   with an error, lets every subscriber drain what was published before it, and waits a bounded
///   grace for callback subscribers to finish.
/// - **No polling**: an idle publisher costs no CPU.
///
/// Cloning a `Publisher` gives another handle to the same bus.
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
            .field("subscribers", &(shared.stops.len() + shared.queues.len()))
            .field("listeners", &shared.listeners.len())
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
                    listeners: HashMap::new(),
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
    /// grace.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown; [`Error::is_spawn_failure`] when the thread could
    /// not be started.
    pub fn subscribe_with<F>(&self, buffer: Buffer, mut callback: F) -> Result<SubscriberId, Error>
    where
        F: FnMut(Result<M, Missed>) + Send + 'static,
    {
        let mut subscription = self.subscribe_stream_with(buffer)?;
        let id = subscription.id;
        let (done_tx, done_rx) = oneshot::channel::<()>();
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
            // The closure, and the subscription in it, were dropped: nothing stays subscribed.
            tracing::warn!(subscriber = id, %error, "could not start a callback subscriber's thread");
            return Err(Error::new(Kind::SpawnFailed));
        }
        let mut shared = self.inner.lock();
        // Still subscribed (not unsubscribed or shut down in between): shutdown waits for it.
        if shared.stops.contains_key(&id) || shared.queues.contains_key(&id) {
            shared.callbacks.insert(id, done_rx);
        }
        Ok(SubscriberId(id))
    }

    /// A [`Stream`] of every message published from now on, in order, with a
    /// [bounded](Buffer::Bounded) buffer. Dropping it unsubscribes. The stream ends after
    /// shutdown, once it has yielded what was published before.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown.
    pub fn subscribe_stream(&self) -> Result<Subscription<M>, Error> {
        self.subscribe_stream_with(Buffer::Bounded)
    }

    /// A [`Stream`] of every message published from now on, in order, buffered as `buffer` says.
    /// Dropping it unsubscribes. The stream ends after shutdown, once it has yielded what was
    /// published before. An unbounded stream yields only `Ok` items.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown.
    pub fn subscribe_stream_with(&self, buffer: Buffer) -> Result<Subscription<M>, Error> {
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
                let stop = Arc::new(Stop::new());
                let next_seq = shared.published;
                shared.stops.insert(id, Arc::clone(&stop));
                Source::Ring(Ring {
                    rx: Some(rx),
                    waiting: None,
                    stop,
                    next_seq,
                })
            }
            Buffer::Unbounded => {
                let (tx, rx) = mpsc::unbounded_channel();
                shared.queues.insert(id, tx);
                Source::Queue(rx)
            }
        };
        self.inner.recount(&shared);
        Ok(Subscription {
            id,
            source,
            inner: Arc::downgrade(&self.inner),
        })
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
        self.inner.recount(&shared);
        Ok(())
    }

    /// A future resolving to `mapping(m)` for the first message `m` published after this call for
    /// which `filter(&m)` holds.
    ///
    /// The listener is subscribed now, before it is first polled, so it cannot miss its message;
    /// it is unsubscribed when it resolves or is dropped.
    ///
    /// `filter` runs on the publishing thread, inside [`publish`](Self::publish) and under the
    /// lock that orders publishes, so that the listener gets the first match in publish order:
    /// it must be quick, must not block, and must not call this publisher (publish, subscribe,
    /// unsubscribe, make or drop a listener or subscription of it): that deadlocks. Every publish
    /// waits for it.
    ///
    /// The future resolves to an error when the publisher shuts down first
    /// ([`Error::is_shut_down`]) or `filter` panics ([`Error::is_filter_panic`]).
    pub fn listener<T, F, G>(&self, filter: F, mapping: G) -> Listener<M, T>
    where
        F: Fn(&M) -> bool + Send + Sync + 'static,
        G: FnOnce(M) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let id = next_id();
        let mut shared = self.inner.lock();
        if self.inner.phase() == SHUT_DOWN {
            let _ = tx.send(Err(Error::new(Kind::ShutDown)));
        } else {
            shared.listeners.insert(
                id,
                ListenerSlot {
                    filter: Box::new(filter),
                    tx,
                },
            );
            self.inner.recount(&shared);
        }
        drop(shared);
        Listener {
            id,
            rx,
            mapping: Some(Box::new(mapping)),
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Publishes `message` to every subscriber and to the listeners whose filter it matches.
    ///
    /// Never waits for a subscriber: it writes the message for every subscriber to read and
    /// returns. With nobody subscribed it is one atomic load.
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
        let mut shared = self.inner.lock();
        match self.inner.phase() {
            RUNNING => {}
            IDLE => return Err(PublishError::new(message, Refusal::NotStarted)),
            _ => return Err(PublishError::new(message, Refusal::ShutDown)),
        }
        self.send(&mut shared, message);
        Ok(())
    }

    /// Writes the message for every subscriber and hands it to the matching listeners. Runs
    /// under the lock.
    fn send(&self, shared: &mut Shared<M>, message: M) {
        if !shared.listeners.is_empty() {
            let before = shared.listeners.len();
            deliver_to_listeners(&mut shared.listeners, &message);
            if shared.listeners.len() != before {
                self.inner.recount(shared);
            }
        }
        if !shared.queues.is_empty() {
            // A queue whose receiver is gone is being dropped; its subscription removes it.
            for queue in shared.queues.values() {
                let _ = queue.send(message.clone());
            }
        }
        if !shared.stops.is_empty()
            && let Some(tx) = &shared.tx
        {
            let seq = shared.published;
            shared.published += 1;
            // An error only says no receiver is left.
            let _ = tx.send(Envelope { seq, message });
        }
    }

    /// [`shutdown_with_grace`](Self::shutdown_with_grace) with [`DEFAULT_SHUTDOWN_GRACE`].
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(DEFAULT_SHUTDOWN_GRACE).await;
    }

    /// Stops the publisher: refuses new publishes, resolves pending listeners with an error, lets
    /// every subscriber drain the messages published before this call, and waits for callback
    /// subscribers to finish them, for at most `grace`. A callback still busy then is logged at
    /// `warn` and left to finish on its own thread; this returns. A `grace` too long to represent
    /// as a deadline ([`Duration::MAX`]) means no deadline.
    ///
    /// It never blocks the async runtime it is awaited on. Calling it again returns at once. Do
    /// not await it inside a callback subscriber of this publisher: it would wait `grace` for
    /// itself.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        let deadline = Instant::now().checked_add(grace);
        let inner = &self.inner;
        let (callbacks, listeners, tx, queues) = {
            let mut shared = inner.lock();
            // Nothing stays attached: each subscriber's stream ends once drained.
            shared.stops.clear();
            let taken = (
                std::mem::take(&mut shared.callbacks),
                std::mem::take(&mut shared.listeners),
                shared.tx.take(),
                std::mem::take(&mut shared.queues),
            );
            inner.set_state(&shared, SHUT_DOWN);
            taken
        };
        for (_, slot) in listeners {
            let _ = slot.tx.send(Err(Error::new(Kind::ShutDown)));
        }
        // Dropping every sender closes the ring and the queues: subscribers read what is left,
        // then stop.
        drop(tx);
        drop(queues);
        wait_for_callbacks(callbacks, deadline).await;
    }
}

/// Waits until every callback thread has ended or `deadline` passed, without blocking the
/// runtime: each thread closes its channel when it ends, and a timer thread fires at the deadline.
async fn wait_for_callbacks(
    callbacks: HashMap<u64, oneshot::Receiver<()>>,
    deadline: Option<Instant>,
) {
    if callbacks.is_empty() {
        return;
    }
    let mut pending: Vec<(u64, oneshot::Receiver<()>)> = callbacks.into_iter().collect();
    // Dropping `_cancel` ends the timer thread early when every callback finished first.
    let (_cancel, mut timer) = match deadline {
        Some(deadline) => match start_timer(deadline) {
            Some((cancel, timer)) => (Some(cancel), Some(timer)),
            None => {
                // No timer: waiting could last forever, which the grace forbids.
                for (id, _) in &pending {
                    tracing::warn!(
                        subscriber = id,
                        "no timer for the shutdown grace; callback subscriber left to finish on its own"
                    );
                }
                return;
            }
        },
        None => (None, None),
    };
    poll_fn(|cx| {
        pending.retain_mut(|(_, done)| Pin::new(done).poll(cx).is_pending());
        if pending.is_empty() {
            return Poll::Ready(());
        }
        match timer.as_mut() {
            Some(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    })
    .await;
    for (id, _) in pending {
        tracing::warn!(
            subscriber = id,
            "callback subscriber still busy when the shutdown grace ended; left to finish on its own"
        );
    }
}

/// A thread that sends on the returned channel at `deadline`, unless the returned sender is
/// dropped first. `None` when the thread could not start.
fn start_timer(deadline: Instant) -> Option<(std_mpsc::Sender<()>, oneshot::Receiver<()>)> {
    let (cancel_tx, cancel_rx) = std_mpsc::channel::<()>();
    let (fire_tx, fire_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("pubsub-shutdown-grace".into())
        .spawn(move || {
            let wait = deadline.saturating_duration_since(Instant::now());
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = cancel_rx.recv_timeout(wait) {
                let _ = fire_tx.send(());
            }
        })
        .ok()?;
    Some((cancel_tx, fire_rx))
}

fn deliver_to_listeners<M: Clone>(listeners: &mut HashMap<u64, ListenerSlot<M>>, message: &M) {
    let mut fired = Vec::new();
    for (&id, slot) in listeners.iter() {
        match catch_unwind(AssertUnwindSafe(|| (slot.filter)(message))) {
            Ok(true) => fired.push((id, Ok(()))),
            Ok(false) => {}
            Err(payload) => {
                let reason = panic_message(payload.as_ref());
                tracing::warn!(listener = id, %reason, "listener filter panicked; listener removed");
                fired.push((id, Err(Error::new(Kind::FilterPanicked))));
            }
        }
    }
    for (id, result) in fired {
        if let Some(slot) = listeners.remove(&id) {
            let _ = slot.tx.send(result.map(|()| message.clone()));
        }
    }
}

type Received<M> = (
    Result<Envelope<M>, RecvError>,
    broadcast::Receiver<Envelope<M>>,
);

/// Receives the next message, handing the receiver back, so a stream can keep the receive in a
/// reusable box between polls.
async fn recv_owned<M: Clone>(mut rx: broadcast::Receiver<Envelope<M>>) -> Received<M> {
    let result = rx.recv().await;
    (result, rx)
}

/// A bounded subscriber's place in the shared ring.
struct Ring<M> {
    /// The receiver, while no receive waits for a message; `None` while one waits (it owns the
    /// receiver then) and once the stream ended.
    rx: Option<broadcast::Receiver<Envelope<M>>>,
    /// The receive that waits for the next message when none was queued, under way while `rx`
    /// is `None`. Boxed once and reused: a subscriber that keeps up reads queued messages
    /// without it.
    waiting: Option<ReusableBoxFuture<'static, Received<M>>>,
    stop: Arc<Stop>,
    /// The number of the next message it should read.
    next_seq: u64,
}

impl<M> Ring<M> {
    /// Drops the receiver: the stream yields nothing more.
    fn end(&mut self) {
        self.rx = None;
        self.waiting = None;
    }
}

impl<M: Clone + Send + 'static> Ring<M> {
    fn poll_item(&mut self, id: u64, cx: &mut Context<'_>) -> Poll<Option<Result<M, Missed>>> {
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
            match result {
                Ok(envelope) if envelope.seq >= stop_at => {
                    // Unsubscribed: what was published before arrived; this one does not.
                    self.end();
                    return Poll::Ready(None);
                }
                Ok(envelope) => {
                    self.next_seq = envelope.seq + 1;
                    return Poll::Ready(Some(Ok(envelope.message)));
                }
                Err(RecvError::Closed) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Err(RecvError::Lagged(missed)) => {
                    // Only messages published before an unsubscribe were meant for it.
                    let meant = stop_at.saturating_sub(self.next_seq).min(missed);
                    self.next_seq = self.next_seq.saturating_add(missed);
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

enum Source<M> {
    Ring(Ring<M>),
    Queue(mpsc::UnboundedReceiver<M>),
}

/// A stream of every message published after it was created, each as `Ok`, or `Err(Missed)` in
/// place of the messages a bounded subscriber fell too far behind to read. Dropping it
/// unsubscribes.
///
/// Made by [`Publisher::subscribe_stream`] and [`Publisher::subscribe_stream_with`].
pub struct Subscription<M> {
    id: u64,
    source: Source<M>,
    inner: Weak<Inner<M>>,
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
        match &mut self.source {
            Source::Ring(ring) => ring.poll_item(self.id, cx),
            Source::Queue(rx) => rx.poll_recv(cx).map(|item| item.map(Ok)),
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
                Source::Queue(_) => shared.queues.remove(&self.id).is_some(),
            };
            if removed {
                inner.recount(&shared);
            }
        }
    }
}

impl<M> fmt::Debug for Subscription<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buffer = match self.source {
            Source::Ring(_) => Buffer::Bounded,
            Source::Queue(_) => Buffer::Unbounded,
        };
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("buffer", &buffer)
            .finish()
    }
}

type Mapping<M, T> = Box<dyn FnOnce(M) -> T + Send>;

/// A future resolving to the first matching message, mapped. Dropping it unsubscribes.
///
/// Made by [`Publisher::listener`].
pub struct Listener<M, T> {
    id: u64,
    rx: oneshot::Receiver<Result<M, Error>>,
    mapping: Option<Mapping<M, T>>,
    inner: Weak<Inner<M>>,
}

impl<M, T> Future for Listener<M, T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let delivered = match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(delivered)) => delivered,
            // The slot was dropped without a send: only when the publisher itself is gone.
            Poll::Ready(Err(_)) => Err(Error::new(Kind::ShutDown)),
        };
        let message = delivered?;
        match self.mapping.take() {
            Some(mapping) => Poll::Ready(Ok(mapping(message))),
            None => Poll::Ready(Err(Error::new(Kind::ShutDown))),
        }
    }
}

impl<M, T> Drop for Listener<M, T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut shared = inner.lock();
            if shared.listeners.remove(&self.id).is_some() {
                inner.recount(&shared);
            }
        }
    }
}

impl<M, T> fmt::Debug for Listener<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("id", &self.id).finish()
    }
}
