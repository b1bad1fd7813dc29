//! The request-completion messages: what the bus carries about every request.

use std::fmt;
use std::sync::Arc;

use task_core::{ExecutionMode, RequestId, TaskError, TaskInfo, Value};

/// Someone asked for a request to run: the task that will answer it and the mode to run it in.
#[derive(Clone, Debug)]
pub struct RequestCreation {
    /// The task's request, node, parent and name.
    pub info: TaskInfo,
    /// The execution mode asked for.
    pub mode: ExecutionMode,
}

/// A request's node produced a value.
#[derive(Clone, Debug)]
pub struct RequestSuccess {
    /// The task's request, node, parent and name.
    pub info: TaskInfo,
    /// The node's output, shared with every subscriber; recover it with
    /// [`Value::downcast_ref`]. For an output its caller took, a [`TakenOutput`]: its `Debug`
    /// text. The coordinator's typed submissions (`submit`, `submit_with`, `spawn`,
    /// `try_spawn`, `submit_many`, children submitted the same ways) move the output to the
    /// caller; `submit_shared` and the erased ones share it here.
    pub result: Value,
}

/// What a success message carries in place of an output its caller took: the output's `Debug`
/// text, cut to [`TakenOutput::MAX_LEN`] bytes. The caller has the value itself, moved, never
/// cloned; a subscriber that needs the value must have it shared instead (the coordinator's
/// `submit_shared`). Its `Debug` form is the text, so a log line reads the same either way.
///
/// ```
/// use pubsub::TakenOutput;
/// use task_core::Value;
///
/// let taken = TakenOutput::of(&Value::new((1, "two")));
/// assert_eq!(taken.text(), r#"(1, "two")"#);
/// assert_eq!(format!("{:?}", Value::new(taken)), r#"(1, "two")"#);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TakenOutput {
    text: String,
}

impl TakenOutput {
    /// The longest text kept, in bytes (then cut, on a character boundary, with `…`).
    pub const MAX_LEN: usize = 1024;

    /// The text a `Debug` that panicked gives.
    pub const PANICKED: &str = "<the output's Debug panicked>";

    /// The `Debug` text of `output`, formatted only up to [`MAX_LEN`](Self::MAX_LEN) bytes
    /// (a `Debug` that makes its whole text before writing it still runs whole), or
    /// [`PANICKED`](Self::PANICKED).
    pub fn of(output: &Value) -> Self {
        /// Takes text until full, then fails the formatting, which stops it.
        struct Bounded(String);
        impl fmt::Write for Bounded {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                if self.0.len() > TakenOutput::MAX_LEN {
                    // Cut already, by a `Debug` that went on after the error.
                    return Err(fmt::Error);
                }
                let room = TakenOutput::MAX_LEN.saturating_sub(self.0.len());
                if s.len() <= room {
                    self.0.push_str(s);
                    return Ok(());
                }
                let mut end = room;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.0.push_str(&s[..end]);
                self.0.push('…');
                Err(fmt::Error)
            }
        }
        // The output's own code runs here, on the thread that completes the request: a panic
        // in it must not lose the request's outcome.
        let text = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut text = Bounded(String::new());
            // An error only says the text was cut.
            let _ = fmt::write(&mut text, format_args!("{output:?}"));
            text.0
        }));
        Self {
            text: text.unwrap_or_else(|_| Self::PANICKED.to_owned()),
        }
    }

    /// The output's `Debug` text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for TakenOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A request's node failed: it returned an error, panicked, or could not be run.
#[derive(Clone, Debug)]
pub struct RequestFailure {
    /// The task's request, node, parent and name.
    pub info: TaskInfo,
    /// Why there is no value.
    pub error: TaskError,
}

/// A request could not even be created; no job was recorded for it.
#[derive(Clone, Debug)]
pub struct RequestCreationFailure {
    /// The request that could not be created.
    pub request_id: RequestId,
    /// Why.
    pub error: TaskError,
}

/// Something failed that the system cannot recover from.
#[derive(Clone, Debug)]
pub struct FatalFailure {
    /// What went wrong.
    pub error: TaskError,
}

