//! [`ErasedTask`]: a task with its output type erased, the form every strategy accepts.

use std::fmt;
use std::sync::Arc;

use crate::id::NodeId;
use crate::info::TaskInfo;
use crate::node::{BoxFuture, Outcome};
#[cfg(feature = "portable")]
use crate::portable::PortableTask;

/// The work of an erased task, in the form the strategy must run it in.
#[non_exhaustive]
pub enum TaskBody {
    /// Work to await (an async node).
    Async(AsyncBody),
    /// Work to run to completion on a thread (a blocking node).
    Blocking(BlockingBody),
}

impl fmt::Debug for TaskBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskBody::Async(_) => f.write_str("TaskBody::Async"),
            TaskBody::Blocking(_) => f.write_str("TaskBody::Blocking"),
        }
    }
}

/// Asynchronous work: turn it into a future and await it.
///
/// Held as the future itself, not yet polled (one allocation holding the node, then its state).
pub struct AsyncBody(pub(crate) BoxFuture<'static, Outcome>);

impl AsyncBody {
    /// The future that runs the work. Nothing runs until it is polled.
    pub fn into_future(self) -> BoxFuture<'static, Outcome> {
        self.0
    }
}

impl fmt::Debug for AsyncBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AsyncBody")
    }
}

/// Synchronous work: run it on the thread that should bear its cost.
pub struct BlockingBody(pub(crate) Box<dyn FnOnce() -> Outcome + Send>);

impl BlockingBody {
    /// Runs the work on the calling thread.
    pub fn run(self) -> Outcome {
        (self.0)()
    }
}

impl fmt::Debug for BlockingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlockingBody")
    }
}

/// A task with its output type erased: the form every strategy accepts.
///
/// Made from a typed [`Task`](crate::Task) with [`Task::into_erased`](crate::Task::into_erased); a strategy takes it apart with
/// [`ErasedTask::into_parts`] and runs the [`TaskBody`] however it runs work.
pub struct ErasedTask {
    pub(crate) info: TaskInfo,
    pub(crate) body: TaskBody,
    /// Boxed: only the tasks made with `Task::portable` have one, and every task is moved
    /// several times on its way to a strategy.
    #[cfg(feature = "portable")]
    pub(crate) portable: Option<Box<PortableTask>>,
    pub(crate) replay: Option<Replay>,
}

/// Makes a fresh copy of a task's work, for another attempt.
type Replay = Arc<dyn Fn() -> TaskBody + Send + Sync>;

impl ErasedTask {
    /// Builds an erased task from its description and its work.
    pub fn from_parts(info: TaskInfo, body: TaskBody) -> Self {
        Self {
            info,
            body,
            #[cfg(feature = "portable")]
            portable: None,
            replay: None,
        }
    }

    /// Builds a replayable erased task: `make_body` makes the work afresh for every attempt.
    pub fn from_factory(
        info: TaskInfo,
        make_body: impl Fn() -> TaskBody + Send + Sync + 'static,
    ) -> Self {
        let replay: Replay = Arc::new(make_body);
        Self {
            info,
            body: replay(),
            #[cfg(feature = "portable")]
            portable: None,
            replay: Some(replay),
        }
    }

    /// Whether the task can be run again ([`replay`](Self::replay)): made with one of the
    /// `replayable` constructors of [`Task`](crate::Task), or with `Task::portable`.
    pub fn is_replayable(&self) -> bool {
        self.replay.is_some()
    }

    /// A fresh copy of the task, with the same description, for another attempt; `None` when
    /// the task's work can run only once (it was made from a `FnOnce` or a node that is not
    /// `Clone`).
    pub fn replay(&self) -> Option<ErasedTask> {
        let replay = self.replay.as_ref()?;
        Some(Self {
            info: self.info.clone(),
            body: replay(),
            #[cfg(feature = "portable")]
            portable: self.portable.clone(),
            replay: Some(Arc::clone(replay)),
        })
    }

    /// The description and the process-crossing form, dropping the in-process work: what a
    /// strategy that sends tasks elsewhere keeps. The form is `None` unless the node is a
    /// [`PortableNode`](crate::PortableNode).
    #[cfg(feature = "portable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "portable")))]
    pub fn into_portable(self) -> (TaskInfo, Option<PortableTask>) {
        (self.info, self.portable.map(|portable| *portable))
    }

    /// The process-crossing form of the task, if its node is a [`PortableNode`](crate::PortableNode).
    #[cfg(feature = "portable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "portable")))]
    pub fn portable(&self) -> Option<&PortableTask> {
        self.portable.as_deref()
    }

    /// The task's description.
    pub fn info(&self) -> &TaskInfo {
        &self.info
    }

    /// Records the node that submitted this task (the job's parent node).
    #[must_use]
    pub fn with_parent(mut self, parent: NodeId) -> Self {
        self.info.parent_id = Some(parent);
        self
    }

    /// Whether the work is synchronous (it must run on a thread, not on an async executor).
    pub fn is_blocking(&self) -> bool {
        matches!(self.body, TaskBody::Blocking(_))
    }

    /// The description and the work, for a strategy to run.
    pub fn into_parts(self) -> (TaskInfo, TaskBody) {
        (self.info, self.body)
    }

    /// Runs the task on the calling task/thread, whatever its form. Panics are not caught.
    pub async fn run_inline(self) -> Outcome {
        match self.body {
            TaskBody::Async(body) => body.into_future().await,
            TaskBody::Blocking(body) => body.run(),
        }
    }
}

impl AsRef<TaskInfo> for ErasedTask {
    fn as_ref(&self) -> &TaskInfo {
        &self.info
    }
}

impl fmt::Debug for ErasedTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ErasedTask");
        d.field("info", &self.info).field("body", &self.body);
        #[cfg(feature = "portable")]
        d.field("portable", &self.portable);
        d.field("replayable", &self.replay.is_some()).finish()
    }
}
