//! [`CoordinatorState`]: the job table, with O(1) add, end and lookup.
//!
//! The seed's job-management use case:
//!
//! ```
//! use coordinator::{CoordinatorState, JobResult, Task};
//!
//! let mut state = CoordinatorState::empty();
//! let task = Task::from_fn("123", "my_node", || async { Ok::<_, coordinator::BoxError>("hi") });
//! state.add_job(&task)?;
//! state.end_job("123", "success".parse()?)?;
//! assert_eq!(state.get("123").unwrap().result(), Some(JobResult::Success));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use task_core::{RequestId, TaskError, TaskInfo};

use crate::job::{Job, JobResult, JobStatus};
use table::JobTable;

mod table;

/// Running totals of the jobs a [`CoordinatorState`] has seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobCounts {
    /// Jobs open now: accepted and not yet closed (not the jobs ever opened, which is
    /// `open + closed`). Read from JSON written under its former name `opened` too.
    #[serde(alias = "opened")]
    pub open: u64,
    /// Jobs closed so far.
    pub closed: u64,
    /// Jobs closed with [`JobResult::Success`].
    pub succeeded: u64,
    /// Jobs closed with [`JobResult::Failure`].
    pub failed: u64,
    /// Jobs closed with [`JobResult::TimedOut`].
    pub timed_out: u64,
    /// Jobs closed with [`JobResult::Cancelled`].
    pub cancelled: u64,
    /// Closed jobs dropped from the table by the [`Retention`] policy (still counted above).
    pub evicted: u64,
    /// Closed jobs whose record a new job with the same request id took the place of (still
    /// counted above): the table holds `open + closed - evicted - replaced` jobs.
    #[serde(default)]
    pub replaced: u64,
}

/// Which closed jobs a [`CoordinatorState`] keeps.
///
/// Open jobs are always kept. The running totals ([`JobCounts`]) count every job either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Retention {
    /// Keep every job for the life of the state (the reference behaviour), but one record per
    /// request id: a closed job's record gives way to a new job with its id
    /// ([`JobCounts::replaced`]). Memory grows with the number of requests.
    #[default]
    KeepAll,
    /// Keep the last `n` closed jobs (in the order they closed; at least the most recent one)
    /// and drop older ones, so memory is bounded by the open jobs plus `n`.
    KeepLast(usize),
}

/// Why a [`CoordinatorState`] refused an operation. Nothing was changed.
#[derive(Clone, PartialEq, Eq)]
pub struct StateError {
    kind: StateErrorKind,
    request_id: RequestId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StateErrorKind {
    StillOpen,
    Unknown,
    AlreadyClosed,
    Full,
}

impl StateError {
    /// A job with this request id is already open.
    pub fn is_duplicate(&self) -> bool {
        self.kind == StateErrorKind::StillOpen
    }

    /// No job has this request id.
    pub fn is_unknown(&self) -> bool {
        self.kind == StateErrorKind::Unknown
    }

    /// The job with this request id is already closed.
    pub fn is_already_closed(&self) -> bool {
        self.kind == StateErrorKind::AlreadyClosed
    }

    /// The table holds as many jobs as it can index (2^32 - 1); close or evict some first.
    pub fn is_full(&self) -> bool {
        self.kind == StateErrorKind::Full
    }

    /// The request id the operation named.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = &self.request_id;
        match self.kind {
            StateErrorKind::StillOpen => write!(f, "a job for request `{id}` is already open"),
            StateErrorKind::Unknown => write!(f, "no job for request `{id}`"),
            StateErrorKind::AlreadyClosed => {
                write!(f, "the job for request `{id}` is already closed")
            }
            StateErrorKind::Full => write!(f, "the job table is full; request `{id}` not recorded"),
        }
    }
}

impl fmt::Debug for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateError")
            .field("kind", &self.kind)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl std::error::Error for StateError {}

