//! [`Publisher`]: ordered fan-out to callbacks, streams and one-shot listeners.
//!
//! Every subscriber reads the same ring of the last messages (a `tokio::sync::broadcast`
//! channel), so a publish writes a message once however many subscribers there are, instead of
//! once into a queue per subscriber. The channel alone would overwrite messages a slow subscriber
//! has not read yet; the publisher never lets that happen: it waits, before writing, until the
//! slowest subscriber is less than `capacity` messages behind (backpressure), and every
//! subscriber wakes a waiting publisher as it reads.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use futures::{FutureExt, Stream};
use task_core::panic_message;
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::ReusableBoxFuture;

use crate::error::{Error, Kind, PublishError, Refusal};

/// The default number of messages each subscriber may have queued before `publish` waits.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The largest capacity a publisher takes ([`Publisher::with_capacity`] clamps to it): the ring
/// of that many messages is allocated when the publisher is made.
pub const MAX_CAPACITY: usize = 1 << 16;

/// Identifies a subscriber, to [`Publisher::unsubscribe`] it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(u64);

impl fmt::Display for SubscriberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subscriber-{}", self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Running,
    ShutDown,
}

/// A message on the ring, numbered in publish order.
#[derive(Clone)]
struct Envelope<M> {
    seq: u64,
    message: M,
}

/// Tells a publisher waiting for room that a subscriber read (or left).
#[derive(Default)]
struct Progress {
    waiting: AtomicBool,
    notify: Notify,
}

impl Progress {
    /// Called after every read: one atomic load unless a publisher waits.
    fn read(&self) {
        if self.waiting.load(Ordering::SeqCst) && self.waiting.swap(false, Ordering::SeqCst) {
            // One waiter: it sets the flag again before it looks for room, so the next read
            // wakes the next one.
            self.notify.notify_one();
        }
    }