/// An event sent from inside a running node with
/// [`broadcast`](task_core::context::broadcast): a token of a streamed answer, progress, a log
/// line. Events of one request reach each subscriber in the order sent, before the request's
/// terminal message.
#[derive(Clone, Debug)]
pub struct BroadcastEvent {
    /// The task whose node sent it: its request, node, parent and name.
    pub info: TaskInfo,
    /// The event, as the node sent it.
    pub event: Arc<str>,
}

/// Every message the request-completion bus carries.
///
/// `Display` gives the one-line log form: `<node> DONE with result <r>` for a success,
/// `<node> FAILED with error <e>` for a failure, `<node> TIMED OUT: <e>` and
/// `<node> CANCELLED: <e>` for the failures that are a timeout or a cancellation, where `<e>`
/// is the error and the causes below it (`the upload failed: disk full`).
///
/// # Examples
///
/// ```
/// use pubsub::{RequestCompletionMessage, RequestSuccess};
/// use task_core::{NodeId, TaskInfo, Value};
///
/// let info = TaskInfo::new("123".into(), NodeId::generate(), None, "summarize");
/// let msg = RequestCompletionMessage::Success(RequestSuccess { info, result: Value::new(42) });
/// assert_eq!(msg.to_string(), "summarize DONE with result 42");
/// assert_eq!(msg.request_id().map(|r| r.as_str()), Some("123"));
/// assert!(msg.is_terminal());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RequestCompletionMessage {
    /// See [`RequestCreation`].
    Creation(RequestCreation),
    /// See [`RequestSuccess`].
    Success(RequestSuccess),
    /// See [`RequestFailure`].
    Failure(RequestFailure),
    /// See [`RequestCreationFailure`].
    CreationFailure(RequestCreationFailure),
    /// See [`FatalFailure`].
    Fatal(FatalFailure),
    /// See [`BroadcastEvent`].
    Broadcast(BroadcastEvent),
}

impl RequestCompletionMessage {
    /// The request the message is about, if it is about one.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Self::Creation(m) => Some(m.info.request_id()),
            Self::Success(m) => Some(m.info.request_id()),
            Self::Failure(m) => Some(m.info.request_id()),
            Self::CreationFailure(m) => Some(&m.request_id),
            Self::Broadcast(m) => Some(m.info.request_id()),
            Self::Fatal(_) => None,
        }
    }

    /// The task the message is about, for creation, success, failure and broadcast messages.
    pub fn task_info(&self) -> Option<&TaskInfo> {
        match self {
            Self::Creation(m) => Some(&m.info),
            Self::Success(m) => Some(&m.info),
            Self::Failure(m) => Some(&m.info),
            Self::Broadcast(m) => Some(&m.info),
            Self::CreationFailure(_) | Self::Fatal(_) => None,
        }
    }

    /// Whether the message is an event broadcast from a running node: with
    /// [`request_id`](Self::request_id), the filter of a subscription to one request's stream
    /// ([`Publisher::subscribe_stream_where`](crate::Publisher::subscribe_stream_where)).
    pub fn is_broadcast(&self) -> bool {
        matches!(self, Self::Broadcast(_))
    }

    /// Whether the message ends a request (a success or a failure).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Success(_) | Self::Failure(_))
    }
}

impl fmt::Display for RequestCompletionMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Creation(m) => m.fmt(f),
            Self::Success(m) => m.fmt(f),
            Self::Failure(m) => m.fmt(f),
            Self::CreationFailure(m) => m.fmt(f),
            Self::Fatal(m) => m.fmt(f),
            Self::Broadcast(m) => m.fmt(f),
        }
    }
}

/// The line of its [`RequestCompletionMessage`].
impl fmt::Display for RequestCreation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, request) = (self.info.name(), self.info.request_id());
        write!(
            f,
            "{name} CREATED as request {request} in {} mode",
            self.mode
        )
    }
}

/// The line of its [`RequestCompletionMessage`].
impl fmt::Display for RequestSuccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} DONE with result {:?}", self.info.name(), self.result)
    }
}

/// The line of its [`RequestCompletionMessage`].
impl fmt::Display for RequestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, error) = (self.info.name(), &self.error);
        // The error's whole chain, each cause once: the log line says why, down to the root.
        if error.is_cancelled() {
            write!(f, "{name} CANCELLED: {error:#}")
        } else if error.is_timeout() {
            write!(f, "{name} TIMED OUT: {error:#}")
        } else {
            write!(f, "{name} FAILED with error {error:#}")
        }
    }
}

