//! Small helpers for strategy authors and the coordinator.

use std::time::Instant;

use futures::future::{self, Either};
use tokio::sync::Notify;

/// Waits until `done()` holds or `deadline` passes (never, when it is `None`), re-checking each
/// time `notify` wakes its waiters (whoever changes what `done` reads must call
/// [`Notify::notify_waiters`] after the change). Returns whether `done()` held.
pub async fn wait_for(notify: &Notify, done: impl Fn() -> bool, deadline: Option<Instant>) -> bool {
    let mut timer = None;
    loop {
        // Created before the check, so a notification between the check and the await is kept.
        let notified = notify.notified();
        if done() {
            return true;
        }
        let Some(deadline) = deadline else {
            notified.await;
            continue;
        };
        let timer = timer.get_or_insert_with(|| Box::pin(sleep_until(deadline)));
        let notified = std::pin::pin!(notified);
        if let Either::Right(_) = future::select(notified, timer.as_mut()).await {
            return done();
        }
    }
}

/// Sleeps until `deadline` without needing a tokio time driver (which a user's runtime may not
/// have enabled): a short-lived thread fires a oneshot. Meant for rare waits such as shutdown
/// deadlines, not for per-task timers.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
///
/// # futures::executor::block_on(async {
/// let start = Instant::now();
/// exec_strategies::support::sleep_until(start + Duration::from_millis(5)).await;
/// assert!(start.elapsed() >= Duration::from_millis(5));
/// # });
/// ```
pub async fn sleep_until(deadline: Instant) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("exec-strategies-deadline".into())
        .spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            let _ = tx.send(());
        });
    if spawned.is_ok() {
        let _ = rx.await;
    }
}
