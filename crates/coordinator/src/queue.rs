//! Batch requests waiting for a place under their mode's concurrency limit: accepted and recorded
//! with their batch, started in the batch's order as places free.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Instant;

use task_core::TaskError;
use tokio::sync::Semaphore;

use crate::admission::Ready;
use crate::coordinator::Coordinator;
use crate::inner::Inner;
use crate::request::Place;

/// The requests of one batch that found no place free, in the batch's order.
pub(crate) struct Queue {
    /// Weak: a queue keeps no coordinator alive. One dropped ends these requests with the rest.
    inner: Weak<Inner>,
    mode: usize,
    limit: Arc<Semaphore>,
    waiting: VecDeque<Ready>,
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
            waiting: VecDeque::new(),
            since: Instant::now(),
            why: "the runtime its batch was submitted on shut down before a place under its \
                  mode's limit was free for it",
        }
    }

    pub(crate) fn push(&mut self, ready: Ready) {
        self.waiting.push_back(ready);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Starts each request as a place frees, in order; one that ended while it waited (it was
    /// cancelled) is passed over, and the place goes to the next. It ends with the last request,
    /// or when shutdown begins (the limit is closed) or the coordinator is dropped.
    pub(crate) async fn run(mut self) {
        let mut spare: Option<Place> = None;
        while let Some(ready) = self.waiting.front() {
            if !ready.cell.is_open() {
                self.waiting.pop_front();
                continue;
            }
            let place = match spare.take() {
                Some(place) => place,
                None => match Arc::clone(&self.limit).acquire_owned().await {
                    Ok(permit) => Arc::new(permit),
                    Err(_closed) => {
                        self.why = "the coordinator shut down before a place under its mode's \
                                    limit was free for it";
                        return;
                    }
                },
            };
            // A coordinator dropped has ended its open requests, these too.
            let Some(inner) = self.inner.upgrade() else {
                return;
            };
            let Some(ready) = self.waiting.pop_front() else {
                return;
            };
            match ready.cell.give_place(place) {
                Ok(()) => {
                    let entry = &inner.modes[self.mode];
                    Coordinator::start_queued(ready, entry, self.since.elapsed());
                }
                Err(place) => spare = Some(place),
            }
        }
    }
}

impl Drop for Queue {
    /// The requests still waiting end cancelled, never started: every accepted request ends.
    fn drop(&mut self) {
        for ready in self.waiting.drain(..) {
            ready.cell.stop(Err(TaskError::cancelled(self.why)), true);
        }
    }
}
