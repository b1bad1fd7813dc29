//! Completions handed straight to their submitting side, which confirms each with the run id.
//!
//! The confirmations come back on one subscription of the worker's own (`{inbox}.<token>`), each
//! handed to the hand-over waiting for it; a hand-over that ends, however it ends, takes its
//! entry out, so nothing is kept for a confirmation that never comes. A side that let one wait
//! past [`CONFIRMED_WITHIN`] (its process stuck, its subscription overflowing) has its
//! completions stored at once for [`QUIET_FOR`]: its waits never hold the worker's places for
//! long, nor the other sides' tasks behind them. A wait that ran out while this worker lost its
//! own connection blames no side.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::Shared;

/// How long a completion handed directly waits for its submitting side's confirmation before
/// it is stored instead (a confirmation lost or late makes a duplicate, which that side drops).
const CONFIRMED_WITHIN: Duration = Duration::from_secs(2);

/// How long the completions of a side that did not confirm in time are stored without a try.
const QUIET_FOR: Duration = Duration::from_secs(30);

/// The most sides kept as not confirming; past it, a side is tried each time.
const QUIET_KEPT: usize = 1024;

/// The longest token a side's subject for completions may end with (an inbox token is 22).
const LONGEST_SIDE: usize = 256;

/// The confirmations waited for, and the sides that did not confirm lately.
#[derive(Default)]
pub(super) struct Confirmations {
    /// The last token given to a hand-over.
    last: u64,
    /// Each hand-over waiting, by its token.
    waiting: HashMap<u64, oneshot::Sender<bytes::Bytes>>,
    /// Subjects of the sides that did not confirm in time, each with when to try it again.
    quiet: HashMap<String, Instant>,
}

/// A hand-over's place among the confirmations waited for; taken out when it is dropped.
struct Waiting<'a> {
    confirmations: &'a Mutex<Confirmations>,
    token: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.confirmations).waiting.remove(&self.token);
    }
}

fn lock(confirmations: &Mutex<Confirmations>) -> MutexGuard<'_, Confirmations> {
    // Nothing under the lock can panic half-way.
    confirmations.lock().unwrap_or_else(|p| p.into_inner())
}

impl Confirmations {
    /// A place to wait for a confirmation; `None` when the side at `subject` is quiet now.
    fn wait<'a>(
        confirmations: &'a Mutex<Confirmations>,
        subject: &str,
    ) -> Option<(Waiting<'a>, oneshot::Receiver<bytes::Bytes>)> {
        let mut these = lock(confirmations);
        if these
            .quiet
            .get(subject)
            .is_some_and(|until| *until > Instant::now())
        {
            return None;
        }
        these.last += 1;
        let token = these.last;
        let (confirm, confirmed) = oneshot::channel();
        these.waiting.insert(token, confirm);
        Some((
            Waiting {
                confirmations,
                token,
            },
            confirmed,
        ))
    }

    /// The side at `subject` did not confirm in time.
    fn quiet(&mut self, subject: &str) {
        let now = Instant::now();
        if self.quiet.len() >= QUIET_KEPT {
            self.quiet.retain(|_, until| *until > now);
        }
        if self.quiet.len() < QUIET_KEPT {
            self.quiet.insert(subject.to_owned(), now + QUIET_FOR);
        }
    }
}

impl Shared {
    /// Whether `subject` is a submitting side's own subject for completions: `{prefix}.answer.`
    /// and one token. A task published by hand could name any other, an API's among them.
    pub(super) fn answers_there(&self, subject: &str) -> bool {
        subject.strip_prefix(&self.answers).is_some_and(|side| {
            side.len() <= LONGEST_SIDE && super::answerable(side) && !side.contains(['.', '*', '>'])
        })
    }

    /// Hands a completion to its submitting side; whether that side confirmed it with the run's
    /// id. A reply of anyone else (a stream's acknowledgement, or the server's word that nobody
    /// listens there) is no confirmation.
    pub(super) async fn hand(&self, subject: &str, run: &str, bytes: bytes::Bytes) -> bool {
        let Some((waiting, confirmed)) = Confirmations::wait(&self.confirmations, subject) else {
            return false;
        };
        let reply = format!("{}.{}", self.replies, waiting.token);
        let statistics = self.client.statistics();
        let connects = statistics.connects.load(Ordering::Relaxed);
        let sent = self
            .client
            .publish_with_reply(subject.to_owned(), reply, bytes);
        if sent.await.is_err() {
            return false;
        }
        match tokio::time::timeout(CONFIRMED_WITHIN, confirmed).await {
            Ok(Ok(confirmation)) => confirmation == run.as_bytes(),
            Ok(Err(_)) => false,
            Err(_) => {
                // The side is to blame only where this worker kept its own connection meanwhile.
                let kept = self.client.connection_state() == State::Connected
                    && statistics.connects.load(Ordering::Relaxed) == connects;
                if kept {
                    lock(&self.confirmations).quiet(subject);
                }
                false
            }
        }
    }
}

/// Hands each confirmation to the hand-over waiting for it; one that no longer waits is dropped.
pub(super) async fn route(shared: Arc<Shared>, mut replies: async_nats::Subscriber) {
    while let Some(reply) = replies.next().await {
        let token = reply
            .subject
            .rsplit('.')
            .next()
            .and_then(|t| t.parse().ok());
        let waiting = token.and_then(|token| lock(&shared.confirmations).waiting.remove(&token));
        if let Some(waiting) = waiting {
            let _ = waiting.send(reply.payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However a hand-over ends (here, dropped while it waits, as at a timeout), nothing of it
    /// is kept.
    #[test]
    fn a_hand_over_that_ends_unconfirmed_leaves_nothing_behind() {
        let confirmations = Mutex::default();
        let (waiting, _confirmed) = Confirmations::wait(&confirmations, "x.answer.a").unwrap();
        assert_eq!(lock(&confirmations).waiting.len(), 1);
        drop(waiting);
        assert!(lock(&confirmations).waiting.is_empty());
    }

    /// A side that did not confirm in time is not tried again for a while; the others are, and
    /// the sides kept so stay bounded.
    #[test]
    fn a_side_that_did_not_confirm_is_let_be_for_a_while() {
        let confirmations = Mutex::default();
        lock(&confirmations).quiet("x.answer.a");
        assert!(Confirmations::wait(&confirmations, "x.answer.a").is_none());
        assert!(Confirmations::wait(&confirmations, "x.answer.b").is_some());
        for side in 0..2 * QUIET_KEPT {
            lock(&confirmations).quiet(&format!("x.answer.{side}"));
        }
        assert_eq!(lock(&confirmations).quiet.len(), QUIET_KEPT);
    }
}
