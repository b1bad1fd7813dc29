//! [`Job`]: the lifecycle record of one request.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use task_core::{NodeId, RequestId, TaskError, TaskInfo};

/// Whether a job is still running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Accepted and not yet finished.
    Opened,
    /// Finished; its [`JobResult`] is set.
    Closed,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobResult {
    /// The node produced a value.
    Success,
    /// The node failed: it returned an error, panicked, or its strategy could not run it.
    Failure,
    /// The task ran past its deadline.
    TimedOut,
    /// The request was cancelled before it produced a value.
    Cancelled,
}

impl JobResult {
    /// The lower-case name used in serialized forms (`"success"`, `"failure"`, `"timed_out"`,
    /// `"cancelled"`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Success => "success",
            JobResult::Failure => "failure",
            JobResult::TimedOut => "timed_out",
            JobResult::Cancelled => "cancelled",
        }
    }

    /// The result an outcome closes its job with: a value is a success, a timeout or a
    /// cancellation is a result of its own, any other error a failure.
    pub fn of(outcome: &task_core::Outcome) -> Self {
        match outcome {
            Ok(_) => JobResult::Success,
            Err(e) => Self::of_error(e),
        }
    }

    /// The result a terminal message on the bus announces, as its job closed with it; `None`
    /// for any other message (an opening, a node's event, a creation or fatal failure, which
    /// close no job). What an observer counts outcomes by:
    ///
    /// ```
    /// use coordinator::{JobResult, RequestCompletionMessage, RequestFailure, TaskError, TaskInfo};
    ///
    /// let info = TaskInfo::new("7".into(), "node".into(), None, "fetch");
    /// let error = TaskError::timed_out("past its deadline");
    /// let message = RequestCompletionMessage::Failure(RequestFailure { info, error });
    /// assert_eq!(JobResult::of_message(&message), Some(JobResult::TimedOut));
    /// ```
    pub fn of_message(message: &pubsub::RequestCompletionMessage) -> Option<Self> {
        match message {
            pubsub::RequestCompletionMessage::Success(_) => Some(JobResult::Success),
            pubsub::RequestCompletionMessage::Failure(failure) => {
                Some(Self::of_error(&failure.error))
            }
            _ => None,
        }
    }

    /// The result an error closes its job with: timed out, cancelled, or failed.
    pub(crate) fn of_error(error: &TaskError) -> Self {
        if error.is_timeout() {
            JobResult::TimedOut
        } else if error.is_cancelled() {
            JobResult::Cancelled
        } else {
            JobResult::Failure
        }
    }
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error returned when a string names no [`JobResult`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a job result (expected \"success\", \"failure\", \"timed_out\" or \"cancelled\")"
)]
pub struct ParseJobResultError(String);

impl FromStr for JobResult {
    type Err = ParseJobResultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(JobResult::Success),
            "failure" => Ok(JobResult::Failure),
            "timed_out" => Ok(JobResult::TimedOut),
            "cancelled" => Ok(JobResult::Cancelled),
            other => Err(ParseJobResultError(other.to_owned())),
        }
    }
}

/// The lifecycle record of one request: which node ran it, who asked, when, and how it ended.
///
/// Created opened, with a start time, when the coordinator accepts a task; closed exactly once with
/// a result and an end time. Times are kept to the microsecond.
#[derive(Clone, Debug)]
pub struct Job {
    /// The task's ids and name, shared with the task (no copies of the strings).
    info: TaskInfo,
    status: JobStatus,
    result: Option<JobResult>,
    /// How many times the task was run (1 unless retried).
    attempts: u32,
    /// The state's sequence number for this record (tells a reopened request id from the job
    /// it replaced). Not serialized.
    pub(crate) seq: u64,
    /// Microseconds since the Unix epoch.
    started: u64,
    ended: Option<NonZeroU64>,
    /// Why it failed, timed out or was cancelled; boxed, so a job that succeeded pays a pointer.
    error: Option<Box<TaskError>>,
}

/// Two jobs are equal when everything they say is: the table's own bookkeeping (the record's
/// sequence number, which a job read back from JSON does not have) is left out.
impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            info,
            status,
            result,
            attempts,
            seq: _,
            started,
            ended,
            error,
        } = self;
        *info == other.info
            && *status == other.status
            && *result == other.result
            && *attempts == other.attempts
            && *started == other.started
            && *ended == other.ended
            && *error == other.error
    }
}

