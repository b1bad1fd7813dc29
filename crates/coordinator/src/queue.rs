//! Batch requests waiting for a place under their mode's concurrency limit: accepted and recorded
//! with their batch, started in the batch's order as places free.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use futures::task::AtomicWaker;
use task_core::TaskError;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::admission::Ready;
use crate::coordinator::Coordinator;
use crate::inner::Inner;
use crate::request::Place;

/// A wait for one place under a mode's limit.
type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// The requests of one batch that found no place free, in the batch's order.
pub(crate) struct Queue {
    /// Weak: a queue keeps no coordinator alive. One dropped ends these requests with the rest.
    inner: Weak<Inner>,
    mode: usize,
    limit: Arc<Semaphore>,
    /// The requests waiting, by their positions in the batch.
    waiting: BTreeMap<usize, Ready>,
    /// The positions the next request pushed takes.
    pushed: usize,
    /// Where the watches of the requests waiting tell which of them ended.
    ended: Arc<Ended>,
    since: Instant,
    /// How the requests still waiting end if the queue stops: the runtime it runs on shut down,
    /// unless it says otherwise.
    why: &'static str,
}

impl Queue {
    pub(crate) fn new(inner: &Arc<Inner>, mode: usize, limit: &Arc<Semaphore>) -> Self {
        Self {
            inner: Arc::downgrade(inner),
            mode,
            limit: Arc::clone(limit),
            waiting: BTreeMap::new(),
            pushed: 0,
            ended: Arc::default(),
            since: Instant::now(),
            why: "the runtime its batch was submitted on shut down before a place under its \
                  mode's limit was free for it",
        }
    }

    /// Queues `ready`, watched: should it end while it waits, its task is let go at once.
    pub(crate) fn push(&mut self, ready: Ready) {
        let position = self.pushed;
        self.pushed += 1;
        let watch = Waker::from(Arc::new(Watch {
            ended: Arc::downgrade(&self.ended),
            position,
        }));
        // Nothing runs a waiting request yet: its cancellation's one waiter is its watch until
        // it starts.
        if ready
            .cell
            .poll_cancelled(&mut Context::from_waker(&watch))
            .is_ready()
        {
            watch.wake_by_ref();
        }
        self.waiting.insert(position, ready);
        self.count(1, 0);
    }

    /// Counts `joined` requests into the mode's requests waiting in a queue, or `left` ones
    /// out (unless the coordinator is gone, and its counts with it).
    fn count(&self, joined: usize, left: usize) {
        if let Some(inner) = self.inner.upgrade() {
            let mode = &inner.modes[self.mode];
            let waiting = &mode.counters.waiting;
            waiting.fetch_add(joined as u64, Ordering::Relaxed);
            waiting.fetch_sub(left as u64, Ordering::Relaxed);
            mode.metrics.queued(joined as f64 - left as f64);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Starts each request as a place frees, in order; one that ended while it waited (it was
    /// cancelled) is passed over, and the place goes to the next. It ends with the last request
    /// (shutdown's deadline cancels those still waiting), when the limit is closed (shutdown
    /// closes it once the accepted requests have ended) or when the coordinator is dropped.
    ///
    /// While it waits for a place it also listens to the watches of the requests waiting: one
    /// that ends, wherever it waits, is taken out at once, its task let go then, not when a
    /// place frees (which may be never: a task kept may hold the coordinator's last handle,
    /// whose drop would end what holds the places).
    pub(crate) async fn run(mut self) {
        let mut spare: Option<Place> = None;
        // The wait for a place, kept while the first request changes: so is its turn.
        let mut acquire: Option<Acquire> = None;
        loop {
            for position in self.ended.take() {
                if let Some(ended) = self.waiting.remove(&position) {
                    self.count(0, 1);
                    let_go(ended);
                    // A whole batch let go is many steps: the runtime's other tasks get turns.
                    tokio::task::coop::consume_budget().await;
                }
            }
            let Some(ready) = self.waiting.first_entry() else {
                return;
            };
            if !ready.get().cell.is_open() {
                // Ended, its watch not heard yet.
                let ended = ready.remove();
                self.count(0, 1);
                let_go(ended);
                tokio::task::coop::consume_budget().await;
                continue;
            }
            let place = match spare.take() {
                Some(place) => place,
                None => {
                    let (limit, ended) = (&self.limit, &self.ended);
                    let pending =
                        acquire.get_or_insert_with(|| Box::pin(Arc::clone(limit).acquire_owned()));
                    let acquired = std::future::poll_fn(|cx| match pending.as_mut().poll(cx) {
                        Poll::Ready(acquired) => Poll::Ready(Some(acquired)),
                        Poll::Pending => ended.poll_any(cx).map(|()| None),
                    })
                    .await;
                    let Some(acquired) = acquired else {
                        continue;
                    };
                    acquire = None;
                    match acquired {
                        Ok(permit) => Arc::new(permit),
                        Err(_closed) => {
                            self.why = "the coordinator shut down before a place under its \
                                        mode's limit was free for it";
                            return;
                        }
                    }
                }
            };
            // A coordinator dropped has ended its open requests, these too.
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let Some((_, ready)) = self.waiting.pop_first() else {
                return;
            };
            self.count(0, 1);
            match ready.cell.give_place(place) {
                Ok(()) => {
                    let entry = &inner.modes[self.mode];
                    Coordinator::start_queued(ready, entry, self.since.elapsed());
                }
                Err(place) => {
                    spare = Some(place);
                    let_go(ready);
                }
            }
        }
    }
}

impl Drop for Queue {
    /// The requests still waiting end cancelled, never started: every accepted request ends.
    fn drop(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        self.count(0, waiting.len());
        // All end before any task is let go: a task's `Drop` is the user's.
        for ready in waiting.values() {
            ready.cell.stop(Err(TaskError::cancelled(self.why)), true);
        }
        for ready in waiting.into_values() {
            let_go(ready);
        }
    }
}

/// The positions of the waiting requests that ended, as their watches tell them, and the queue
/// to wake.
#[derive(Default)]
struct Ended {
    positions: Mutex<Vec<usize>>,
    queue: AtomicWaker,
}

impl Ended {
    /// The positions told since the last look.
    fn take(&self) -> Vec<usize> {
        std::mem::take(&mut *self.lock())
    }

    /// Ready once a position is told; registers `cx`'s waker otherwise.
    fn poll_any(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.queue.register(cx.waker());
        if self.lock().is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// No code that can panic runs under this lock.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.positions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The waker a waiting request registers for its cancellation: woken as it ends (cancelled, its
/// parent cancelled, the coordinator dropped), it tells the queue which one, wherever it waits.
/// Woken once the request has left the queue, it tells of a position no longer there.
struct Watch {
    ended: Weak<Ended>,
    position: usize,
}

impl Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(ended) = self.ended.upgrade() {
            ended.lock().push(self.position);
            ended.queue.wake();
        }
    }
}

/// Drops a request's task that never started. The task is the user's: a panic in its `Drop` is
/// logged (as for a retry's copy) and stops neither the queue nor the other requests waiting in
/// it, which would otherwise end cancelled, or never end at all when the queue itself was being
/// dropped.
fn let_go(ready: Ready) {
    let span = ready.cell.span().clone();
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(ready)));
    if let Err(panic) = dropped {
        let reason = task_core::panic_message(panic.as_ref());
        tracing::error!(parent: &span, %reason, "the task of a request that never started panicked when dropped");
    }
}