    /// Called when a subscriber leaves: it may have been the slowest.
    fn left(&self) {
        self.waiting.store(false, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

struct Shared<M> {
    phase: Phase,
    /// `None` after shutdown; dropping it ends every subscriber's stream once drained.
    tx: Option<broadcast::Sender<Envelope<M>>>,
    /// At least the number of messages the slowest subscriber has not read: exact when last
    /// measured, plus one per message sent since. Measuring takes the ring's lock and a search
    /// of the ring, so it is done only when this reaches the capacity.
    queued: usize,
    /// Publishes called before shutdown and still waiting for room; shutdown lets them finish.
    waiting_publishes: usize,
    /// Every subscriber (a callback reads a stream of its own), with the first message number
    /// it must not receive (`u64::MAX` until unsubscribed).
    stops: HashMap<u64, Arc<AtomicU64>>,
    /// The tasks of callback subscribers, awaited at shutdown.
    callbacks: HashMap<u64, JoinHandle<()>>,
    listeners: HashMap<u64, ListenerSlot<M>>,
}

type Filter<M> = Box<dyn Fn(&M) -> bool + Send + Sync>;

struct ListenerSlot<M> {
    filter: Filter<M>,
    tx: oneshot::Sender<Result<M, Error>>,
}

struct Inner<M> {
    capacity: usize,
    next_id: AtomicU64,
    /// Messages published so far; the next message's number.
    published: AtomicU64,
    /// Everything a publish, a subscribe and shutdown change. A publish writes the ring under it,
    /// so every subscriber sees one total order; it is never held across an await.
    shared: Mutex<Shared<M>>,
    progress: Arc<Progress>,
    /// Woken when the last publish waiting for room at shutdown finishes.
    publishes_done: Notify,
}

impl<M> Inner<M> {
    fn lock(&self) -> MutexGuard<'_, Shared<M>> {
        // A panic never happens while the lock is held (user code under it is caught), so a
        // poisoned lock still holds consistent data.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Fans messages out to subscribers, in order, with each subscriber isolated from the others.
///
/// - **Order**: every subscriber sees messages in one total publish order.
/// - **Isolation**: a panicking callback is logged at `warn` and keeps receiving; the others never
///   notice. A slow subscriber does not delay the others until it is `capacity` messages behind;
///   then `publish` waits for it (backpressure, not unbounded memory, and no message is ever
///   skipped).
/// - **One copy per message**: subscribers read a shared ring of the last `capacity` messages,
///   so publishing to many subscribers writes each message once.
/// - **Listeners** are subscribed when created, so they cannot miss a message published after
///   that, and unsubscribed when they resolve or are dropped.
/// - **Shutdown** waits for publishes under way, lets every subscriber drain what was published
///   before it, resolves pending listeners with an error and refuses later publishes, handing the
///   message back.
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
/// publisher.publish("hi".to_string()).await?;
/// publisher.publish("hello".to_string()).await?;
///
/// assert_eq!(first_long.await?, "HELLO");
/// assert_eq!(stream.next().await.as_deref(), Some("hi"));
/// publisher.shutdown().await;
/// assert!(publisher.publish("late".to_string()).await.unwrap_err().is_shut_down());
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
        f.debug_struct("Publisher")
            .field("phase", &shared.phase)
            .field("subscribers", &shared.stops.len())
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
    /// A publisher, not yet started, with [`DEFAULT_CAPACITY`] per subscriber.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A publisher, not yet started, whose subscribers may each fall up to `capacity` messages
    /// (at least 1, at most [`MAX_CAPACITY`]; other values are clamped) behind before `publish`
    /// waits for them. The ring of `capacity` messages (rounded up to a power of two) is
    /// allocated now.
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        // The ring holds at least `capacity` messages, so a subscriber less than `capacity`
        // behind never has an unread message overwritten.
        let (tx, _) = broadcast::channel(capacity);
        Self {
            inner: Arc::new(Inner {
                capacity,
                next_id: AtomicU64::new(0),
                published: AtomicU64::new(0),
                shared: Mutex::new(Shared {
                    phase: Phase::Idle,
                    tx: Some(tx),
                    queued: 0,
                    waiting_publishes: 0,
                    stops: HashMap::new(),
                    callbacks: HashMap::new(),
                    listeners: HashMap::new(),
                }),
                progress: Arc::default(),
                publishes_done: Notify::new(),
            }),
        }
    }

    /// Starts taking publishes. Starting a running publisher does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] when the publisher has been shut down; it cannot restart.
    pub fn start(&self) -> Result<(), Error> {
        let mut shared = self.inner.lock();
        match shared.phase {
            Phase::ShutDown => Err(Error::new(Kind::ShutDown)),
            _ => {
                shared.phase = Phase::Running;
                Ok(())
            }
        }
    }

    /// Whether the publisher takes publishes (started and not shut down).
    pub fn is_running(&self) -> bool {
        self.inner.lock().phase == Phase::Running
    }

    /// How many subscribers (callbacks and streams) and pending listeners are attached.
    pub fn subscriber_count(&self) -> usize {
        let shared = self.inner.lock();
        shared.stops.len() + shared.listeners.len()
    }

    /// Calls `callback` with every message published from now on, in order, on a task of the
    /// current tokio runtime. A panic in the callback is caught and logged at `warn`; the callback
    /// keeps receiving later messages.
    ///
    /// # Errors
    ///
    /// [`Error::is_no_runtime`] outside a tokio runtime; [`Error::is_shut_down`] after shutdown.
    pub fn subscribe<F>(&self, mut callback: F) -> Result<SubscriberId, Error>
    where
        F: FnMut(M) + Send + 'static,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::new(Kind::NoRuntime))?;
        let mut subscription = self.subscribe_stream()?;
        let id = subscription.id;
        let task = runtime.spawn(async move {
            loop {
                // Nothing queued: yield once before sleeping. A busy publisher on another thread
                // usually writes the next message meanwhile, and the subscriber reads it without
                // being woken; sleeping at once costs a cross-thread wake-up per message instead.
                let message = match subscription.recv().now_or_never() {
                    Some(message) => message,
                    None => {
                        tokio::task::yield_now().await;
                        subscription.recv().await
                    }
                };
                let Some(message) = message else {
                    break;
                };
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(message))) {
                    let reason = panic_message(payload.as_ref());
                    tracing::warn!(subscriber = id, %reason, "subscriber panicked; it keeps receiving");
                }
            }
        });
        let mut shared = self.inner.lock();
        // Still subscribed (not unsubscribed or shut down in between): keep its task for shutdown.
        if shared.phase != Phase::ShutDown && shared.stops.contains_key(&id) {
            shared.callbacks.insert(id, task);
        }
        Ok(SubscriberId(id))
    }

    /// A [`Stream`] of every message published from now on, in order. Dropping it unsubscribes.
    /// The stream ends after shutdown, once it has yielded what was published before.
    ///
    /// # Errors
    ///
    /// [`Error::is_shut_down`] after shutdown.
    pub fn subscribe_stream(&self) -> Result<Subscription<M>, Error> {
        let id = self.inner.next_id();
        let mut shared = self.inner.lock();
        let Some(tx) = shared
            .tx
            .as_ref()
            .filter(|_| shared.phase != Phase::ShutDown)
        else {
            return Err(Error::new(Kind::ShutDown));
        };
        let rx = tx.subscribe();
        let stop_at = Arc::new(AtomicU64::new(u64::MAX));
        shared.stops.insert(id, Arc::clone(&stop_at));
        Ok(Subscription {
            id,
            rx: Some(rx),
            waiting: None,
            stop_at,
            progress: Arc::clone(&self.inner.progress),
            inner: Arc::downgrade(&self.inner),
        })
    }

    /// Removes a subscriber. Messages published before this call are still delivered to it;
    /// later ones are not. A callback's task ends at the next message published after this call,
    /// or at shutdown; a stream ends there too (dropping a [`Subscription`] unsubscribes it at
    /// once).
    ///
    /// # Errors
    ///
    /// [`Error::is_unknown_subscriber`] when no subscriber has that id.
    pub fn unsubscribe(&self, id: SubscriberId) -> Result<(), Error> {
        let mut shared = self.inner.lock();
        let stop_at = shared
            .stops
            .remove(&id.0)
            .ok_or_else(|| Error::new(Kind::UnknownSubscriber(id.0)))?;
        // A callback's task ends by itself; it is no longer awaited at shutdown.
        shared.callbacks.remove(&id.0);
        stop_at.store(
            self.inner.published.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
        Ok(())
    }

    /// A future resolving to `mapping(m)` for the first message `m` published after this call for
    /// which `filter(&m)` holds.
    ///
    /// The listener is subscribed now, before it is first polled, so it cannot miss its message;
    /// it is unsubscribed when it resolves or is dropped. `filter` runs on the publishing task and
    /// should be quick.
    ///
    /// The future resolves to an error when the publisher shuts down first
    /// ([`Error::is_shut_down`]) or `filter` panics ([`Error::is_filter_panic`]).
    pub fn listener<T, F, G>(&self, filter: F, mapping: G) -> Listener<M, T>
    where
        F: Fn(&M) -> bool + Send + Sync + 'static,
        G: FnOnce(M) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let id = self.inner.next_id();
        let mut shared = self.inner.lock();
        if shared.phase == Phase::ShutDown {
            let _ = tx.send(Err(Error::new(Kind::ShutDown)));
        } else {
            shared.listeners.insert(
                id,
                ListenerSlot {
                    filter: Box::new(filter),
                    tx,
                },
            );
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
    /// Returns once the message is written for every subscriber to read; when the slowest
    /// subscriber is `capacity` messages behind, it first waits for it to read (backpressure).
    ///
    /// # Errors
    ///
    /// When the publisher is not started or is shut down; the error hands the message back
    /// ([`PublishError::into_inner`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped while it waits for room, the message reached no
    /// subscriber or listener.
    pub async fn publish(&self, message: M) -> Result<(), PublishError<M>> {
        // Most publishes find room and complete synchronously; only one that must wait
        // continues in a boxed future, so the future every caller holds (and moves into spawned
        // tasks) stays small.
        match self.send_if_room(message) {
            Err(refused) if refused.is_full() => {
                Box::pin(self.publish_when_room(refused.into_inner())).await
            }
            done => done,
        }
    }

    /// Publishes `message` if the slowest subscriber is less than `capacity` messages behind;
    /// never waits. For synchronous callers (a thread of a pool, a callback) that can defer a
    /// message the bus has no room for.
    ///
    /// # Errors
    ///
    /// As for [`publish`](Self::publish), and [`PublishError::is_full`] when the message would
    /// have to wait; the error hands the message back either way.
    pub fn try_publish(&self, message: M) -> Result<(), PublishError<M>> {
        self.send_if_room(message)
    }

    /// Sends `message` under the lock when the publisher runs and has room.
    fn send_if_room(&self, message: M) -> Result<(), PublishError<M>> {
        let mut shared = self.inner.lock();
        match shared.phase {
            Phase::Running => {}
            Phase::Idle => return Err(PublishError::new(message, Refusal::NotStarted)),
            Phase::ShutDown => return Err(PublishError::new(message, Refusal::ShutDown)),
        }
        if !self.has_room(&mut shared) {
            return Err(PublishError::new(message, Refusal::Full));
        }
        self.send(&mut shared, message);
        Ok(())
    }

    /// Waits until the slowest subscriber is less than `capacity` messages behind, then sends.
    /// Shutdown waits for it: it was called while the publisher ran.
    async fn publish_when_room(&self, message: M) -> Result<(), PublishError<M>> {
        let progress = &self.inner.progress;
        // Counted while it waits (and uncounted however it ends, dropped included).
        let Some(_waiting) = WaitingPublish::enter(&self.inner) else {
            // Shutdown began since the publish found no room: refused as a later publish is.
            return Err(PublishError::new(message, Refusal::ShutDown));
        };
        loop {
            let read = progress.notify.notified();
            let mut read = std::pin::pin!(read);
            // Registered before measuring, so a read in between is not missed.
            read.as_mut().enable();
            progress.waiting.store(true, Ordering::SeqCst);
            {
                let mut shared = self.inner.lock();
                if self.has_room(&mut shared) {
                    self.send(&mut shared, message);
                    return Ok(());
                }
            }
            read.await;
        }
    }

    /// Whether the slowest subscriber is less than `capacity` messages behind, measuring only
    /// when the running bound says it might not be.
    fn has_room(&self, shared: &mut Shared<M>) -> bool {
        if shared.queued >= self.inner.capacity {
            shared.queued = shared.tx.as_ref().map_or(0, broadcast::Sender::len);
        }
        shared.queued < self.inner.capacity
    }

    /// Writes the message for every subscriber and hands it to the matching listeners. Runs
    /// under the lock, with room.
    fn send(&self, shared: &mut Shared<M>, message: M) {
        if !shared.listeners.is_empty() {
            deliver_to_listeners(&mut shared.listeners, &message);
        }
        let seq = self.inner.published.fetch_add(1, Ordering::SeqCst);
        if let Some(tx) = &shared.tx {
            // An error only says nobody is subscribed.
            let _ = tx.send(Envelope { seq, message });
            shared.queued += 1;
        }
    }

    /// Stops the publisher: waits for publishes under way, refuses new ones, lets every subscriber
    /// drain the messages published before this call, resolves pending listeners with an error,
    /// and waits for callback subscribers to finish.
    ///
    /// Calling it again returns at once.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let (callbacks, listeners) = {
            let mut shared = inner.lock();
            shared.phase = Phase::ShutDown;
            (
                std::mem::take(&mut shared.callbacks),
                std::mem::take(&mut shared.listeners),
            )
        };
        for (_, slot) in listeners {
            let _ = slot.tx.send(Err(Error::new(Kind::ShutDown)));
        }
        // Publishes called before shutdown that wait for room are under way: they finish first.
        loop {
            let done = inner.publishes_done.notified();
            let mut done = std::pin::pin!(done);
            done.as_mut().enable();
            if inner.lock().waiting_publishes == 0 {
                break;
            }
            done.await;
        }
        // Dropping every sender closes the ring: subscribers read what is left, then stop.
        let tx = inner.lock().tx.take();
        drop(tx);
        for (_, task) in callbacks {
            let _ = task.await;
        }
    }
}

