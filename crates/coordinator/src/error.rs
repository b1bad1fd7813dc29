//! The coordinator's errors: opaque structs with predicates.

use std::fmt;

use task_core::{ExecutionMode, RequestId, TaskError};

use crate::JobResult;

/// Why [`Coordinator::submit`](crate::Coordinator::submit) did not return a value.
///
/// Either the request was **rejected** ([`is_rejected`](Self::is_rejected)): nothing was recorded
/// and no message published; or it was **accepted and failed**: its job is closed as a failure,
/// its failure message published, and [`task_error`](Self::task_error) says why. One more case
/// says nothing of how the request ended: a [`RequestHandle`](crate::RequestHandle) polled again
/// after it gave its answer ([`is_polled_after_completion`](Self::is_polled_after_completion)),
/// neither a rejection nor a failure.
#[derive(Clone)]
pub struct SubmitError {
    kind: SubmitKind,
}

/// Why a submission did not return a value. The rare large payloads are boxed, so that a
/// `Result` of a submit stays small on the path where it holds the output.
#[derive(Clone, Debug)]
pub(crate) enum SubmitKind {
    NotStarted,
    ShutDown,
    /// The mode asked for, and the modes registered.
    UnknownMode(Box<(ExecutionMode, Vec<ExecutionMode>)>),
    Duplicate(RequestId),
    /// The request id is the empty string.
    EmptyId,
    /// A batch names the same request id twice.
    DuplicateInBatch(RequestId),
    /// Retries were asked of a task that can run only once.
    NotReplayable(RequestId),
    NoRuntime,
    PublisherClosed,
    /// The mode, and for a batch the places it needs at once.
    Busy(ExecutionMode),
    /// Cancelled (`Coordinator::cancel`) while it waited for a place under the mode's limit:
    /// the mode, and the request.
    CancelledWaiting(Box<(ExecutionMode, RequestId)>),
    /// The handle of this request polled again after it gave its answer.
    PolledAfterCompletion(RequestId),
    Failed(Box<Failure>),
}

/// An accepted request that failed: why, and which request, once its handle says so.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    error: TaskError,
    request_id: Option<RequestId>,
}

impl SubmitError {
    pub(crate) fn new(kind: SubmitKind) -> Self {
        Self { kind }
    }

    /// The failure of an accepted request.
    pub(crate) fn failed(error: TaskError) -> Self {
        let failure = Failure {
            error,
            request_id: None,
        };
        Self::new(SubmitKind::Failed(Box::new(failure)))
    }

    /// A failure as that of `request_id`, which it then names; any other error unchanged.
    pub(crate) fn about(mut self, request_id: &RequestId) -> Self {
        if let SubmitKind::Failed(failure) = &mut self.kind {
            failure.request_id = Some(request_id.clone());
        }
        self
    }

    /// The request this error is about: the one that was accepted and failed (so a failure among
    /// many, a batch's, says whose it is), the one a rejection names (a duplicate, a task that
    /// cannot be replayed, a wait a cancellation ended), or the handle polled after its answer;
    /// `None` for a rejection of the submission as a whole (the coordinator not started or shut
    /// down, an unknown mode, a mode at its limit) and for a batch that failed whole (its job
    /// table full).
    pub fn request_id(&self) -> Option<&RequestId> {
        match &self.kind {
            SubmitKind::Duplicate(id)
            | SubmitKind::DuplicateInBatch(id)
            | SubmitKind::NotReplayable(id)
            | SubmitKind::PolledAfterCompletion(id) => Some(id),
            SubmitKind::CancelledWaiting(waited) => Some(&waited.1),
            SubmitKind::Failed(failure) => failure.request_id.as_ref(),
            _ => None,
        }
    }

    /// Nothing was recorded: the request never became a job.
    pub fn is_rejected(&self) -> bool {
        !matches!(
            self.kind,
            SubmitKind::Failed(_) | SubmitKind::PolledAfterCompletion(_)
        )
    }

    /// The coordinator was not started with a publisher.
    pub fn is_not_started(&self) -> bool {
        matches!(self.kind, SubmitKind::NotStarted)
    }

    /// The coordinator is shut down (or shutting down).
    pub fn is_shut_down(&self) -> bool {
        matches!(self.kind, SubmitKind::ShutDown)
    }

    /// No strategy is registered for the mode asked for.
    pub fn is_unknown_mode(&self) -> bool {
        matches!(self.kind, SubmitKind::UnknownMode(..))
    }

