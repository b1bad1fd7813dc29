//! What every handle of a publisher shares: its subscribers, their buffers and its phase.

use std::collections::HashMap;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::task::AtomicWaker;
use tokio::sync::broadcast;
use tokio::sync::{mpsc, oneshot};

/// Subscriber and listener ids, unique in the process: an id of one publisher never names a
/// subscriber of another.
pub(crate) static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Identifies a subscriber, to [`Publisher::unsubscribe`](crate::Publisher::unsubscribe) it. Unique in the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriberId(pub(crate) u64);

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
    /// read and is told how many ([`Missed`](crate::Missed)). Memory is bounded; publishing writes each message
    /// once for all bounded subscribers.
    #[default]
    Bounded,
    /// A queue of the subscriber's own: it never falls behind so far that it misses a message,
    /// and its memory grows with its lag (a subscriber that stops reading holds every message
    /// published since). Each message is cloned into it by the publish, under the publisher's
    /// lock (one whose `Clone` panics is [missed](crate::Missed)): a `Clone` that publishes to
    /// the same publisher would wait for that lock for good.
    Unbounded,
}

/// Phases, in the low bits of [`Inner::state`].
pub(crate) const IDLE: usize = 0;
pub(crate) const RUNNING: usize = 1;
pub(crate) const SHUT_DOWN: usize = 2;
pub(crate) const PHASE_BITS: u32 = 2;
pub(crate) const PHASE_MASK: usize = (1 << PHASE_BITS) - 1;

/// Where a bounded subscriber stops reading the ring.
pub(crate) struct Stop {
    /// The first message number it must not yield (`u64::MAX` until unsubscribed).
    pub(crate) at: AtomicU64,
    /// Woken by unsubscribe: a subscriber that has read everything before `at` ends then, with
    /// no later message needed to tell it.
    pub(crate) waker: AtomicWaker,
    /// The number of the next message it will read (or be told it missed): how far behind it
    /// is, for [`Publisher::lags`](crate::Publisher::lags).
    pub(crate) read: AtomicU64,
}

impl Stop {
    /// A stop for a subscriber whose first message is number `first`.
    pub(crate) fn new(first: u64) -> Self {
        Self {
            at: AtomicU64::new(u64::MAX),
            waker: AtomicWaker::new(),
            read: AtomicU64::new(first),
        }
    }
}

/// A message on the ring, numbered in publish order.
///
/// Every subscriber's copy shares the message: tokio copies and drops the ring's envelopes under
/// locks a publish takes too, so there they only count references, and no message's `Clone` or
/// `Drop` (user code, which may be slow or publish) runs under them. Each subscriber then takes
/// its own copy ([`take`](Self::take)). The mutex lets subscribers on other threads clone it
/// without asking `M: Sync`.
pub(crate) struct Envelope<M> {
    pub(crate) seq: u64,
    message: Option<Arc<Mutex<M>>>,
    /// What drops the ring's copy: [`defer::let_go_shared`](crate::defer::let_go_shared).
    let_go: fn(Arc<Mutex<M>>),
}

impl<M: Send + 'static> Envelope<M> {
    pub(crate) fn new(seq: u64, message: M) -> Self {
        let message = Some(Arc::new(Mutex::new(message)));
        let let_go = crate::defer::let_go_shared::<Mutex<M>>;
        Self {
            seq,
            message,
            let_go,
        }
    }
}

impl<M: Clone> Envelope<M> {
    /// This subscriber's copy, taken outside the ring's locks: the message itself when no other
    /// copy is left, else a clone; `None` when its `Clone` panicked (the subscriber missed it).
    pub(crate) fn take(mut self) -> Option<M> {
        match Arc::try_unwrap(self.message.take()?) {
            Ok(only) => Some(only.into_inner().unwrap_or_else(PoisonError::into_inner)),
            Err(shared) => {
                let held = shared.lock().unwrap_or_else(PoisonError::into_inner);
                let copy = clone_or_miss(&*held);
                drop(held);
                copy
            }
        }
    }
}