/// The jobs a coordinator has accepted and is running or has finished.
///
/// Jobs are keyed by request id: adding, ending and looking up a job cost O(1) whatever the
/// number of jobs already recorded. Counts are running totals, kept as jobs change.
///
/// # Examples
///
/// ```
/// use coordinator::{CoordinatorState, JobResult, JobStatus, Task};
///
/// let mut state = CoordinatorState::empty();
/// let task = Task::from_fn("123", "my-node", || async { Ok::<_, task_core::BoxError>(()) });
/// state.add_job(&task).unwrap();
/// state.end_job("123", JobResult::Success).unwrap();
///
/// let job = state.get("123").unwrap();
/// assert_eq!(job.status(), JobStatus::Closed);
/// assert_eq!(state.counts().succeeded, 1);
/// assert!(state.end_job("123", JobResult::Failure).unwrap_err().is_already_closed());
/// ```
///
/// # Attachments
///
/// A state made with [`with_attachments`](Self::with_attachments) keeps a value of type `A`
/// beside each open job (a coordinator keeps its per-request record there), given when the job
/// opens and handed back when it ends: one lookup serves both. The default, `A = ()`, attaches
/// nothing.
///
/// ```
/// use coordinator::{CoordinatorState, JobResult, Retention, TaskInfo};
///
/// let mut state = CoordinatorState::<&str>::with_attachments(Retention::KeepAll);
/// let info = TaskInfo::new("7".into(), "node".into(), None, "n");
/// state.add_job_with(&info, "the caller's slot").unwrap();
/// assert_eq!(state.attachment("7"), Some(&"the caller's slot"));
/// let (job, attached) = state.end_job_detach("7", JobResult::Success).unwrap();
/// assert_eq!(job.result(), Some(JobResult::Success));
/// assert_eq!(attached, Some("the caller's slot"));
/// assert_eq!(state.attachment("7"), None);
/// ```
#[derive(Clone, Debug)]
pub struct CoordinatorState<A = ()> {
    jobs: JobTable<A>,
    counts: JobCounts,
    retention: Retention,
    /// Closed jobs in closing order, with their record's sequence number; only kept under
    /// [`Retention::KeepLast`].
    closed: VecDeque<(u64, RequestId)>,
    /// Entries of `closed` whose record was replaced since (its id reused): they hold no job.
    stale: usize,
    next_seq: u64,
}

impl CoordinatorState {
    /// A state with no jobs that keeps every job.
    pub fn empty() -> Self {
        Self::with_attachments(Retention::KeepAll)
    }

    /// A state with no jobs that keeps closed jobs as `retention` says.
    ///
    /// # Examples
    ///
    /// ```
    /// use coordinator::{CoordinatorState, JobResult, Retention, TaskInfo};
    ///
    /// let mut state = CoordinatorState::with_retention(Retention::KeepLast(2));
    /// for id in ["a", "b", "c"] {
    ///     let info = TaskInfo::new(id.into(), "node".into(), None, "n");
    ///     state.add_job(&info).unwrap();
    ///     state.end_job(id, JobResult::Success).unwrap();
    /// }
    /// assert!(state.get("a").is_none());
    /// assert_eq!(state.len(), 2);
    /// assert_eq!(state.counts().succeeded, 3);
    /// assert_eq!(state.counts().evicted, 1);
    /// ```
    pub fn with_retention(retention: Retention) -> Self {
        Self::with_attachments(retention)
    }
}

/// An empty state that keeps every job, attaching `A`s to none yet.
impl<A> Default for CoordinatorState<A> {
    fn default() -> Self {
        Self::with_attachments(Retention::KeepAll)
    }
}

impl<A> CoordinatorState<A> {
    /// A state with no jobs that keeps closed jobs as `retention` says and a value of type `A`
    /// beside each open job ([`add_job_with`](Self::add_job_with)).
    pub fn with_attachments(retention: Retention) -> Self {
        Self {
            jobs: JobTable::default(),
            counts: JobCounts::default(),
            retention,
            closed: VecDeque::new(),
            stale: 0,
            next_seq: 0,
        }
    }

    /// The retention policy.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Opens a job for `task`.
    ///
    /// A request id whose job is closed may be used again: the new job replaces the old record
    /// (the running totals keep counting the old one, and count it in
    /// [`replaced`](JobCounts::replaced)).
    ///
    /// # Errors
    ///
    /// [`StateError::is_duplicate`] when a job with the same request id is still open; the state
    /// is unchanged.
    pub fn add_job(&mut self, task: &impl AsRef<TaskInfo>) -> Result<&Job, StateError> {
        self.open(task.as_ref(), None)
    }

    /// Opens a job for `task`, as [`add_job`](Self::add_job) does, with `attachment` beside it
    /// until it ends.
    ///
    /// # Errors
    ///
    /// As for [`add_job`](Self::add_job); `attachment` is dropped and the state is unchanged.
    pub fn add_job_with(
        &mut self,
        task: &impl AsRef<TaskInfo>,
        attachment: A,
    ) -> Result<&Job, StateError> {
        self.open(task.as_ref(), Some(attachment))
    }

