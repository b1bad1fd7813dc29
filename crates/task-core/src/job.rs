//! [`Job`]: the lifecycle record of one request.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::{NodeId, RequestId, TaskInfo};

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
}

impl JobResult {
    /// The lower-case name used in serialized forms (`"success"`, `"failure"`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Success => "success",
            JobResult::Failure => "failure",
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
#[error("`{0}` is not a job result (expected \"success\" or \"failure\")")]
pub struct ParseJobResultError(String);

impl FromStr for JobResult {
    type Err = ParseJobResultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "success" => Ok(JobResult::Success),
            "failure" => Ok(JobResult::Failure),
            other => Err(ParseJobResultError(other.to_owned())),
        }
    }
}

/// The lifecycle record of one request: which node ran it, who asked, when, and how it ended.
///
/// Created opened, with a start time, when the coordinator accepts a task; closed exactly once with
/// a result and an end time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    request_id: RequestId,
    parent_node_id: Option<NodeId>,
    child_node_id: NodeId,
    node_name: Arc<str>,
    status: JobStatus,
    result: Option<JobResult>,
    #[serde(with = "unix_seconds")]
    start_time: SystemTime,
    #[serde(with = "unix_seconds::option")]
    end_time: Option<SystemTime>,
}

/// Times serialize as seconds since the Unix epoch, with a fraction (microsecond precision in
/// practice): plain numbers that any JSON reader can sort and subtract.
mod unix_seconds {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    fn to_secs(t: SystemTime) -> f64 {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        }
    }

    fn from_secs(secs: f64) -> Option<SystemTime> {
        let magnitude = Duration::try_from_secs_f64(secs.abs()).ok()?;
        if secs >= 0.0 {
            UNIX_EPOCH.checked_add(magnitude)
        } else {
            UNIX_EPOCH.checked_sub(magnitude)
        }
    }

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(to_secs(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = f64::deserialize(d)?;
        from_secs(secs).ok_or_else(|| serde::de::Error::custom("time out of range"))
    }

    pub(super) mod option {
        use super::*;

        pub(in super::super) fn serialize<S: Serializer>(
            t: &Option<SystemTime>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => s.serialize_some(&to_secs(*t)),
                None => s.serialize_none(),
            }
        }

        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            match Option::<f64>::deserialize(d)? {
                Some(secs) => from_secs(secs)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom("time out of range")),
                None => Ok(None),
            }
        }
    }
}

impl Job {
    /// An opened job for `task`, started now.
    pub fn open(task: &TaskInfo) -> Self {
        Self {
            request_id: task.request_id().clone(),
            parent_node_id: task.parent_id().cloned(),
            child_node_id: task.node_id().clone(),
            node_name: task.name().into(),
            status: JobStatus::Opened,
            result: None,
            start_time: SystemTime::now(),
            end_time: None,
        }
    }

    /// Closes the job with `result`, stamping the end time.
    pub(crate) fn close(&mut self, result: JobResult) {
        self.status = JobStatus::Closed;
        self.result = Some(result);
        self.end_time = Some(SystemTime::now());
    }

    /// The request this job tracks.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The node that submitted the request, or `None` for a top-level request.
    pub fn parent_node_id(&self) -> Option<&NodeId> {
        self.parent_node_id.as_ref()
    }

    /// The node that ran the request.
    pub fn child_node_id(&self) -> &NodeId {
        &self.child_node_id
    }

    /// The name of the node that ran the request.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Opened or closed.
    pub fn status(&self) -> JobStatus {
        self.status
    }

    /// How the job ended; `None` while it is open.
    pub fn result(&self) -> Option<JobResult> {
        self.result
    }

    /// When the job was opened.
    pub fn start_time(&self) -> SystemTime {
        self.start_time
    }

    /// When the job was closed; `None` while it is open.
    pub fn end_time(&self) -> Option<SystemTime> {
        self.end_time
    }

    /// How long the job ran, once closed.
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.end_time?.duration_since(self.start_time).ok()
    }
}