/// The ring drops its copy as a publish overwrites it for a subscriber that fell behind, under
/// the publisher's lock, or as the last subscriber to read it does, under the ring's: it is let
/// go of, to be dropped once the lock is released.
impl<M> Drop for Envelope<M> {
    fn drop(&mut self) {
        if let Some(message) = self.message.take() {
            (self.let_go)(message);
        }
    }
}

impl<M> Clone for Envelope<M> {
    fn clone(&self) -> Self {
        Self {
            seq: self.seq,
            message: self.message.clone(),
            let_go: self.let_go,
        }
    }
}

/// A subscriber's copy of `message`, or `None` when its `Clone` panicked (logged): the subscriber
/// is told it missed the message, and neither it nor the publisher is disturbed.
pub(crate) fn clone_or_miss<M: Clone>(message: &M) -> Option<M> {
    let cloned = catch_unwind(AssertUnwindSafe(|| message.clone()));
    let cloned = cloned.map_err(|payload| {
        let reason = task_core::panic_message(payload.as_ref());
        tracing::warn!(%reason, "a message's Clone panicked; its subscriber is told it missed it");
    });
    cloned.ok()
}

pub(crate) struct Shared<M> {
    /// `None` after shutdown; dropping it ends every bounded subscriber's stream once drained.
    pub(crate) tx: Option<broadcast::Sender<Envelope<M>>>,
    /// Messages written to the ring so far; the next one's number.
    pub(crate) published: u64,
    /// Every bounded subscriber (a callback reads a stream of its own), with where it stops.
    pub(crate) stops: HashMap<u64, Arc<Stop>>,
    /// Every subscriber with a queue of its own (unbounded, and pending listeners). Removing it
    /// ends the stream once drained.
    pub(crate) queues: HashMap<u64, Queue<M>>,
    /// Callback subscribers' threads, each closing its channel when it ends; awaited at shutdown.
    pub(crate) callbacks: HashMap<u64, oneshot::Receiver<()>>,
    /// Each subscriber's `pubsub_subscriber_lag` gauge, and the messages sent since they were
    /// last set.
    #[cfg(feature = "metrics")]
    pub(crate) lag_gauges: (HashMap<u64, metrics::Gauge>, u64),
}

/// With the `metrics` feature, the lag gauges are set once per this many messages sent.
#[cfg(feature = "metrics")]
const LAG_SAMPLE: u64 = 64;

impl<M> Shared<M> {
    pub(crate) fn attached(&self) -> usize {
        self.stops.len() + self.queues.len()
    }

    /// How far behind each subscriber is, by id: see [`Publisher::lags`](crate::Publisher::lags).
    pub(crate) fn lags(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let ring = self.stops.iter().map(|(&id, stop)| {
            let read = stop.read.load(Ordering::Relaxed);
            (id, self.published.saturating_sub(read))
        });
        let queues = (self.queues.iter())
            .filter(|(_, queue)| !queue.listener)
            .map(|(&id, queue)| (id, queue.unread.load(Ordering::Relaxed) as u64));
        ring.chain(queues)
    }

    /// Called under the lock when subscriber `id` has left: its lag gauge, if it has one, goes to
    /// 0 now, not at a later sample (with nobody left attached, no publish samples again).
    pub(crate) fn detached(&mut self, id: u64) {
        #[cfg(feature = "metrics")]
        if let Some(gauge) = self.lag_gauges.0.remove(&id) {
            recorded(|| gauge.set(0.0));
        }
        #[cfg(not(feature = "metrics"))]
        let _ = id;
    }

    /// Called under the lock at shutdown, when every subscriber has left: every lag gauge goes
    /// to 0.
    pub(crate) fn detached_all(&mut self) {
        #[cfg(feature = "metrics")]
        {
            let gauges = std::mem::take(&mut self.lag_gauges.0);
            recorded(|| gauges.into_values().for_each(|gauge| gauge.set(0.0)));
        }
    }