/// Counts a publish waiting for room, for shutdown to wait for; uncounts it when dropped.
struct WaitingPublish<'a, M> {
    inner: &'a Inner<M>,
}

impl<'a, M> WaitingPublish<'a, M> {
    /// `None` once shutdown has begun.
    fn enter(inner: &'a Inner<M>) -> Option<Self> {
        let mut shared = inner.lock();
        if shared.phase == Phase::ShutDown {
            return None;
        }
        shared.waiting_publishes += 1;
        Some(Self { inner })
    }
}

impl<M> Drop for WaitingPublish<'_, M> {
    fn drop(&mut self) {
        let mut shared = self.inner.lock();
        shared.waiting_publishes -= 1;
        if shared.waiting_publishes == 0 && shared.phase == Phase::ShutDown {
            self.inner.publishes_done.notify_waiters();
        }
    }
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

/// A stream of every message published after it was created. Dropping it unsubscribes.
///
/// Made by [`Publisher::subscribe_stream`].
pub struct Subscription<M> {
    id: u64,
    /// The receiver, while no receive waits for a message; `None` while one waits (it owns the
    /// receiver then) and once the stream ended.
    rx: Option<broadcast::Receiver<Envelope<M>>>,
    /// The receive that waits for the next message when none was queued, under way while `rx`
    /// is `None`. Boxed once and reused: a subscriber that keeps up reads queued messages
    /// without it.
    waiting: Option<ReusableBoxFuture<'static, Received<M>>>,
    /// The first message number it must not yield (`u64::MAX` while subscribed).
    stop_at: Arc<AtomicU64>,
    progress: Arc<Progress>,
    inner: Weak<Inner<M>>,
}

