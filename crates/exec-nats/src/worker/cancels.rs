//! The runs a worker was told to withdraw: stopped where they run here, remembered (bounded)
//! where they have not come yet.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::sync::oneshot;

/// How many cancelled run ids a worker remembers, to skip those tasks if they reach it later.
const REMEMBERED_CANCELS: usize = 10_000;

/// The longest cancellation a worker remembers: a run id (`{client}.{n}`, an inbox token and a
/// counter) is far shorter; anything longer on the subject is no run's.
const LONGEST_RUN_ID: usize = 256;

#[derive(Default)]
pub(super) struct Cancels {
    /// Runs cancelled before this worker saw them (oldest first, bounded).
    pub(super) remembered: HashSet<String>,
    order: VecDeque<String>,
    /// Runs in progress here, each delivery with the switch that drops its node's future. A run
    /// delivered again while it runs here (a redelivery, or a copy republished after a
    /// reconnection) runs beside the first, each answered; the submitting side keeps one answer.
    pub(super) running: HashMap<String, Vec<(u64, oneshot::Sender<()>)>>,
    /// Tells the deliveries of one run apart.
    pub(super) deliveries: u64,
}

impl Cancels {
    /// Run `run` was withdrawn: stops its deliveries running here, or remembers it, to skip
    /// it if it comes.
    pub(super) fn cancel(&mut self, run: String) {
        if let Some(deliveries) = self.running.remove(&run) {
            for (_, stop) in deliveries {
                let _ = stop.send(());
            }
            return;
        }
        // Kept only while it could be a run id: 10,000 messages of the server's largest would
        // take gigabytes.
        if run.len() <= LONGEST_RUN_ID && self.remembered.insert(run.clone()) {
            self.order.push_back(run);
            if self.order.len() > REMEMBERED_CANCELS
                && let Some(old) = self.order.pop_front()
            {
                self.remembered.remove(&old);
            }
        }
    }

    /// Delivery `delivery` of `run` ended here: only its own switch goes.
    pub(super) fn ran(&mut self, run: &str, delivery: u64) {
        if let Some(running) = self.running.get_mut(run) {
            running.retain(|(d, _)| *d != delivery);
            if running.is_empty() {
                self.running.remove(run);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Anyone may publish on the cancellation subject: a message no run id is as long as is not
    /// kept, so what a worker remembers stays small whatever comes.
    #[test]
    fn a_cancellation_longer_than_any_run_id_is_not_remembered() {
        let mut cancels = Cancels::default();
        cancels.cancel("client.1".to_owned());
        cancels.cancel("x".repeat(1 << 20));
        assert_eq!(cancels.order.len(), 1);
        assert!(cancels.remembered.contains("client.1"));
    }
}