    /// Counts a message sent and, once per [`LAG_SAMPLE`], sets every subscriber's lag gauge: a
    /// stuck subscriber's lag shows while messages flow, at the cost of an atomic store per
    /// subscriber per sample.
    #[cfg(feature = "metrics")]
    pub(crate) fn sample_lags(&mut self) {
        self.lag_gauges.1 += 1;
        if self.lag_gauges.1 < LAG_SAMPLE {
            return;
        }
        let mut gauges = std::mem::take(&mut self.lag_gauges.0);
        recorded(|| {
            for (id, lag) in self.lags() {
                let gauge = gauges.entry(id).or_insert_with(|| {
                    metrics::gauge!("pubsub_subscriber_lag", "subscriber" => SubscriberId(id).to_string())
                });
                gauge.set(lag as f64);
            }
        });
        // A subscriber that left is out of `gauges` already: `detached` set its gauge to 0.
        self.lag_gauges = (gauges, 0);
    }
}

/// Which messages a filtered subscriber or a listener takes. It runs on the subscriber's side,
/// as it reads: never on the publishing thread.
pub(crate) type Filter<M> = Box<dyn Fn(&M) -> bool + Send + Sync>;

/// An unbounded subscriber's own queue: every message, in order (`None` for one whose `Clone`
/// panicked, which the subscriber is told it missed).
pub(crate) struct Queue<M> {
    pub(crate) tx: mpsc::UnboundedSender<Option<M>>,
    /// Messages queued and not read yet; the reader takes one off for each it reads.
    pub(crate) unread: Arc<AtomicUsize>,
    /// A pending listener's: not a subscriber of its own in [`Shared::lags`] (nor a lag gauge:
    /// one series per listener would grow without end).
    pub(crate) listener: bool,
}

impl<M: Clone + 'static> Queue<M> {
    /// Queues a copy of `message`, or word that the subscriber missed it when its `Clone`
    /// panicked. Runs under the publisher's lock.
    pub(crate) fn offer(&self, message: &M) {
        let message = clone_or_miss(message);
        self.unread.fetch_add(1, Ordering::SeqCst);
        // An error only says the subscription is being dropped; it removes the queue.
        if let Err(refused) = self.tx.send(message) {
            crate::defer::let_go(refused.0);
        }
    }
}

pub(crate) struct Inner<M> {
    pub(crate) capacity: usize,
    /// The phase in the low bits, the number of subscribers and listeners above: a publish with
    /// nobody to read it reads this and nothing else. Written only under `shared`'s lock.
    pub(crate) state: AtomicUsize,
    /// Everything a publish, a subscribe and shutdown change. A publish writes every subscriber's
    /// buffer under it, so every subscriber sees one total order; it is never held across an
    /// await. The only user code run under it is the message's `Clone` (for an unbounded
    /// subscriber's queue), and a panic there is caught: the messages a publish lets go of (one
    /// the ring overwrites for a subscriber that fell behind) are dropped once it is released
    /// ([`defer_drops`](crate::defer_drops)).
    pub(crate) shared: Mutex<Shared<M>>,
}

impl<M> Inner<M> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared<M>> {
        // The one piece of user code run under the lock, a message's `Clone`, is caught; a
        // lock poisoned all the same holds nothing half-changed, and is used as it is.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn phase(&self) -> usize {
        self.state.load(Ordering::SeqCst) & PHASE_MASK
    }

    /// Publishes the phase and the number attached; called under the lock after every change.
    pub(crate) fn set_state(&self, shared: &Shared<M>, phase: usize) {
        self.state
            .store((shared.attached() << PHASE_BITS) | phase, Ordering::SeqCst);
    }

    /// Called under the lock after subscribers or listeners came or went.
    pub(crate) fn recount(&self, shared: &Shared<M>) {
        self.set_state(shared, self.phase());
    }
}

/// Runs `record` on the application's metrics recorder (often under the publisher's lock): a
/// panic in it is logged, and never unwinds into a publish, a subscribe or a read.
#[cfg(feature = "metrics")]
pub(crate) fn recorded(record: impl FnOnce()) {
    if let Some(reason) = task_core::catch_panic(record) {
        tracing::error!(%reason, "the metrics recorder panicked");
    }
}