impl<M> Subscription<M> {
    /// This subscriber's id.
    pub fn id(&self) -> SubscriberId {
        SubscriberId(self.id)
    }

    /// Drops the receiver (marking its unread messages read): the stream yields nothing more.
    fn end(&mut self) {
        self.rx = None;
        self.waiting = None;
    }
}

impl<M: Clone + Send + 'static> Subscription<M> {
    /// The next message, or `None` once the publisher is shut down and the queue is drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<M> {
        poll_fn(|cx| self.poll_message(cx)).await
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<M>> {
        loop {
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
                Ok(envelope) if envelope.seq >= self.stop_at.load(Ordering::SeqCst) => {
                    // Unsubscribed: what was published before arrived; this one does not.
                    self.end();
                    self.progress.left();
                    return Poll::Ready(None);
                }
                Ok(envelope) => {
                    self.progress.read();
                    return Poll::Ready(Some(envelope.message));
                }
                Err(RecvError::Closed) => {
                    self.end();
                    return Poll::Ready(None);
                }
                Err(RecvError::Lagged(missed)) => {
                    // Never: the publisher waits rather than overwrite unread messages.
                    tracing::error!(subscriber = self.id, missed, "subscriber missed messages");
                }
            }
        }
    }
}

impl<M: Clone + Send + 'static> Stream for Subscription<M> {
    type Item = M;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        self.poll_message(cx)
    }
}

impl<M> Drop for Subscription<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.lock().stops.remove(&self.id);
        }
        // The receiver goes first (it marks its unread messages read), then a publisher waiting
        // for this subscriber hears of it.
        self.end();
        self.progress.left();
    }
}

impl<M> fmt::Debug for Subscription<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
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
            inner.lock().listeners.remove(&self.id);
        }
    }
}

impl<M, T> fmt::Debug for Listener<M, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("id", &self.id).finish()
    }
}