impl Eq for Job {}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn from_micros(micros: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

impl Job {
    /// An opened job for `task`, started now.
    pub fn open(task: &TaskInfo) -> Self {
        Self {
            info: task.clone(),
            status: JobStatus::Opened,
            result: None,
            attempts: 1,
            seq: 0,
            started: micros_now(),
            ended: None,
            error: None,
        }
    }

    /// Closes the job with `result`, stamping the end time. A closed job keeps its first result
    /// and end time.
    ///
    /// A coordinator closes its jobs itself; this is for code that builds jobs of its own (tests
    /// of what handles them, a table replayed from a log).
    ///
    /// # Examples
    ///
    /// ```
    /// use coordinator::{Job, JobResult, JobStatus, TaskInfo};
    ///
    /// let info = TaskInfo::new("7".into(), "node-7".into(), None, "fetch");
    /// let mut job = Job::open(&info);
    /// job.close(JobResult::Success);
    /// job.close(JobResult::Failure);
    /// assert_eq!(job.status(), JobStatus::Closed);
    /// assert_eq!(job.result(), Some(JobResult::Success));
    /// assert!(job.end_time().is_some());
    /// ```
    pub fn close(&mut self, result: JobResult) {
        self.close_with(result, None);
    }

    /// Closes the job as [`close`](Self::close) does, keeping `error`, why it did not succeed
    /// ([`error`](Self::error)). The result is the one `error` makes
    /// ([`JobResult::of`]); a closed job keeps its first result and error.
    ///
    /// # Examples
    ///
    /// ```
    /// use coordinator::{Job, JobResult, TaskError, TaskInfo};
    ///
    /// let info = TaskInfo::new("8".into(), "node-8".into(), None, "fetch");
    /// let mut job = Job::open(&info);
    /// job.fail(TaskError::timed_out("no answer within 5 s"));
    /// assert_eq!(job.result(), Some(JobResult::TimedOut));
    /// assert_eq!(job.error().map(|e| e.message()), Some("no answer within 5 s"));
    /// ```
    pub fn fail(&mut self, error: TaskError) {
        let result = JobResult::of_error(&error);
        self.close_with(result, Some(Box::new(error.without_source())));
    }

    pub(crate) fn close_with(&mut self, result: JobResult, error: Option<Box<TaskError>>) {
        if self.status == JobStatus::Closed {
            return;
        }
        self.error = error;
        self.status = JobStatus::Closed;
        self.result = Some(result);
        // Never before the start, and never zero (zero would read as "open").
        let ended = micros_now().max(self.started).max(1);
        self.ended = NonZeroU64::new(ended);
    }

    /// The request this job tracks.
    pub fn request_id(&self) -> &RequestId {
        self.info.request_id()
    }

    /// The node that submitted the request, or `None` for a top-level request.
    pub fn parent_node_id(&self) -> Option<&NodeId> {
        self.info.parent_id()
    }

    /// The node that ran the request.
    pub fn child_node_id(&self) -> &NodeId {
        self.info.node_id()
    }

    /// The name of the node that ran the request.
    pub fn node_name(&self) -> &str {
        self.info.name()
    }

    /// The task's description (request, node, parent, name).
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// How many attempts the request was given: 1, plus one for each retry. A request that
    /// ended before its node started (cancelled while it waited for a place) counts its 1.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Counts one more attempt (a retry).
    pub(crate) fn add_attempt(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// Opened or closed.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// How the job ended; `None` while it is open.
    pub fn result(&self) -> Option<JobResult> {
        self.result
    }

    /// Why the job did not succeed (the error that failed it, timed it out or cancelled it);
    /// `None` while open, after a success, or when it was closed without one.
    pub fn error(&self) -> Option<&TaskError> {
        self.error.as_deref()
    }

    /// When the job was opened.
    pub fn start_time(&self) -> SystemTime {
        from_micros(self.started)
    }

    /// When the job was closed; `None` while it is open.
    pub fn end_time(&self) -> Option<SystemTime> {
        self.ended.map(|e| from_micros(e.get()))
    }

    /// How long the job ran, once closed.
    pub fn duration(&self) -> Option<Duration> {
        self.ended
            .map(|e| Duration::from_micros(e.get().saturating_sub(self.started)))
    }
}

/// The serialized form: flat fields, times as seconds since the Unix epoch (with a fraction),
/// plain numbers that any JSON reader can sort and subtract.
#[derive(Serialize, Deserialize)]
struct JobWire {
    request_id: RequestId,
    parent_node_id: Option<NodeId>,
    child_node_id: NodeId,
    node_name: String,
    status: JobStatus,
    result: Option<JobResult>,
    #[serde(default = "one")]
    attempts: u32,
    start_time: f64,
    end_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<TaskError>,
}

fn one() -> u32 {
    1
}

fn secs(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn micros(secs: f64) -> Result<u64, String> {
    if secs.is_finite() && secs >= 0.0 {
        Ok((secs * 1e6).round() as u64)
    } else {
        Err(format!(
            "time {secs} is not a non-negative number of seconds"
        ))
    }
}

impl Serialize for Job {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JobWire {
            request_id: self.info.request_id().clone(),
            parent_node_id: self.info.parent_id().cloned(),
            child_node_id: self.info.node_id().clone(),
            node_name: self.info.name().to_owned(),
            status: self.status,
            result: self.result,
            attempts: self.attempts,
            start_time: secs(self.started),
            end_time: self.ended.map(|e| secs(e.get())),
            error: self.error.as_deref().cloned(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Job {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w = JobWire::deserialize(deserializer)?;
        let started = micros(w.start_time).map_err(D::Error::custom)?;
        let ended = match w.end_time {
            Some(t) => Some(
                NonZeroU64::new(micros(t).map_err(D::Error::custom)?.max(1))
                    .ok_or_else(|| D::Error::custom("end time"))?,
            ),
            None => None,
        };
        Ok(Self {
            info: TaskInfo::new(w.request_id, w.child_node_id, w.parent_node_id, w.node_name),
            status: w.status,
            result: w.result,
            attempts: w.attempts,
            seq: 0,
            started,
            ended,
            error: w.error.map(Box::new),
        })
    }
}
