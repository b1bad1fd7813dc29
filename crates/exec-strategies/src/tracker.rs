//! [`Tracker`]: the bookkeeping every strategy shares: accepting or not, tasks in flight, counts,
//! and waiting (bounded) for the tasks in flight to finish.

#[cfg(any(feature = "async", feature = "threaded", test))]
use std::time::Duration;

use task_core::{Outcome, StrategyStats};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts tasks in and out, refuses new ones after [`Tracker::close`], and lets
/// [`Tracker::drain`] wait for the last one.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    tasks: TaskTracker,
    succeeded: AtomicU64,
    failed: AtomicU64,
    stopped: AtomicU64,
    /// The deadline of the latest drain begun: one under way takes it when it is sooner than
    /// its own, so a second, shorter shutdown cuts the first one's wait too.
    #[cfg(any(feature = "async", feature = "threaded", test))]
    deadlines: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

impl Tracker {
    /// Admits a task unless the tracker is closed: the task is in flight until the token drops
    /// (even by unwinding).
    pub(crate) fn admit(&self) -> Option<TaskTrackerToken> {
        // Counted before the check: a task is either refused or counted when `close` returns,
        // so a drain after `close` never misses it (the count and the flag are one atomic).
        let token = self.tasks.token();
        (!self.tasks.is_closed()).then_some(token)
    }

