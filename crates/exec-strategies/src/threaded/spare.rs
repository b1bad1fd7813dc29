//! What the threaded strategies sharing one pool share: the signal its waiting threads sleep on,
//! and the tasks handed to it, which spare threads take when every thread that could take them
//! waits in [`block_on`](crate::block_on) with no room left to help.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::Queued as Job;
use crate::signal::Signal;

/// One pool's shared state.
#[derive(Default)]
pub(crate) struct PoolState {
    pub(super) signal: Arc<Signal>,
    /// The tasks handed to the pool, oldest first. Each is also one job on the pool, which takes
    /// the oldest here: a pool thread runs them in the order given, as before, and a spare
    /// thread can take them too.
    queue: Mutex<VecDeque<Job>>,
    /// Spare threads running that wait in no `block_on`: those that can take the next task.
    free_spares: AtomicUsize,
}

impl PoolState {
    /// Queues `job`; the caller hands the pool one job that runs the oldest
    /// ([`run_oldest`](Self::run_oldest)).
    pub(super) fn push(&self, job: Job) {
        self.queue().push_back(job);
    }

    /// Runs the oldest task queued, if any is left; whether it ran one.
    pub(super) fn run_oldest(self: &Arc<Self>) -> bool {
        // Taken out of the lock before it runs.
        let job = self.queue().pop_front();
        job.map(|job| job.run(self)).is_some()
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        // Nothing panics under this lock.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by a thread about to sleep in `block_on` with no work it may take: when tasks are
    /// queued and no spare thread is free to take them, starts one. It runs the queued tasks
    /// until none is left (helping, as a pool thread does, while a task of its own waits), then
    /// ends. Threads that wait past their depth thus never leave the queue stuck: the pool grows
    /// by a thread for as long as every one it has waits.
    pub(super) fn start_spare_if_needed(self: &Arc<Self>) {
        if self.queue().is_empty() || !self.claim_free_spare() {
            return;
        }
        let state = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("threaded-spare".into())
            .spawn(move || state.serve_as_spare());
        if let Err(error) = started {
            self.free_spares.fetch_sub(1, Ordering::SeqCst);
            // The pool's own threads still take the tasks once their waits end.
            tracing::warn!(%error, "threaded strategy: could not start a spare thread");
        }
    }

    /// Counts one more free spare, unless one is free already.
    fn claim_free_spare(&self) -> bool {
        (self.free_spares)
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// A spare thread's life: it runs the queued tasks until none is left.
    fn serve_as_spare(self: Arc<Self>) {
        SPARE.with(|spare| spare.set(true));
        loop {
            while self.run_oldest() {}
            self.free_spares.fetch_sub(1, Ordering::SeqCst);
            // A task queued after the last look, while this thread still counted as free, found
            // no spare to start: look again.
            if self.queue().is_empty() || !self.claim_free_spare() {
                return;
            }
        }
    }
}

thread_local! {
    /// Set on a spare thread.
    static SPARE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// While a spare thread waits in `block_on` it is not free to take more tasks, until dropped.
pub(super) struct SpareWaiting(Option<Arc<PoolState>>);

impl SpareWaiting {
    /// Marks this thread, if it is a spare and waits in no other `block_on` (`depth` 1), as not
    /// free.
    pub(super) fn enter(state: &Arc<PoolState>, depth: usize) -> Self {
        let spare = depth == 1 && SPARE.with(std::cell::Cell::get);
        Self(spare.then(|| {
            state.free_spares.fetch_sub(1, Ordering::SeqCst);
            Arc::clone(state)
        }))
    }
}

impl Drop for SpareWaiting {
    fn drop(&mut self) {
        if let Some(state) = self.0.take() {
            state.free_spares.fetch_add(1, Ordering::SeqCst);
        }
    }
}