/// The line of its [`RequestCompletionMessage`].
impl fmt::Display for RequestCreationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (request, error) = (&self.request_id, &self.error);
        write!(
            f,
            "request {request} FAILED to be created with error {error}"
        )
    }
}

/// The line of its [`RequestCompletionMessage`].
impl fmt::Display for FatalFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FATAL failure: {}", self.error)
    }
}

/// The line of its [`RequestCompletionMessage`].
impl fmt::Display for BroadcastEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} BROADCAST {:?}", self.info.name(), self.event)
    }
}

impl From<RequestSuccess> for RequestCompletionMessage {
    fn from(m: RequestSuccess) -> Self {
        Self::Success(m)
    }
}

impl From<RequestFailure> for RequestCompletionMessage {
    fn from(m: RequestFailure) -> Self {
        Self::Failure(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TaskInfo {
        TaskInfo::new("r1".into(), "n1".into(), None, "planner")
    }

    /// An error whose cause is `.0`.
    #[derive(Debug)]
    struct Upload(std::io::Error);

    impl fmt::Display for Upload {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the upload failed")
        }
    }

    impl std::error::Error for Upload {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn log_forms() {
        let failure = RequestCompletionMessage::Failure(RequestFailure {
            info: info(),
            error: TaskError::node("timeout talking to api".into()),
        });
        assert_eq!(
            failure.to_string(),
            "planner FAILED with error timeout talking to api"
        );
        assert!(failure.is_terminal());
        // A node error with a cause says it too, as a timeout after a failed attempt does.
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "disk locked");
        let caused = RequestCompletionMessage::Failure(RequestFailure {
            info: info(),
            error: TaskError::node(Box::new(Upload(denied))),
        });
        assert_eq!(
            caused.to_string(),
            "planner FAILED with error the upload failed: disk locked"
        );
        let ended = |error| {
            RequestCompletionMessage::Failure(RequestFailure {
                info: info(),
                error,
            })
        };
        assert_eq!(
            ended(TaskError::cancelled("the request was cancelled")).to_string(),
            "planner CANCELLED: the request was cancelled"
        );
        assert_eq!(
            ended(TaskError::timed_out("no answer within 2s")).to_string(),
            "planner TIMED OUT: no answer within 2s"
        );
        let success = RequestCompletionMessage::from(RequestSuccess {
            info: info(),
            result: Value::new("ok"),
        });
        assert_eq!(success.to_string(), "planner DONE with result \"ok\"");
        let creation = RequestCompletionMessage::Creation(RequestCreation {
            info: info(),
            mode: ExecutionMode::ASYNC,
        });
        assert_eq!(
            creation.to_string(),
            "planner CREATED as request r1 in async mode"
        );
        assert!(!creation.is_terminal());
        let cf = RequestCompletionMessage::CreationFailure(RequestCreationFailure {
            request_id: "r2".into(),
            error: TaskError::unsupported("no such mode"),
        });
        assert_eq!(cf.request_id().map(|r| r.as_str()), Some("r2"));
        assert!(cf.to_string().contains("no such mode"));
        let fatal = RequestCompletionMessage::Fatal(FatalFailure {
            error: TaskError::strategy("runtime gone"),
        });
        assert_eq!(fatal.to_string(), "FATAL failure: runtime gone");
        assert!(fatal.request_id().is_none());
        let b = RequestCompletionMessage::Broadcast(BroadcastEvent {
            info: TaskInfo::new("r3".into(), "n3".into(), None, "search"),
            event: Arc::from("50%"),
        });
        assert_eq!(b.to_string(), "search BROADCAST \"50%\"");
        assert_eq!(b.request_id().map(|r| r.as_str()), Some("r3"));
        assert!(b.is_broadcast() && !b.is_terminal() && !success.is_broadcast());
    }

    #[test]
    fn each_message_prints_alone_as_in_the_enum() {
        let failure = RequestFailure {
            info: info(),
            error: TaskError::timed_out("no answer within 2s"),
        };
        assert_eq!(
            failure.to_string(),
            "planner TIMED OUT: no answer within 2s"
        );
        let success = RequestSuccess {
            info: info(),
            result: Value::new(3),
        };
        assert_eq!(success.to_string(), "planner DONE with result 3");
    }
}
