//! Shutdown: a coordinator stops taking new requests, lets what it accepted end (cancelling what
//! is still open at the deadline), then shuts its strategies down, waiting for no subscriber.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::coordinator::Coordinator;
use crate::request::{RequestCell, StrategyRef};

/// How long shutdown waits, after cancelling what was still open, for requests that were ending
/// on another thread at that moment.
const CANCEL_SETTLE: Duration = Duration::from_secs(5);

/// How long the strategies have, at least, to stop what was cancelled at the deadline: an async
/// node stops at its next poll, so its future is dropped before shutdown returns; a node that
/// cannot be interrupted (blocking code on a thread) is left to finish and logged.
const STOP_SETTLE: Duration = Duration::from_millis(250);

impl Coordinator {
    /// Shuts down with the grace period set on the builder (default
    /// [`DEFAULT_SHUTDOWN_GRACE`](crate::DEFAULT_SHUTDOWN_GRACE)).
    pub async fn shutdown(&self) {
        self.shutdown_with_grace(self.inner.grace).await;
    }

    /// Shuts down gracefully within `grace` (a grace too long to add to now waits as long as the
    /// requests take), plus, when it has to cancel at the deadline, at most about 5 s for the
    /// cancelled requests to end and the strategies to stop them, with strategies that keep
    /// their grace, as the built-in ones do (step 4):
    ///
    /// 1. stops taking new requests: until the deadline it accepts only a task whose parent is
    ///    a request still open here (a child it may need to finish), and only where the task
    ///    needs no place of its own under its mode's limit; submissions waiting for a place are
    ///    rejected as shut down at once (batch tasks, accepted, still take their places as
    ///    they free);
    /// 2. lets every accepted request run until it ends or `grace` has passed; no retry starts
    ///    after this point (a request waiting out a backoff ends at once with its last error);
    /// 3. at the deadline, cancels what is still open: each such request ends at once as
    ///    [`JobResult::Cancelled`](crate::JobResult::Cancelled), its caller answered and its
    ///    failure message announced, so no request is left without its outcome;
    /// 4. shuts every strategy down exactly once (a strategy serving several modes once), with
    ///    what is left of `grace` (at least a moment after cancelling at the deadline, so that
    ///    the cancelled async nodes are dropped before this returns; blocking code on a thread
    ///    cannot be interrupted and is left to finish), and waits for each: the built-in ones
    ///    return about when that grace is over; a custom strategy that ignores its grace holds
    ///    this call as long as it takes.
    ///
    /// Nothing here waits for a subscriber of the bus. The publisher belongs to the application:
    /// shut it down after this to drain it for its subscribers. Calling this again once it
    /// returned does not shut strategies down again. A call that comes while the first is still
    /// shutting them down (a second, shorter shutdown: an impatient second Ctrl-C) asks them
    /// again with its own grace, which their contract allows; the built-in strategies then cut
    /// the first call's wait to the sooner deadline, so both calls return about when the shorter
    /// grace is over.
    ///
    /// Do not await it inside a node of this coordinator: it waits for that node's own request,
    /// which cannot end before this returns, so that request is cancelled at the deadline (and
    /// with no deadline this never returns). A node that shuts its coordinator down spawns it
    /// (`tokio::spawn(async move { coordinator.shutdown().await })`) and returns.
    ///
    /// # Panics
    ///
    /// When it has to wait with a finite `grace` (for requests in flight, or for a strategy's
    /// tasks still running, such as a timed-out threaded node), the grace is a tokio timer: on a
    /// runtime built without its time driver this panics, as [`tokio::time::timeout`] does.
    pub async fn shutdown_with_grace(&self, grace: Duration) {
        // On the runtime's clock, as every tokio timer: a paused one may be far from the wall
        // clock's.
        let deadline = crate::inner::deadline_after(grace);
        let inner = &self.inner;
        inner.closing.store(true, Ordering::SeqCst);
        // Submissions waiting for a place are refused now. The limits stay open until the
        // accepted requests have ended: batch tasks still waiting take their places as they free.
        inner.closing_begun.notify_waiters();
        // No attempt starts after shutdown began: a request waiting out a retry's backoff ends
        // now with its last attempt's error.
        let open = inner.open_cells();
        let waiting = open.len();
        for cell in open {
            cell.end_backoff();
        }
        if waiting > 0 {
            tracing::info!(
                open = waiting,
                ?grace,
                "coordinator shutdown: waiting for the requests in flight"
            );
        }
        let drained = wait_for(&inner.drained, || inner.drained(), deadline).await;
        if !drained {
            inner.past_deadline.store(true, Ordering::SeqCst);
            let open = inner.open_cells();
            let cancelled = open.len();
            RequestCell::cancel_all(open);
            tracing::warn!(
                cancelled,
                "coordinator shutdown: grace period over; cancelled the requests still open"
            );
            // A cancelled request ends at once; one that was ending on another thread meanwhile
            // closes its job a moment later.
            let settle = Instant::now().checked_add(CANCEL_SETTLE);
            if !wait_for(&inner.drained, || inner.drained(), settle).await {
                tracing::error!(
                    open_jobs = inner.open_jobs(),
                    "coordinator shutdown: requests still open after cancellation"
                );
            }
        }
        for limit in inner.modes.iter().filter_map(|mode| mode.limit.as_ref()) {
            limit.close();
        }
        let mut remaining = deadline.map_or(Duration::MAX, |deadline| {
            deadline.saturating_duration_since(Instant::now())
        });
        if !drained {
            remaining = remaining.max(STOP_SETTLE);
        }
        // Until a call has shut the strategies down, each call asks them, with its own grace, as
        // their contract allows: a second, shorter shutdown that comes while the first is under
        // way returns about when its own grace is over, and one whose caller stopped waiting
        // leaves them to the next call.
        if !inner.strategies_shut.load(Ordering::SeqCst) {
            shut_strategies(&inner.modes, remaining).await;
            inner.strategies_shut.store(true, Ordering::SeqCst);
        }
    }
}

/// Shuts each strategy down (one serving several modes once), giving each `grace`.
async fn shut_strategies(modes: &[crate::inner::Mode], grace: Duration) {
    let mut unique: Vec<&StrategyRef> = Vec::new();
    for strategy in modes.iter().map(|mode| &mode.strategy) {
        if !unique.iter().any(|s| Arc::ptr_eq(s, strategy)) {
            unique.push(strategy);
        }
    }
    futures::future::join_all(unique.into_iter().map(|s| s.shutdown(grace))).await;
}

/// Waits until `done()` holds or `deadline` passes (never, when it is `None`), re-checking each
/// time `notify` wakes its waiters (whoever changes what `done` reads calls
/// [`Notify::notify_waiters`] after the change). Returns whether `done()` held.
async fn wait_for(notify: &Notify, done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
    if done() {
        // No timer needed.
        return true;
    }
    let until_done = async {
        loop {
            // Created before the check, so a notification between the check and the await is
            // kept.
            let notified = notify.notified();
            if done() {
                return;
            }
            notified.await;
        }
    };
    match deadline {
        Some(deadline) => {
            let _ = tokio::time::timeout_at(deadline, until_done).await;
            done()
        }
        None => {
            until_done.await;
            true
        }
    }
}
