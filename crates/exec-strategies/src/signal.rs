//! [`Signal`]: the epoch counter and condition variable that threads waiting in
//! [`block_on`](crate::block_on) sleep on.

use std::sync::Arc;
use std::task::Wake;
use std::time::Duration;

use crate::sync::{AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, fence};

/// Wakes threads of one pool that wait in [`block_on`]: bumped when one of their futures is
/// woken and when new work is given to the pool, so a waiting thread either runs that work or
/// re-polls its future.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    epoch: AtomicU64,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Signal {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // Store-then-load against the sleeper's increment-then-load: the fences make one side see
        // the other's write (a lost wake-up otherwise).
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this bump after a sleeper's check of the epoch.
            drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()));
            self.wake.notify_all();
        }
    }

    /// Sleeps until the epoch moves past `seen`, or for at most `backstop`: the pool may be
    /// given work that bumps no signal (a plain `ThreadPool::spawn`), and a waiting thread
    /// finds it after that long. It may return early; the caller checks again.
    pub(crate) fn sleep_unless_moved(&self, seen: u64, backstop: Duration) {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let guard = if self.epoch() == seen {
            let woken = self.wake.wait_timeout(guard, backstop);
            woken.map_or_else(|p| p.into_inner().0, |(guard, _)| guard)
        } else {
            guard
        };
        drop(guard);
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.bump();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.bump();
    }
}

#[cfg(all(test, exec_loom))]
mod loom_tests {
    use super::*;

    /// Waits as `block_on` does: until the epoch moves past `seen`.
    fn wait_past(signal: &Signal, seen: u64) {
        while signal.epoch() == seen {
            signal.sleep_unless_moved(seen, Duration::from_secs(60));
        }
    }

    /// A bump that races a sleeper's check is never lost: the sleeper always wakes.
    #[test]
    fn a_wake_racing_a_sleeper_is_never_lost() {
        loom::model(|| {
            let signal = Arc::new(Signal::default());
            let seen = signal.epoch();
            let waker = {
                let signal = Arc::clone(&signal);
                loom::thread::spawn(move || signal.bump())
            };
            wait_past(&signal, seen);
            waker.join().unwrap();
            assert!(signal.epoch() > seen);
        });
    }

    /// Two sleepers and two bumps: both sleepers wake whatever the interleaving.
    #[test]
    fn every_sleeper_wakes() {
        loom::model(|| {
            let signal = Arc::new(Signal::default());
            let seen = signal.epoch();
            let sleeper = {
                let signal = Arc::clone(&signal);
                loom::thread::spawn(move || wait_past(&signal, seen))
            };
            let bumper = {
                let signal = Arc::clone(&signal);
                loom::thread::spawn(move || signal.bump())
            };
            wait_past(&signal, seen);
            sleeper.join().unwrap();
            bumper.join().unwrap();
        });
    }
}
