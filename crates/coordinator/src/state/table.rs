//! [`JobTable`]: the jobs of a [`CoordinatorState`](crate::CoordinatorState), stored densely,
//! found by request id or, while open, by node id.

use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::job::{Job, JobStatus};

/// The jobs, stored densely, with an index from request id to position: about a third of the
/// memory of a `HashMap<RequestId, Job>`, whose buckets hold whole jobs and run half empty.
#[derive(Clone)]
pub(crate) struct JobTable<A> {
    pub(crate) jobs: Vec<Job>,
    /// What is attached to each job in `jobs`, at the same position; `None` once it ended.
    pub(crate) attached: Vec<Option<A>>,
    /// Positions in `jobs`, hashed by request id.
    pub(crate) index: HashTable<u32>,
    /// Positions of the open jobs, hashed by their node id.
    pub(crate) by_node: HashTable<u32>,
    pub(crate) hasher: RandomState,
}

impl<A> Default for JobTable<A> {
    fn default() -> Self {
        Self {
            jobs: Vec::new(),
            attached: Vec::new(),
            index: HashTable::new(),
            by_node: HashTable::new(),
            hasher: RandomState::default(),
        }
    }
}

impl<A> fmt::Debug for JobTable<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.jobs).finish()
    }
}

impl<A> JobTable<A> {
    pub(crate) fn hash(&self, request_id: &str) -> u64 {
        self.hasher.hash_one(request_id)
    }

    pub(crate) fn position(&self, request_id: &str) -> Option<usize> {
        self.position_hashed(self.hash(request_id), request_id)
    }

    /// Whether the record of `request_id` is the one numbered `seq`, and closed (not replaced
    /// since by a job reusing the id).
    pub(crate) fn holds_closed(&self, seq: u64, request_id: &str) -> bool {
        let record = self.position(request_id).map(|i| &self.jobs[i]);
        record.is_some_and(|job| job.seq == seq && job.status() == JobStatus::Closed)
    }

    /// As [`position`](Self::position), with `request_id`'s hash already computed.
    pub(crate) fn position_hashed(&self, hash: u64, request_id: &str) -> Option<usize> {
        let jobs = &self.jobs;
        self.index
            .find(hash, |&i| {
                jobs[i as usize].request_id().as_str() == request_id
            })
            .map(|&i| i as usize)
    }

    pub(crate) fn get(&self, request_id: &str) -> Option<&Job> {
        self.position(request_id).map(|i| &self.jobs[i])
    }

    /// What is attached to an open job whose node is `node_id`.
    pub(crate) fn attached_to_node(&self, node_id: &str) -> Option<&A> {
        let (jobs, attached) = (&self.jobs, &self.attached);
        let running = |&i: &u32| {
            let i = i as usize;
            jobs[i].child_node_id().as_str() == node_id && attached[i].is_some()
        };
        let &i = self.by_node.find(self.hash(node_id), running)?;
        attached[i as usize].as_ref()
    }

    /// Indexes the job at `position`, just opened, by its node id, with `attachment` (if any)
    /// beside it.
    pub(crate) fn open_at(&mut self, position: usize, attachment: Option<A>) {
        self.attached[position] = attachment;
        let hash = self.hash(self.jobs[position].child_node_id());
        let (jobs, hasher) = (&self.jobs, &self.hasher);
        // `position` is a valid u32 position.
        self.by_node.insert_unique(hash, position as u32, |&i| {
            hasher.hash_one(jobs[i as usize].child_node_id().as_str())
        });
    }

    /// Takes the job at `position`, closing, out of the node index; gives back what was attached
    /// to it.
    pub(crate) fn close_at(&mut self, position: usize) -> Option<A> {
        let hash = self.hash(self.jobs[position].child_node_id());
        if let Ok(entry) = self.by_node.find_entry(hash, |&i| i as usize == position) {
            entry.remove();
        }
        self.attached[position].take()
    }

    /// The positions of the open jobs, in no particular order.
    pub(crate) fn open_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_node.iter().map(|&i| i as usize)
    }

    /// Appends a job whose id (of hash `hash`) is not in the table; `None` when the index is
    /// full.
    pub(crate) fn push(&mut self, hash: u64, job: Job, attachment: Option<A>) -> Option<&mut Job> {
        let position = u32::try_from(self.jobs.len())
            .ok()
            .filter(|&p| p < u32::MAX)?;
        self.jobs.push(job);
        self.attached.push(None);
        let (jobs, hasher) = (&self.jobs, &self.hasher);
        self.index.insert_unique(hash, position, |&i| {
            hasher.hash_one(jobs[i as usize].request_id().as_str())
        });
        self.open_at(position as usize, attachment);
        self.jobs.last_mut()
    }

    /// Removes the job at `position`; the last job takes its place.
    pub(crate) fn remove_at(&mut self, position: usize) {
        let hash = self.hash(self.jobs[position].request_id());
        if let Ok(entry) = self.index.find_entry(hash, |&i| i as usize == position) {
            entry.remove();
        }
        let last = self.jobs.len() - 1;
        self.jobs.swap_remove(position);
        self.attached.swap_remove(position);
        if position != last {
            let moved = self.hash(self.jobs[position].request_id());
            if let Some(slot) = self.index.find_mut(moved, |&i| i as usize == last) {
                // `position` came from a valid u32 position.
                *slot = position as u32;
            }
            if self.jobs[position].status() == JobStatus::Opened {
                let moved = self.hash(self.jobs[position].child_node_id());
                if let Some(slot) = self.by_node.find_mut(moved, |&i| i as usize == last) {
                    *slot = position as u32;
                }
            }
        }
    }
}
