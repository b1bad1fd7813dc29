//! Shutdown's grace for callback subscribers: waiting for their threads, bounded by a deadline,
//! without blocking the async runtime it is awaited on.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::mpsc as std_mpsc;
use std::task::Poll;
use std::time::Instant;

use tokio::sync::oneshot;

/// Waits until every callback thread has ended or `deadline` passed, without blocking the
/// runtime: each thread closes its channel when it ends, and a timer thread fires at the deadline.
pub(crate) async fn wait_for_callbacks(
    callbacks: HashMap<u64, oneshot::Receiver<()>>,
    deadline: Option<Instant>,
) {
    if callbacks.is_empty() {
        return;
    }
    let mut pending: Vec<(u64, oneshot::Receiver<()>)> = callbacks.into_iter().collect();
    // Dropping `_cancel` ends the timer thread early when every callback finished first.
    let (_cancel, mut timer) = match deadline {
        Some(deadline) => match start_timer(deadline) {
            Some((cancel, timer)) => (Some(cancel), Some(timer)),
            None => {
                // No timer: waiting could last forever, which the grace forbids.
                for (id, _) in &pending {
                    tracing::warn!(
                        subscriber = id,
                        "no timer for the shutdown grace; callback subscriber left to finish on its own"
                    );
                }
                return;
            }
        },
        None => (None, None),
    };
    poll_fn(|cx| {
        pending.retain_mut(|(_, done)| Pin::new(done).poll(cx).is_pending());
        if pending.is_empty() {
            return Poll::Ready(());
        }
        match timer.as_mut() {
            Some(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            None => Poll::Pending,
        }
    })
    .await;
    for (id, _) in pending {
        tracing::warn!(
            subscriber = id,
            "callback subscriber still busy when the shutdown grace ended; left to finish on its own"
        );
    }
}

/// A thread that sends on the returned channel at `deadline`, unless the returned sender is
/// dropped first. `None` when the thread could not start.
fn start_timer(deadline: Instant) -> Option<(std_mpsc::Sender<()>, oneshot::Receiver<()>)> {
    let (cancel_tx, cancel_rx) = std_mpsc::channel::<()>();
    let (fire_tx, fire_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("pubsub-shutdown-grace".into())
        .spawn(move || {
            let wait = deadline.saturating_duration_since(Instant::now());
            if let Err(std_mpsc::RecvTimeoutError::Timeout) = cancel_rx.recv_timeout(wait) {
                let _ = fire_tx.send(());
            }
        })
        .ok()?;
    Some((cancel_tx, fire_rx))
}