    /// A job with the same request id is still open, or a batch names the id twice.
    pub fn is_duplicate(&self) -> bool {
        matches!(
            self.kind,
            SubmitKind::Duplicate(_) | SubmitKind::DuplicateInBatch(_)
        )
    }

    /// The task's request id is empty: nothing could find, cancel or address its job.
    pub fn is_empty_id(&self) -> bool {
        matches!(self.kind, SubmitKind::EmptyId)
    }

    /// The options ask for retries ([`SubmitOptions::retry`](crate::SubmitOptions::retry), more
    /// than one attempt) and the task can run only once: make it with `Task::replayable`,
    /// `Task::replayable_fn`, `Task::replayable_blocking` or `Task::portable`.
    pub fn is_not_replayable(&self) -> bool {
        matches!(self.kind, SubmitKind::NotReplayable(_))
    }

    /// `submit` was polled outside a tokio runtime, and the coordinator was not started on a
    /// multi-thread one that still runs (outside any runtime, a request runs on the
    /// multi-thread runtime [`start`](crate::Coordinator::start) ran on, while it runs).
    pub fn is_no_runtime(&self) -> bool {
        matches!(self.kind, SubmitKind::NoRuntime)
    }

    /// The publisher the coordinator was started with is not running.
    pub fn is_publisher_closed(&self) -> bool {
        matches!(self.kind, SubmitKind::PublisherClosed)
    }

    /// The mode's concurrency limit was reached and the caller asked not to wait
    /// ([`Coordinator::try_spawn`](crate::Coordinator::try_spawn)).
    pub fn is_busy(&self) -> bool {
        matches!(self.kind, SubmitKind::Busy(..))
    }

    /// The request was accepted and ran past its deadline
    /// ([`SubmitOptions::timeout`](crate::SubmitOptions::timeout), or a strategy's own timeout).
    pub fn is_timeout(&self) -> bool {
        self.task_error().is_some_and(TaskError::is_timeout)
    }

    /// The request was accepted and then cancelled (by its handle, its parent, or the shutdown
    /// deadline), or [`Coordinator::cancel`](crate::Coordinator::cancel) cancelled it while it
    /// still waited for a place under its mode's limit. It was never accepted then: nothing
    /// recorded, nothing published, its node never run; it is a rejection
    /// ([`is_rejected`](Self::is_rejected)), with no [`task_error`](Self::task_error).
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, SubmitKind::CancelledWaiting(_))
            || self.task_error().is_some_and(TaskError::is_cancelled)
    }

    /// A [`RequestHandle`](crate::RequestHandle) was polled again after it completed: its answer
    /// went to the first poll that returned ready, and this says nothing of how the request
    /// ended, only which it was ([`request_id`](Self::request_id)). A misuse, answered without
    /// a panic; `select!` loops skip a handle whose
    /// [`is_terminated`](futures::future::FusedFuture::is_terminated) holds.
    pub fn is_polled_after_completion(&self) -> bool {
        matches!(self.kind, SubmitKind::PolledAfterCompletion(_))
    }

    /// The request ran and failed: why.
    pub fn task_error(&self) -> Option<&TaskError> {
        match &self.kind {
            SubmitKind::Failed(failure) => Some(&failure.error),
            _ => None,
        }
    }

    /// The result the request's job closed with, as [`Job::result`](crate::Job::result) and the
    /// bus's failure message say it: timed out, cancelled, or failed; `None` for a rejection,
    /// which recorded no job, and for a handle polled after its answer.
    pub fn job_result(&self) -> Option<JobResult> {
        self.task_error().map(JobResult::of_error)
    }

    /// The request ran and failed: why; `None` for a rejection and for a handle polled after its
    /// answer.
    pub fn into_task_error(self) -> Option<TaskError> {
        match self.kind {
            SubmitKind::Failed(failure) => Some(failure.error),
            _ => None,
        }
    }
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SubmitKind::NotStarted => f.write_str(
                "the coordinator has not been started: call Coordinator::start(&publisher) first",
            ),
            SubmitKind::ShutDown => f.write_str("the coordinator is shut down"),
            SubmitKind::UnknownMode(asked) => {
                let (mode, known) = &**asked;
                let known: Vec<&str> = known.iter().map(ExecutionMode::as_str).collect();
                write!(
                    f,
                    "no execution strategy is registered for mode `{mode}` (registered: {}); \
                     the built-in threaded and process modes also need the coordinator's feature \
                     of that name",
                    known.join(", ")
                )
            }
            SubmitKind::Duplicate(id) => write!(f, "a job for request `{id}` is already open"),
            SubmitKind::DuplicateInBatch(id) => {
                write!(f, "the batch names request `{id}` more than once")
            }
            SubmitKind::EmptyId => f.write_str("the task's request id is empty"),
            SubmitKind::NotReplayable(id) => write!(
                f,
                "request `{id}` asks for retries but its task can run only once: make it with \
                 Task::replayable, Task::replayable_fn, Task::replayable_blocking or Task::portable"
            ),
            SubmitKind::NoRuntime => f.write_str(
                "submit must run inside a tokio runtime (or the coordinator be started on a \
                 multi-thread one)",
            ),
            SubmitKind::PublisherClosed => f.write_str(
                "the coordinator's publisher is not running (shut it down after the \
                     coordinator, not before)",
            ),
            SubmitKind::Busy(mode) => {
                write!(f, "mode `{mode}` is at its concurrency limit")
            }
            SubmitKind::CancelledWaiting(waited) => {
                let (mode, id) = &**waited;
                write!(
                    f,
                    "request `{id}` was cancelled while it waited for a place under mode \
                     `{mode}`'s limit"
                )
            }
            SubmitKind::PolledAfterCompletion(id) => write!(
                f,
                "the handle of request `{id}` was polled after it completed: its answer went to \
                 the first poll that returned it"
            ),
            // The error's own form, `{:#}` (its causes) included, after the request's id.
            SubmitKind::Failed(failure) => {
                if let Some(id) = &failure.request_id {
                    write!(f, "request `{id}`: ")?;
                }
                fmt::Display::fmt(&failure.error, f)
            }
        }
    }
}

