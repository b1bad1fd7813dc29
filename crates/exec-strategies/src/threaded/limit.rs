//! The `max_in_flight` limit: the pool's places, the jobs waiting for one, and their watches.
//!
//! A job waiting for a place watches its request ([`Watch`]): cancelled there, it is let go at
//! once, so the run it was handed is over then ([`ThreadedBuilder::max_in_flight`]).
//!
//! [`ThreadedBuilder::max_in_flight`]: super::ThreadedBuilder::max_in_flight

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Wake, Waker};

use task_core::NodeId;

use super::{Inner, PoolJob};
use crate::drop_unstarted;

/// The limit: at most `max` jobs holding places in the pool, the rest waiting here in order. A
/// place is held by the job on its pool thread (not by the caller), so it is freed only when the
/// node has really stopped.
pub(super) struct Limit {
    max: usize,
    state: Mutex<LimitState>,
}

#[derive(Default)]
struct LimitState {
    running: usize,
    /// The jobs waiting for a place, by their turns: one whose request ends while it waits is
    /// taken out at once by its [`Watch`].
    waiting: BTreeMap<u64, PoolJob>,
    /// The turn the last job to wait took.
    turns: u64,
    /// The nodes handed to the pool and not yet stopped (with how many runs of each): a task
    /// submitted beneath one is spared the limit.
    in_pool: HashMap<NodeId, usize>,
}

impl Limit {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            state: Mutex::default(),
        })
    }

    /// Whether `node` runs in the pool (or waits in it for its child).
    pub(super) fn holds(&self, node: &NodeId) -> bool {
        self.lock().in_pool.contains_key(node)
    }

    /// Counts `node` in the pool until the returned guard drops, holding a place when `placed`.
    pub(super) fn enter(&self, inner: &Arc<Inner>, node: &NodeId, placed: bool) -> InPool {
        *self.lock().in_pool.entry(node.clone()).or_default() += 1;
        InPool {
            inner: Arc::clone(inner),
            node_id: node.clone(),
            placed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `job`, handing it back to run now; or queues it, watched, until a
    /// place frees. A job whose request ended already never waits: it is let go.
    pub(super) fn place_or_queue(self: &Arc<Self>, job: PoolJob) -> Option<PoolJob> {
        let turn = {
            let mut state = self.lock();
            if state.running < self.max {
                state.running += 1;
                return Some(job);
            }
            state.turns += 1;
            state.turns
        };
        let watch = Waker::from(Arc::new(Watch {
            limit: Arc::downgrade(self),
            turn,
        }));
        // Registered outside the lock: a cancellation under way may wake the watch right here,
        // and the watch takes the lock.
        if job
            .admitted
            .completion
            .poll_cancelled(&mut Context::from_waker(&watch))
            .is_ready()
        {
            drop_unstarted(job);
            return None;
        }
        let mut state = self.lock();
        if state.running < self.max {
            // A place freed meanwhile.
            state.running += 1;
            return Some(job);
        }
        // A cancellation before this look is seen here; one after it wakes the watch, which
        // takes the lock after this queues the job.
        if job.admitted.completion.is_cancelled() {
            drop(state);
            drop_unstarted(job);
            return None;
        }
        state.waiting.insert(turn, job);
        None
    }
}

impl LimitState {
    /// The next job to run, passing by (and handing back) those cancelled while they waited
    /// that their watches have not taken out yet.
    fn next(&mut self, cancelled: &mut Vec<PoolJob>) -> Option<PoolJob> {
        while let Some((_, job)) = self.waiting.pop_first() {
            if job.admitted.completion.is_cancelled() {
                cancelled.push(job);
            } else {
                return Some(job);
            }
        }
        None
    }
}

/// The waker a job waiting for a place registers with its request: woken as the request is
/// cancelled (or times out), it takes the job out of the queue and lets it go. The job's
/// completion is dropped then, which tells a coordinator the run is over, so the place the
/// request held under the coordinator's limit frees at once, not when a place in the pool frees
/// (which a long node may hold for long). Woken for a job that started or left meanwhile, it
/// does nothing.
struct Watch {
    limit: Weak<Limit>,
    turn: u64,
}

impl Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(limit) = self.limit.upgrade() else {
            return;
        };
        let ended = {
            let mut state = limit.lock();
            let cancelled = state
                .waiting
                .get(&self.turn)
                .is_some_and(|job| job.admitted.completion.is_cancelled());
            if cancelled {
                state.waiting.remove(&self.turn)
            } else {
                None
            }
        };
        if let Some(job) = ended {
            drop_unstarted(job);
        }
    }
}

/// A job in the pool under the limit, `placed` when it holds a place: dropping it takes its node
/// out of the pool's count and hands the place to the next job waiting.
pub(super) struct InPool {
    inner: Arc<Inner>,
    node_id: NodeId,
    placed: bool,
}

impl Drop for InPool {
    fn drop(&mut self) {
        let Some(limit) = &self.inner.limit else {
            return;
        };
        let mut cancelled = Vec::new();
        let next = {
            let mut state = limit.lock();
            if let Some(runs) = state.in_pool.get_mut(&self.node_id) {
                *runs -= 1;
                if *runs == 0 {
                    state.in_pool.remove(&self.node_id);
                }
            }
            if !self.placed {
                return;
            }
            let next = state.next(&mut cancelled);
            if next.is_none() {
                state.running -= 1;
            }
            next
        };
        // Never started: each is counted out here, outside the lock.
        cancelled.into_iter().for_each(drop_unstarted);
        if let Some(next) = next {
            // The place passes to it.
            self.inner.spawn(next, true);
        }
    }
}
