//! [`JobTable`]: the jobs of a [`CoordinatorState`](crate::CoordinatorState), stored densely,
//! found by request id or, while open, by node id.

use std::fmt;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::hash_table::{Entry, OccupiedEntry};
use hashbrown::{HashSet, HashTable};

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
    /// The open jobs' positions, one entry per node id, hashed by it. Not an entry per job:
    /// open jobs sharing a node id (`Task::with_node_id`) would all share one hash, and finding
    /// one of them (to close or move it) would cost a comparison with every other.
    pub(crate) by_node: HashTable<NodeJobs>,
    pub(crate) hasher: RandomState,
}

/// The positions of the open jobs of one node id; never empty.
#[derive(Clone)]
pub(crate) enum NodeJobs {
    /// The usual case: a node id has one open job at a time.
    One(u32),
    /// Several open jobs share the node id.
    Many(Box<HashSet<u32, RandomState>>),
}

impl NodeJobs {
    /// One of the positions.
    fn any(&self) -> Option<usize> {
        match self {
            NodeJobs::One(position) => Some(*position as usize),
            NodeJobs::Many(set) => set.iter().next().map(|&position| position as usize),
        }
    }

    fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        let (one, many) = match self {
            NodeJobs::One(position) => (Some(*position), None),
            NodeJobs::Many(set) => (None, Some(set.iter().copied())),
        };
        one.into_iter()
            .chain(many.into_iter().flatten())
            .map(|position| position as usize)
    }

    fn holds(&self, position: usize) -> bool {
        // A position past u32 is in no entry.
        let Ok(position) = u32::try_from(position) else {
            return false;
        };
        match self {
            NodeJobs::One(only) => *only == position,
            NodeJobs::Many(set) => set.contains(&position),
        }
    }

    fn insert(&mut self, position: u32, hasher: &RandomState) {
        match self {
            NodeJobs::One(first) => {
                let mut set = HashSet::with_capacity_and_hasher(2, hasher.clone());
                set.insert(*first);
                set.insert(position);
                *self = NodeJobs::Many(Box::new(set));
            }
            NodeJobs::Many(set) => {
                set.insert(position);
            }
        }
    }

    /// Removes `position`; returns whether none is left.
    fn remove(&mut self, position: u32) -> bool {
        let NodeJobs::Many(set) = self else {
            return matches!(self, NodeJobs::One(only) if *only == position);
        };
        set.remove(&position);
        match set.len() {
            0 => true,
            1 => {
                if let Some(&last) = set.iter().next() {
                    *self = NodeJobs::One(last);
                }
                false
            }
            len => {
                // Kept proportional to the positions it holds, so that `any` stays quick.
                if len * 4 < set.capacity() {
                    set.shrink_to(len * 2);
                }
                false
            }
        }
    }

    /// The job at `from` moved to `to`.
    fn moved(&mut self, from: u32, to: u32) {
        match self {
            NodeJobs::One(position) if *position == from => *position = to,
            NodeJobs::One(_) => {}
            NodeJobs::Many(set) => {
                if set.remove(&from) {
                    set.insert(to);
                }
            }
        }
    }
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

    /// The positions of the open jobs whose node is `node_id`.
    fn open_of_node(&self, node_id: &str) -> impl Iterator<Item = usize> + '_ {
        let jobs = &self.jobs;
        let group = self.by_node.find(self.hash(node_id), |group| {
            probed();
            group
                .any()
                .is_some_and(|i| jobs[i].child_node_id().as_str() == node_id)
        });
        group.into_iter().flat_map(NodeJobs::positions)
    }

    /// What is attached to an open job whose node is `node_id`.
    pub(crate) fn attached_to_node(&self, node_id: &str) -> Option<&A> {
        (self.open_of_node(node_id)).find_map(|i| self.attached[i].as_ref())
    }

    /// An open job whose node is `node_id`.
    pub(crate) fn open_job_of_node(&self, node_id: &str) -> Option<&Job> {
        (self.open_of_node(node_id).next()).map(|i| &self.jobs[i])
    }

    /// The index entry of the open jobs of the node of the job at `position`, open: found by
    /// its node id's hash, and told from the entries of other node ids by holding `position`.
    fn node_entry(&mut self, position: usize) -> Option<OccupiedEntry<'_, NodeJobs>> {
        let hash = self.hash(self.jobs[position].child_node_id());
        let holds = |group: &NodeJobs| {
            probed();
            group.holds(position)
        };
        self.by_node.find_entry(hash, holds).ok()
    }

    /// Indexes the job at `position`, just opened, by its node id, with `attachment` (if any)
    /// beside it.
    pub(crate) fn open_at(&mut self, position: usize, attachment: Option<A>) {
        self.attached[position] = attachment;
        let (jobs, hasher) = (&self.jobs, &self.hasher);
        let node_id = jobs[position].child_node_id().as_str();
        let node = |group: &NodeJobs| group.any().map(|i| jobs[i].child_node_id().as_str());
        let same_node = |group: &NodeJobs| {
            probed();
            node(group) == Some(node_id)
        };
        let rehash = |group: &NodeJobs| node(group).map_or(0, |node| hasher.hash_one(node));
        // `position` is a valid u32 position.
        let at = position as u32;
        match self
            .by_node
            .entry(hasher.hash_one(node_id), same_node, rehash)
        {
            Entry::Occupied(mut open) => open.get_mut().insert(at, hasher),
            Entry::Vacant(vacant) => drop(vacant.insert(NodeJobs::One(at))),
        }
    }

    /// Takes the job at `position`, closing, out of the node index; gives back what was attached
    /// to it.
    pub(crate) fn close_at(&mut self, position: usize) -> Option<A> {
        if let Some(mut entry) = self.node_entry(position)
            && entry.get_mut().remove(position as u32)
        {
            entry.remove();
        }
        self.attached[position].take()
    }

    /// The positions of the open jobs, in no particular order.
    pub(crate) fn open_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.by_node.iter().flat_map(NodeJobs::positions)
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
        // An open job about to move is re-indexed first, while every position its node's entry
        // holds is still valid.
        if position != last
            && self.jobs[last].status() == JobStatus::Opened
            && let Some(mut entry) = self.node_entry(last)
        {
            // `position` and `last` are valid u32 positions.
            entry.get_mut().moved(last as u32, position as u32);
        }
        self.jobs.swap_remove(position);
        self.attached.swap_remove(position);
        if position != last {
            let moved = self.hash(self.jobs[position].request_id());
            if let Some(slot) = self.index.find_mut(moved, |&i| i as usize == last) {
                // `position` came from a valid u32 position.
                *slot = position as u32;
            }
        }
    }
}

#[cfg(test)]
thread_local! {
    static NODE_PROBES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one comparison of an entry of the node index (tests count them; nothing otherwise).
fn probed() {
    #[cfg(test)]
    NODE_PROBES.with(|probes| probes.set(probes.get() + 1));
}

#[cfg(test)]
pub(crate) fn node_probes() -> u64 {
    NODE_PROBES.with(std::cell::Cell::get)
}

#[cfg(test)]
pub(crate) fn reset_node_probes() {
    NODE_PROBES.with(|probes| probes.set(0));
}
