//! Submissions waiting for a place under a mode's limit, which are not recorded yet: by request
//! id, so that [`Coordinator::cancel`](crate::Coordinator::cancel) reaches them too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use task_core::RequestId;
use tokio::sync::oneshot;

/// The submissions waiting for a place, each told through its sender when cancelled.
#[derive(Default)]
pub(crate) struct Waiting {
    next: AtomicU64,
    by_id: Mutex<HashMap<RequestId, Vec<Told>>>,
}

/// A waiting submission: its serial number in [`Waiting`], and how it is told.
type Told = (u64, oneshot::Sender<()>);

/// A submission's entry in [`Waiting`], taken out when dropped (it got its place, was refused,
/// or its caller stopped waiting).
pub(crate) struct Entry<'a> {
    waiting: &'a Waiting,
    id: RequestId,
    serial: u64,
}

impl Waiting {
    /// Enters a submission of `id`: the receiver completes when `cancel(id)` is asked.
    pub(crate) fn enter(&self, id: &RequestId) -> (Entry<'_>, oneshot::Receiver<()>) {
        let (tell, told) = oneshot::channel();
        let serial = self.next.fetch_add(1, Ordering::Relaxed);
        let mut by_id = self.by_id.lock().unwrap_or_else(|p| p.into_inner());
        by_id.entry(id.clone()).or_default().push((serial, tell));
        let entry = Entry {
            waiting: self,
            id: id.clone(),
            serial,
        };
        (entry, told)
    }

    /// Tells every submission of `id` still waiting that it is cancelled; whether there was one.
    pub(crate) fn cancel(&self, id: &str) -> bool {
        let told = self
            .by_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let told = told.unwrap_or_default();
        let any = !told.is_empty();
        for (_, tell) in told {
            // A submission that stopped waiting meanwhile has nothing to be told.
            let _ = tell.send(());
        }
        any
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let mut by_id = self.waiting.by_id.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entries) = by_id.get_mut(&self.id) {
            entries.retain(|(serial, _)| *serial != self.serial);
            if entries.is_empty() {
                by_id.remove(&self.id);
            }
        }
    }
}
