//! [`Publisher`]: ordered fan-out to callbacks, streams and one-shot listeners.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use futures::Stream;
use task_core::panic_message;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Kind, PublishError};

/// The default number of messages each subscriber may have queued before `publish` waits.
pub const DEFAULT_CAPACITY: usize = 1024;

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

struct Subscriber<M> {
    id: u64,
    tx: mpsc::Sender<M>,
}

impl<M> Clone for Subscriber<M> {
    fn clone(&self) -> Self {
        Self {
            id: self.id,
            tx: self.tx.clone(),
        }
    }
}

type Filter<M> = Box<dyn Fn(&M) -> bool + Send + Sync>;

struct ListenerSlot<M> {
    filter: Filter<M>,
    tx: oneshot::Sender<Result<M, Error>>,
}

struct Shared<M> {
    phase: Phase,
    /// Copy-on-write, so `publish` takes a snapshot without holding the lock while it sends.
    subscribers: Arc<Vec<Subscriber<M>>>,
    /// The tasks that run callback subscribers, awaited at shutdown.
    callback_tasks: HashMap<u64, JoinHandle<()>>,
    listeners: HashMap<u64, ListenerSlot<M>>,
}

struct Inner<M> {
    capacity: usize,
    next_id: AtomicU64,
    /// Held across one publish's deliveries, so every subscriber sees one total order, and by
    /// shutdown, so it waits for publishes already under way.
    order: tokio::sync::Mutex<()>,
    shared: Mutex<Shared<M>>,
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

    fn remove_subscriber(&self, id: u64) -> bool {
        let mut shared = self.lock();
        shared.callback_tasks.remove(&id);
        if !shared.subscribers.iter().any(|s| s.id == id) {
            return false;
        }
        let remaining: Vec<_> = shared
            .subscribers
            .iter()
            .filter(|s| s.id != id)
            .cloned()
            .collect();
        shared.subscribers = Arc::new(remaining);
        true
    }
}

