//! What the threaded strategies sharing one pool share: the signal its waiting threads sleep on,
//! and the tasks that a thread waiting too deep in [`block_on`](crate::block_on) to run them
//! handed on, which spare threads run.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Queued as Job;
use crate::signal::Signal;

/// How long a spare thread with nothing left to run waits for more before it ends.
const LINGER: Duration = Duration::from_millis(100);

/// One pool's shared state.
pub(crate) struct PoolState {
    pub(super) signal: Arc<Signal>,
    /// The pool's threads.
    threads: usize,
    /// Its threads waiting too deep to run more tasks.
    deep: AtomicUsize,
    /// Tasks handed on by threads waiting too deep to run them, oldest first.
    handed_on: Mutex<VecDeque<Job>>,
    /// Spare threads running and not asleep in a wait: those that can take the next task.
    free_spares: AtomicUsize,
}

impl PoolState {
    /// The state of a pool of `threads` threads.
    pub(super) fn new(threads: usize) -> Self {
        Self {
            signal: Arc::default(),
            threads,
            deep: AtomicUsize::new(0),
            handed_on: Mutex::default(),
            free_spares: AtomicUsize::new(0),
        }
    }

    /// Counts this pool thread as waiting too deep to run more tasks, until dropped.
    pub(super) fn deep(&self) -> impl Drop + '_ {
        self.deep.fetch_add(1, Ordering::SeqCst);
        Decrement(&self.deep)
    }

    /// Whether every thread of the pool waits too deep to run more tasks: a task queued on the
    /// pool then waits for a spare thread, not for one of them.
    pub(super) fn all_deep(&self) -> bool {
        self.deep.load(Ordering::SeqCst) >= self.threads
    }

    /// Hands `job` on to the spare threads, starting one if none is free to take it.
    pub(super) fn hand_on(self: &Arc<Self>, job: Job) {
        self.handed_on().push_back(job);
        // A free spare lingering for more work wakes.
        self.signal.bump();
        self.start_spare_if_needed();
    }

    /// Runs the oldest task handed on, if any is left; whether it ran one.
    pub(super) fn run_oldest(self: &Arc<Self>) -> bool {
        // Taken out of the lock before it runs.
        let job = self.handed_on().pop_front();
        job.map(|job| job.run(self)).is_some()
    }

    fn handed_on(&self) -> MutexGuard<'_, VecDeque<Job>> {
        // Nothing panics under this lock.
        self.handed_on.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nothing_handed_on(&self) -> bool {
        self.handed_on().is_empty()
    }

    /// When tasks were handed on and no spare thread is free to take them, starts one: a
    /// thread that runs them (helping, as a pool thread does, while a task of its own waits),
    /// lingers a moment for more, then ends. The pool thus grows by a thread while tasks would
    /// otherwise wait for threads that all wait too deep to take them.
    pub(super) fn start_spare_if_needed(self: &Arc<Self>) {
        if self.nothing_handed_on() || !self.claim_free_spare() {
            return;
        }
        let state = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name("threaded-spare".into())
            .spawn(move || state.serve_as_spare());
        if let Err(error) = started {
            self.free_spares.fetch_sub(1, Ordering::SeqCst);
            // The pool's threads still run the tasks once their waits are shallow again.
            tracing::warn!(%error, "threaded strategy: could not start a spare thread");
        }
    }

    /// Counts one more free spare, unless one is free already.
    fn claim_free_spare(&self) -> bool {
        (self.free_spares)
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// A spare thread's life.
    fn serve_as_spare(self: Arc<Self>) {
        SPARE.with(|spare| spare.set(true));
        loop {
            {
                // Counted out as it stops, by a panic too: another spare can then start.
                let _free = Decrement(&self.free_spares);
                while self.ran_one_within(LINGER) {}
            }
            // A task handed on while this thread still counted as free started no spare: look
            // again.
            if self.nothing_handed_on() || !self.claim_free_spare() {
                return;
            }
        }
    }

    /// Runs the oldest task handed on, waiting up to `linger` for one; whether it ran one.
    fn ran_one_within(self: &Arc<Self>, linger: Duration) -> bool {
        let until = Instant::now() + linger;
        loop {
            let seen = self.signal.epoch();
            if self.run_oldest() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.signal.sleep_unless_moved(seen, left);
        }
    }

    /// While this thread, if a spare, sleeps in a wait, it is not free: another spare may start.
    pub(super) fn asleep(&self) -> Option<impl Drop + '_> {
        SPARE.with(Cell::get).then(|| {
            self.free_spares.fetch_sub(1, Ordering::SeqCst);
            Increment(&self.free_spares)
        })
    }
}

thread_local! {
    /// Set on a spare thread.
    static SPARE: Cell<bool> = const { Cell::new(false) };
}

/// Decrements a count when dropped.
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Increments a count when dropped.
struct Increment<'a>(&'a AtomicUsize);

impl Drop for Increment<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}