impl fmt::Debug for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubmitError")
            .field("kind", &self.kind)
            .finish()
    }
}

/// A request that ran and failed reads as its request id and its [`TaskError`] (which
/// [`task_error`](SubmitError::task_error) returns): ``request `item-7`: disk full``, so one
/// failure among many says whose it is. Its source is that error's: a report of the whole chain
/// says each cause once.
impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(self.task_error()?)
    }
}

/// Why [`Coordinator::start`](crate::Coordinator::start) failed. The coordinator is unchanged.
#[derive(Clone)]
pub struct StartError {
    kind: StartKind,
}

#[derive(Clone, Debug)]
pub(crate) enum StartKind {
    AlreadyStarted,
    ShutDown,
    PublisherNotStarted,
    PublisherShutDown,
    /// A limit was set for a mode no strategy serves; the modes registered.
    LimitOfUnknownMode(ExecutionMode, Vec<ExecutionMode>),
}

impl StartError {
    pub(crate) fn new(kind: StartKind) -> Self {
        Self { kind }
    }

    /// The coordinator was already started.
    pub fn is_already_started(&self) -> bool {
        matches!(self.kind, StartKind::AlreadyStarted)
    }

    /// The coordinator was shut down (or its shutdown began): it takes no more requests, and
    /// cannot be started again. Build a new one.
    pub fn is_shut_down(&self) -> bool {
        matches!(self.kind, StartKind::ShutDown)
    }

    /// The publisher was never started: it would refuse every outcome. Call
    /// [`Publisher::start`](crate::Publisher::start) first.
    pub fn is_publisher_not_started(&self) -> bool {
        matches!(self.kind, StartKind::PublisherNotStarted)
    }

    /// The publisher is shut down: it would refuse every outcome.
    pub fn is_publisher_shut_down(&self) -> bool {
        matches!(self.kind, StartKind::PublisherShutDown)
    }

    /// A limit was set ([`CoordinatorBuilder::limit`](crate::CoordinatorBuilder::limit)) for a
    /// mode no strategy was registered under (a misspelt mode, say): it would limit nothing.
    pub fn is_unknown_mode(&self) -> bool {
        matches!(self.kind, StartKind::LimitOfUnknownMode(..))
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StartKind::AlreadyStarted => f.write_str("the coordinator is already started"),
            StartKind::ShutDown => {
                f.write_str("the coordinator was shut down and cannot be started again")
            }
            StartKind::PublisherNotStarted => {
                f.write_str("the publisher is not started: call its start() first")
            }
            StartKind::PublisherShutDown => f.write_str("the publisher is shut down"),
            StartKind::LimitOfUnknownMode(mode, known) => {
                let known: Vec<&str> = known.iter().map(ExecutionMode::as_str).collect();
                write!(
                    f,
                    "a limit is set for mode `{mode}`, which no strategy serves (registered: {})",
                    known.join(", ")
                )
            }
        }
    }
}

impl fmt::Debug for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartError")
            .field("kind", &self.kind)
            .finish()
    }
}

impl std::error::Error for StartError {}