/// Fans messages out to subscribers, in order, with each subscriber isolated from the others.
///
/// - **Order**: every subscriber sees messages in one total publish order.
/// - **Isolation**: a panicking callback is logged at `warn` and keeps receiving; the others never
///   notice. Each subscriber has its own bounded queue, so a slow subscriber does not delay the
///   others until its queue is full; then `publish` waits for it (backpressure, not unbounded
///   memory).
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
            .field("subscribers", &shared.subscribers.len())
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

    /// A publisher, not yet started, whose subscribers each queue up to `capacity` messages
    /// (at least 1).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                capacity: capacity.max(1),
                next_id: AtomicU64::new(0),
                order: tokio::sync::Mutex::new(()),
                shared: Mutex::new(Shared {
                    phase: Phase::Idle,
                    subscribers: Arc::new(Vec::new()),
                    callback_tasks: HashMap::new(),
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
        shared.subscribers.len() + shared.listeners.len()
    }

    fn add_subscriber(&self) -> Result<(u64, mpsc::Receiver<M>), Error> {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let id = self.inner.next_id();
        let mut shared = self.inner.lock();
        if shared.phase == Phase::ShutDown {
            return Err(Error::new(Kind::ShutDown));
        }
        let mut subscribers = Vec::with_capacity(shared.subscribers.len() + 1);
        subscribers.extend(shared.subscribers.iter().cloned());
        subscribers.push(Subscriber { id, tx });
        shared.subscribers = Arc::new(subscribers);
        Ok((id, rx))
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
        let (id, mut rx) = self.add_subscriber()?;
        let task = runtime.spawn(async move {
            while let Some(message) = rx.recv().await {
                if let Err(payload) = catch_unwind(AssertUnwindSafe(|| callback(message))) {
                    let reason = panic_message(payload.as_ref());
                    tracing::warn!(subscriber = id, %reason, "subscriber panicked; it keeps receiving");
                }
            }
        });
        let mut shared = self.inner.lock();
        // Still subscribed (not unsubscribed or shut down in between): keep its task for shutdown.
        if shared.subscribers.iter().any(|s| s.id == id) {
            shared.callback_tasks.insert(id, task);
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
        let (id, rx) = self.add_subscriber()?;
        Ok(Subscription {
            id,
            rx,
            inner: Arc::downgrade(&self.inner),
        })
    }

    /// Removes a callback subscriber. Messages already queued for it are still delivered.
    ///
    /// # Errors
    ///
    /// [`Error::is_unknown_subscriber`] when no subscriber has that id.
    pub fn unsubscribe(&self, id: SubscriberId) -> Result<(), Error> {
        if self.inner.remove_subscriber(id.0) {
            Ok(())
        } else {
            Err(Error::new(Kind::UnknownSubscriber(id.0)))
        }
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
    /// Returns once the message is queued for every subscriber; when a subscriber's queue is full
    /// it waits for room (backpressure).
    ///
    /// # Errors
    ///
    /// When the publisher is not started or is shut down; the error hands the message back
    /// ([`PublishError::into_inner`]).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped while it waits for a full queue, the message may
    /// have reached only some subscribers.
    pub async fn publish(&self, message: M) -> Result<(), PublishError<M>> {
        // Most publishes complete without waiting: the order lock is free and every queue has
        // room. That path runs synchronously; only a publish that must wait continues in a boxed
        // future, so the future every caller holds (and moves into spawned tasks) stays small.
        match self.publish_now(message) {
            Step::Done(result) => result,
            Step::Wait(rest) => rest.await,
        }
    }

    fn publish_now(&self, message: M) -> Step<'_, M> {
        let Ok(order) = self.inner.order.try_lock() else {
            return Step::Wait(Box::pin(async move {
                let order = self.inner.order.lock().await;
                let (subscribers, message) = self.snapshot(message)?;
                self.deliver(&subscribers, 0, message, false).await;
                drop(order);
                Ok(())
            }));
        };
        let (subscribers, message) = match self.snapshot(message) {
            Ok(snapshot) => snapshot,
            Err(refused) => return Step::Done(Err(refused)),
        };
        let mut any_closed = false;
        let count = subscribers.len();
        // The last subscriber gets the message itself, the others copies.
        let mut original = Some(message);
        for i in 0..count {
            let copy = if i + 1 == count {
                original.take()
            } else {
                original.clone()
            };
            let Some(copy) = copy else { break };
            match subscribers[i].tx.try_send(copy) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => any_closed = true,
                Err(mpsc::error::TrySendError::Full(copy)) => {
                    // Wait for room, then deliver to the rest in order, still holding the order
                    // lock.
                    return Step::Wait(Box::pin(async move {
                        let sent = send(&subscribers[i].tx, copy).await;
                        let any_closed = any_closed || !sent;
                        match original {
                            Some(message) => {
                                self.deliver(&subscribers, i + 1, message, any_closed).await;
                            }
                            None if any_closed => self.prune(&subscribers),
                            None => {}
                        }
                        drop(order);
                        Ok(())
                    }));
                }
            }
        }
        if any_closed {
            self.prune(&subscribers);
        }
        drop(order);
        Step::Done(Ok(()))
    }

    /// Checks the publisher takes the message, hands it to the listeners, and returns the
    /// subscribers to deliver it to. Runs under the order lock.
    #[allow(clippy::type_complexity)]
    fn snapshot(&self, message: M) -> Result<(Arc<Vec<Subscriber<M>>>, M), PublishError<M>> {
        let mut shared = self.inner.lock();
        match shared.phase {
            Phase::Running => {}
            Phase::Idle => return Err(PublishError::new(message, false)),
            Phase::ShutDown => return Err(PublishError::new(message, true)),
        }
        if !shared.listeners.is_empty() {
            deliver_to_listeners(&mut shared.listeners, &message);
        }
        Ok((Arc::clone(&shared.subscribers), message))
    }

    /// Delivers `message` to `subscribers[from..]`, waiting for room where a queue is full.
    async fn deliver(
        &self,
        subscribers: &[Subscriber<M>],
        from: usize,
        message: M,
        mut any_closed: bool,
    ) {
        for subscriber in subscribers.iter().skip(from) {
            any_closed |= !send(&subscriber.tx, message.clone()).await;
        }
        if any_closed {
            self.prune(subscribers);
        }
    }

    /// Removes subscribers whose stream was dropped without unsubscribing (its `Drop` raced a
    /// publish).
    fn prune(&self, subscribers: &[Subscriber<M>]) {
        for subscriber in subscribers.iter().filter(|s| s.tx.is_closed()) {
            self.inner.remove_subscriber(subscriber.id);
        }
    }

    /// Stops the publisher: waits for publishes under way, refuses new ones, lets every subscriber
    /// drain the messages published before this call, resolves pending listeners with an error,
    /// and waits for callback subscribers to finish.
    ///
    /// Calling it again returns at once.
    pub async fn shutdown(&self) {
        let order = self.inner.order.lock().await;
        let (subscribers, tasks, listeners) = {
            let mut shared = self.inner.lock();
            shared.phase = Phase::ShutDown;
            (
                std::mem::take(&mut shared.subscribers),
                std::mem::take(&mut shared.callback_tasks),
                std::mem::take(&mut shared.listeners),
            )
        };
        drop(order);
        // Dropping the senders closes every queue: subscribers drain what is queued, then stop.
        drop(subscribers);
        for (_, slot) in listeners {
            let _ = slot.tx.send(Err(Error::new(Kind::ShutDown)));
        }
        for (_, task) in tasks {
            let _ = task.await;
        }
    }
}

/// Queues `message`, waiting for room if the queue is full. False when the subscriber is gone.
async fn send<M: Send>(tx: &mpsc::Sender<M>, message: M) -> bool {
    match tx.try_send(message) {
        Ok(()) => true,
        // The waiting send is boxed so the common path's future stays small (publishers' futures
        // are moved into spawned tasks).
        Err(mpsc::error::TrySendError::Full(message)) => Box::pin(tx.send(message)).await.is_ok(),
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// A publish that completed at once, or the rest of one that must wait.
enum Step<'a, M> {
    Done(Result<(), PublishError<M>>),
    Wait(Pin<Box<dyn Future<Output = Result<(), PublishError<M>>> + Send + 'a>>),
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

/// A stream of every message published after it was created. Dropping it unsubscribes.
///
/// Made by [`Publisher::subscribe_stream`].
pub struct Subscription<M> {
    id: u64,
    rx: mpsc::Receiver<M>,
    inner: Weak<Inner<M>>,
}

impl<M> Subscription<M> {
    /// This subscriber's id.
    pub fn id(&self) -> SubscriberId {
        SubscriberId(self.id)
    }

    /// The next message, or `None` once the publisher is shut down and the queue is drained.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is never lost when the future is dropped.
    pub async fn recv(&mut self) -> Option<M> {
        self.rx.recv().await
    }
}

impl<M> Stream for Subscription<M> {
    type Item = M;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<M>> {
        self.rx.poll_recv(cx)
    }
}

impl<M> Drop for Subscription<M> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            inner.remove_subscriber(self.id);
        }
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