    fn open(&mut self, info: &TaskInfo, attachment: Option<A>) -> Result<&Job, StateError> {
        let seq = self.next_seq;
        let mut job = Job::open(info);
        job.seq = seq;
        let hash = self.jobs.hash(info.request_id());
        let job = match self.jobs.position_hashed(hash, info.request_id()) {
            Some(i) if self.jobs.jobs[i].status() == JobStatus::Opened => {
                return Err(StateError {
                    kind: StateErrorKind::StillOpen,
                    request_id: info.request_id().clone(),
                });
            }
            Some(i) => {
                self.counts.replaced += 1;
                if let Retention::KeepLast(_) = self.retention {
                    self.stale += 1;
                }
                self.jobs.jobs[i] = job;
                self.jobs.open_at(i, attachment);
                &mut self.jobs.jobs[i]
            }
            None => self
                .jobs
                .push(hash, job, attachment)
                .ok_or_else(|| StateError {
                    kind: StateErrorKind::Full,
                    request_id: info.request_id().clone(),
                })?,
        };
        self.next_seq += 1;
        self.counts.open += 1;
        Ok(job)
    }

    /// Counts one more attempt of the open job for `request_id` (the task is being retried).
    ///
    /// # Errors
    ///
    /// As for [`end_job`](Self::end_job): the job must be recorded and open.
    pub fn record_attempt(&mut self, request_id: &str) -> Result<&Job, StateError> {
        let job = self.open_job_mut(request_id)?;
        job.add_attempt();
        Ok(job)
    }

    fn open_job_mut(&mut self, request_id: &str) -> Result<&mut Job, StateError> {
        let position = self.open_position(request_id)?;
        Ok(&mut self.jobs.jobs[position])
    }

    /// The position of the open job for `request_id`.
    fn open_position(&self, request_id: &str) -> Result<usize, StateError> {
        let Some(position) = self.jobs.position(request_id) else {
            return Err(StateError {
                kind: StateErrorKind::Unknown,
                request_id: RequestId::from(request_id),
            });
        };
        let job = &self.jobs.jobs[position];
        if job.status() == JobStatus::Closed {
            return Err(StateError {
                kind: StateErrorKind::AlreadyClosed,
                request_id: job.request_id().clone(),
            });
        }
        Ok(position)
    }

    /// Closes the job for `request_id` with `result`.
    ///
    /// # Errors
    ///
    /// [`StateError::is_unknown`] when no job has that id; [`StateError::is_already_closed`] when
    /// it is closed. The state is unchanged either way.
    pub fn end_job(&mut self, request_id: &str, result: JobResult) -> Result<&Job, StateError> {
        self.end_job_detach(request_id, result).map(|(job, _)| job)
    }

    /// Closes the job for `request_id` with `result`, as [`end_job`](Self::end_job) does, and
    /// hands back what was attached to it (`None` when it was opened without an attachment).
    ///
    /// # Errors
    ///
    /// As for [`end_job`](Self::end_job); the state is unchanged.
    pub fn end_job_detach(
        &mut self,
        request_id: &str,
        result: JobResult,
    ) -> Result<(&Job, Option<A>), StateError> {
        self.end(request_id, result, None)
    }

    /// Closes the job for `request_id` with the result `error` makes
    /// ([`JobResult::of`]: failed, timed out or cancelled), keeping `error` on the job
    /// ([`Job::error`]: its cause and message; not its source error, which the table would keep
    /// alive), and hands back what was attached to it, as
    /// [`end_job_detach`](Self::end_job_detach) does.
    ///
    /// # Errors
    ///
    /// As for [`end_job`](Self::end_job); the state is unchanged.
    pub fn fail_job(
        &mut self,
        request_id: &str,
        error: TaskError,
    ) -> Result<(&Job, Option<A>), StateError> {
        let result = JobResult::of_error(&error);
        self.end(request_id, result, Some(Box::new(error.without_source())))
    }