    /// Records how an admitted task ended.
    /// A cancellation error says the task was stopped.
    pub(crate) fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Ok(_) => &self.succeeded,
            Err(error) if error.is_cancelled() => &self.stopped,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an admitted task dropped before it ended: stopped (its request was cancelled or
    /// timed out, or its runtime went away), or failed when a panic drops it.
    fn unfinished_dropped(&self) {
        let counter = if std::thread::panicking() {
            &self.failed
        } else {
            &self.stopped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the task stopped when the guard drops, unless [`Unfinished::ended`] says it
    /// ended: for a run whose future may be dropped at any await.
    #[cfg(feature = "process")]
    pub(crate) fn unfinished(&self) -> Unfinished<'_> {
        Unfinished(Some(self))
    }

    /// Refuses every later task.
    pub(crate) fn close(&self) {
        self.tasks.close();
    }

    /// Whether the tracker is closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.tasks.is_closed()
    }

    /// Tasks admitted and not yet out.
    pub(crate) fn in_flight(&self) -> u64 {
        self.tasks.len() as u64
    }

    /// After [`close`](Self::close): waits, with no time limit, until no task is in flight.
    pub(crate) async fn wait(&self) {
        self.tasks.wait().await;
    }

    /// After [`close`](Self::close): waits until no task is in flight or `grace` has passed (a
    /// grace too long to add to now: until no task is in flight), or the sooner grace of a drain
    /// begun meanwhile has. Returns whether it drained.
    #[cfg(any(feature = "async", feature = "threaded", test))]
    pub(crate) async fn drain(&self, grace: Duration) -> bool {
        if self.tasks.is_empty() {
            // No timer needed.
            return true;
        }
        // On the runtime's clock, as every tokio timer: a paused one may be far from the wall
        // clock's.
        let now = tokio::time::Instant::now().into_std();
        let mut deadline =
            task_core::deadline_after(now, grace).map(tokio::time::Instant::from_std);
        if deadline.is_some() {
            self.deadlines.send_replace(deadline);
        }
        let mut later = self.deadlines.subscribe();
        loop {
            let timer = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.wait() => return true,
                () = timer => return self.tasks.is_empty(),
                Ok(()) = later.changed() => {
                    if let Some(sooner) = *later.borrow_and_update() {
                        deadline = Some(deadline.map_or(sooner, |own| own.min(sooner)));
                    }
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> StrategyStats {
        StrategyStats::new(
            self.in_flight(),
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            !self.is_closed(),
        )
        .with_stopped(self.stopped.load(Ordering::Relaxed))
    }
}

/// An admission holding its tracker, for a task that outlives the caller's borrow (a launched
/// run): only the strategies that launch tasks need it.
///
/// Dropped without [`record`](OwnedAdmission::record) (its request was cancelled, it never
/// started, its runtime went away with it), it counts its task stopped, or failed when a panic
/// drops it.
#[cfg(any(feature = "async", feature = "threaded"))]
#[derive(Debug)]
pub(crate) struct OwnedAdmission {
    /// `None` once recorded.
    tracker: Option<std::sync::Arc<Tracker>>,
    _token: TaskTrackerToken,
}

#[cfg(any(feature = "async", feature = "threaded"))]
impl Tracker {
    /// [`admit`](Self::admit), holding the tracker.
    pub(crate) fn admit_owned(self: &std::sync::Arc<Self>) -> Option<OwnedAdmission> {
        Some(OwnedAdmission {
            _token: self.admit()?,
            tracker: Some(std::sync::Arc::clone(self)),
        })
    }
}

#[cfg(any(feature = "async", feature = "threaded"))]
impl OwnedAdmission {
    /// Records how the task ended and counts it out.
    pub(crate) fn record(mut self, outcome: &Outcome) {
        if let Some(tracker) = self.tracker.take() {
            tracker.record(outcome);
        }
    }
}

/// A task counted in, with the completion its outcome goes to. The fields drop in the order
/// declared, however the run ends (cancelled, dropped unrun, unwinding): the task is counted out
/// before its completion says the run is over, which may free its place under a coordinator's
/// limit for another request, whose caller then reads current stats.
#[cfg(any(feature = "async", feature = "threaded"))]
pub(crate) struct Admitted {
    pub(crate) admission: OwnedAdmission,
    pub(crate) completion: task_core::Completion,
}

#[cfg(any(feature = "async", feature = "threaded"))]
impl Admitted {
    /// Counts the task out, then delivers its outcome.
    pub(crate) fn end(self, outcome: Outcome) {
        self.admission.record(&outcome);
        self.completion.complete(outcome);
    }
}

#[cfg(any(feature = "async", feature = "threaded"))]
impl Drop for OwnedAdmission {
    fn drop(&mut self) {
        if let Some(tracker) = &self.tracker {
            tracker.unfinished_dropped();
        }
    }
}

/// Counts its task stopped when dropped, unless it [`ended`](Self::ended) (failed when a panic
/// drops it).
#[cfg(feature = "process")]
pub(crate) struct Unfinished<'a>(Option<&'a Tracker>);

#[cfg(feature = "process")]
impl Unfinished<'_> {
    /// The task ended with an outcome, to be recorded.
    pub(crate) fn ended(mut self) {
        self.0 = None;
    }
}

#[cfg(feature = "process")]
impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(tracker) = self.0 {
            tracker.unfinished_dropped();
        }
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

    #[tokio::test]
    async fn drain_waits_for_the_last_task_or_the_grace_period() {
        let t = Tracker::default();
        t.close();
        assert!(t.drain(Duration::from_secs(5)).await, "nothing in flight");
        let t = std::sync::Arc::new(Tracker::default());
        let a = t.admit().unwrap();
        t.close();
        assert!(!t.drain(Duration::from_millis(10)).await, "still in flight");
        let t2 = std::sync::Arc::clone(&t);
        let waiter = tokio::spawn(async move { t2.drain(Duration::from_secs(60)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert!(waiter.await.unwrap());
        assert!(
            t.drain(Duration::MAX).await,
            "no deadline, nothing in flight"
        );
    }

    #[tokio::test]
    async fn a_shorter_drain_cuts_the_wait_of_one_under_way() {
        let t = std::sync::Arc::new(Tracker::default());
        let _running = t.admit().unwrap();
        t.close();
        let t2 = std::sync::Arc::clone(&t);
        let first = tokio::spawn(async move { t2.drain(Duration::from_secs(600)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!t.drain(Duration::from_millis(10)).await, "still in flight");
        let first = tokio::time::timeout(Duration::from_secs(20), first).await;
        assert!(!first.expect("the first drain's wait was cut").unwrap());
    }
}
