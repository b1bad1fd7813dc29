//! [`Tracker`]: the bookkeeping every strategy shares: accepting or not, tasks in flight, counts,
//! and waiting (bounded) for the tasks in flight to finish.

use std::time::{Duration, Instant};

use task_core::{Outcome, StrategyStats};

use crate::support::wait_for;
use crate::sync::{AtomicBool, AtomicU64, Ordering, fence};
use tokio::sync::Notify;

/// Counts tasks in and out, refuses new ones after [`Tracker::close`], and wakes
/// [`Tracker::drain`] when the last one leaves.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    closed: AtomicBool,
    in_flight: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    idle: Notify,
}

/// Proof that a task was admitted; dropping it (even by unwinding) lets it out.
#[cfg(any(feature = "process", test))]
#[derive(Debug)]
pub(crate) struct Admission<'a> {
    tracker: &'a Tracker,
}

impl Tracker {
    /// Admits a task unless the tracker is closed.
    #[cfg(any(feature = "process", test))]
    pub(crate) fn admit(&self) -> Option<Admission<'_>> {
        self.count_in();
        self.unless_closed(Admission { tracker: self })
    }

    /// Counts a task in; the admission made next counts it out when dropped.
    fn count_in(&self) {
        // Count first, then check: `close` stores first, then the closer reads the count, so a
        // task is either refused or seen by `drain`. The fences on both sides make that hold
        // (a store then a load on different atomics needs them).
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The admission of a task just counted in, or, once closed, `None` (dropping the admission
    /// counts the task out again).
    fn unless_closed<A>(&self, admission: A) -> Option<A> {
        if self.closed.load(Ordering::SeqCst) {
            return None;
        }
        Some(admission)
    }

    fn count_out(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Records how an admitted task ended.
    pub(crate) fn record(&self, outcome: &Outcome) {
        let counter = if outcome.is_ok() {
            &self.succeeded
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Refuses every later task.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Whether the tracker is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Tasks admitted and not yet out.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no task is in flight or `grace` has passed (a grace too long to add to now:
    /// until no task is in flight). Returns whether it drained.
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        let deadline = Instant::now().checked_add(grace);
        wait_for(&self.idle, || self.in_flight() == 0, deadline).await
    }

    pub(crate) fn stats(&self) -> StrategyStats {
        StrategyStats::new(
            self.in_flight(),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            !self.is_closed(),
        )
    }
}

#[cfg(any(feature = "process", test))]
impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.tracker.count_out();
    }
}

/// Admissions that own their tracker: only the strategies that launch tasks need them.
#[cfg(any(feature = "async", feature = "threaded"))]
pub(crate) mod owned {
    use std::sync::Arc;

    use super::Tracker;

    impl Tracker {
        /// [`admit`](Self::admit) for a task that outlives the caller's borrow (a launched run).
        pub(crate) fn admit_owned(self: &Arc<Self>) -> Option<OwnedAdmission> {
            self.count_in();
            self.unless_closed(OwnedAdmission {
                tracker: Arc::clone(self),
            })
        }
    }

    /// An [`Admission`](super::Admission) holding its tracker.
    #[derive(Debug)]
    pub(crate) struct OwnedAdmission {
        tracker: Arc<Tracker>,
    }

    impl OwnedAdmission {
        /// Records how the task ended and counts it out.
        pub(crate) fn record(self, outcome: &task_core::Outcome) {
            self.tracker.record(outcome);
        }
    }

    impl Drop for OwnedAdmission {
        fn drop(&mut self) {
            self.tracker.count_out();
        }
    }
}

#[cfg(all(test, exec_loom))]
mod loom_tests {
    use super::*;

    /// `admit` racing `close`: a task is either refused, or counted when `close` returns, so a
    /// drain that starts after `close` never misses it.
    #[test]
    fn a_task_is_refused_or_seen_by_the_closer() {
        loom::model(|| {
            let tracker = std::sync::Arc::new(Tracker::default());
            let admitter = {
                let tracker = std::sync::Arc::clone(&tracker);
                loom::thread::spawn(move || {
                    let admission = tracker.admit();
                    let admitted = admission.is_some();
                    // The task is still running: keep it counted.
                    std::mem::forget(admission);
                    admitted
                })
            };
            tracker.close();
            let seen = tracker.in_flight();
            let admitted = admitter.join().unwrap();
            assert!(!admitted || seen >= 1, "an admitted task was missed");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use task_core::{TaskError, Value};

    #[test]
    fn admit_record_close() {
        let t = Tracker::default();
        let a = t.admit().unwrap();
        assert_eq!(t.in_flight(), 1);
        t.record(&Ok(Value::new(1)));
        t.record(&Err(TaskError::strategy("x")));
        drop(a);
        assert_eq!(t.in_flight(), 0);
        t.close();
        assert!(t.admit().is_none());
        assert_eq!(t.in_flight(), 0, "a refused task is not counted");
        assert_eq!(t.stats(), StrategyStats::new(0, 1, 1, false));
    }

    #[test]
    fn drain_waits_for_the_last_task_or_the_grace_period() {
        let t = std::sync::Arc::new(Tracker::default());
        futures::executor::block_on(async {
            assert!(t.drain(Duration::from_secs(5)).await, "nothing in flight");
            let a = t.admit().unwrap();
            assert!(!t.drain(Duration::from_millis(10)).await, "still in flight");
            let t2 = std::sync::Arc::clone(&t);
            let waiter = std::thread::spawn(move || {
                futures::executor::block_on(t2.drain(Duration::from_secs(60)))
            });
            std::thread::sleep(Duration::from_millis(20));
            drop(a);
            assert!(waiter.join().unwrap());
        });
    }
}