    fn end(
        &mut self,
        request_id: &str,
        result: JobResult,
        error: Option<Box<TaskError>>,
    ) -> Result<(&Job, Option<A>), StateError> {
        let mut position = self.open_position(request_id)?;
        let attachment = self.jobs.close_at(position);
        let job = &mut self.jobs.jobs[position];
        job.close_with(result, error);
        let seq = job.seq;
        self.counts.open -= 1;
        self.counts.closed += 1;
        match result {
            JobResult::Success => self.counts.succeeded += 1,
            JobResult::Failure => self.counts.failed += 1,
            JobResult::TimedOut => self.counts.timed_out += 1,
            JobResult::Cancelled => self.counts.cancelled += 1,
        }
        if let Retention::KeepLast(keep) = self.retention {
            // Share the table's id rather than copying the string.
            let key = self.jobs.jobs[position].request_id().clone();
            self.closed.push_back((seq, key));
            if self.stale > self.closed.len() / 2 {
                // Mostly replaced records: drop their entries, so the queue stays proportional
                // to the jobs kept however often ids are reused.
                let jobs = &self.jobs;
                self.closed.retain(|(seq, id)| jobs.holds_closed(*seq, id));
                self.stale = 0;
            }
            let mut evicted = false;
            while self.closed.len().saturating_sub(self.stale) > keep.max(1) {
                let Some((old_seq, old_id)) = self.closed.pop_front() else {
                    break;
                };
                // The id may have been reopened since: only drop the record that closed then.
                if !self.jobs.holds_closed(old_seq, &old_id) {
                    self.stale = self.stale.saturating_sub(1);
                } else if let Some(old) = self.jobs.position(&old_id) {
                    self.jobs.remove_at(old);
                    self.counts.evicted += 1;
                    evicted = true;
                }
            }
            if evicted {
                // The job just closed is the newest entry, never evicted above, but the last
                // job may have taken an evicted one's place.
                position = self.jobs.position(request_id).ok_or_else(|| StateError {
                    kind: StateErrorKind::Unknown,
                    request_id: RequestId::from(request_id),
                })?;
            }
        }
        Ok((&self.jobs.jobs[position], attachment))
    }

    /// What is attached to the open job for `request_id`, if any.
    pub fn attachment(&self, request_id: &str) -> Option<&A> {
        self.jobs
            .position(request_id)
            .and_then(|position| self.jobs.attached[position].as_ref())
    }

    /// What is attached to an open job whose child node is `node_id` (one of them, if several
    /// open jobs run the same node id).
    pub fn attachment_of_node(&self, node_id: &str) -> Option<&A> {
        self.jobs.attached_to_node(node_id)
    }

    /// An open job whose child node is `node_id` (one of them, if several open jobs run the
    /// same node id): the request a node runs for, while it is open.
    pub(crate) fn open_job_of_node(&self, node_id: &str) -> Option<&Job> {
        self.jobs.open_job_of_node(node_id)
    }

    /// Every open job that has an attachment, with it, in no particular order: O(open jobs),
    /// closed ones are not looked at.
    pub fn attachments(&self) -> impl Iterator<Item = (&Job, &A)> + '_ {
        let table = &self.jobs;
        let attached = |i: usize| Some((&table.jobs[i], table.attached[i].as_ref()?));
        table.open_positions().filter_map(attached)
    }

    /// Every open job, in no particular order: O(open jobs) (about the most open at once), closed
    /// ones are not looked at, so it stays quick in a table of a million closed jobs.
    pub fn open_jobs(&self) -> impl Iterator<Item = &Job> + '_ {
        self.jobs.open_positions().map(|i| &self.jobs.jobs[i])
    }

    /// The job for `request_id`, if recorded.
    pub fn get(&self, request_id: &str) -> Option<&Job> {
        self.jobs.get(request_id)
    }

    /// Whether a job for `request_id` is recorded and open.
    pub fn is_open(&self, request_id: &str) -> bool {
        self.get(request_id)
            .is_some_and(|job| job.status() == JobStatus::Opened)
    }

    /// Every recorded job, in no particular order (roughly the order they opened, so the
    /// newest come last: `iter().rev()` finds recent jobs first).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Job> + ExactSizeIterator + '_ {
        self.jobs.jobs.iter()
    }

    /// Every recorded job, oldest first.
    pub fn jobs_by_start_time(&self) -> Vec<&Job> {
        let mut jobs: Vec<&Job> = self.jobs.jobs.iter().collect();
        jobs.sort_by(|a, b| {
            a.start_time()
                .cmp(&b.start_time())
                .then_with(|| a.request_id().cmp(b.request_id()))
        });
        jobs
    }

    /// How many jobs are recorded.
    pub fn len(&self) -> usize {
        self.jobs.jobs.len()
    }

    /// Whether no job is recorded.
    pub fn is_empty(&self) -> bool {
        self.jobs.jobs.is_empty()
    }

    /// Running totals.
    pub fn counts(&self) -> JobCounts {
        self.counts
    }
}

impl<A> Serialize for CoordinatorState<A> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("CoordinatorState", 2)?;
        s.serialize_field("counts", &self.counts)?;
        s.serialize_field("jobs", &self.jobs_by_start_time())?;
        s.end()
    }
}

impl<'a, A> IntoIterator for &'a CoordinatorState<A> {
    type Item = &'a Job;
    type IntoIter = std::slice::Iter<'a, Job>;

    fn into_iter(self) -> Self::IntoIter {
        self.jobs.jobs.iter()
    }
}

#[cfg(test)]
mod tests;
