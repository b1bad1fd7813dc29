//! Nodes: the units of work, asynchronous or blocking.

use std::any::type_name;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::error::{BoxError, TaskError};
use crate::value::Value;

/// A boxed, `Send` future; the same type as `futures::future::BoxFuture`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of running a task: its output, or why there is none.
pub type Outcome = Result<Value, TaskError>;

/// A unit of work whose invocation is asynchronous (I/O-bound work, or work that submits children).
///
/// Implement it for a type when the work has state worth naming; for quick use,
/// [`Task::from_fn`](crate::Task::from_fn) takes an async closure. For CPU-bound work, see [`BlockingNode`].
///
/// # Examples
///
/// ```
/// use task_core::{BoxError, Node, Task};
///
/// struct Fetch { url: String }
///
/// impl Node for Fetch {
///     type Output = usize;
///     fn name(&self) -> std::borrow::Cow<'static, str> { "fetch".into() }
///     async fn invoke(self) -> Result<usize, BoxError> {
///         Ok(self.url.len())
///     }
/// }
///
/// # futures::executor::block_on(async {
/// let task = Task::new("123", Fetch { url: "https://example.com".into() });
/// assert_eq!(task.name(), "fetch");
/// assert_eq!(task.invoke().await.unwrap(), 19);
/// # });
/// ```
pub trait Node: Send + 'static {
    /// What the node produces. `Debug` gives the log form of a success message.
    type Output: fmt::Debug + Send + Sync + 'static;

    /// A human-readable name, shown in jobs, messages and traces. Defaults to the type's name.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name::<Self>())
    }

    /// Runs the node. Nodes are single-use: invoking consumes it.
    fn invoke(self) -> impl Future<Output = Result<Self::Output, BoxError>> + Send;
}

/// A unit of synchronous, CPU-bound work: it runs directly on a thread, never on an async
/// executor's worker.
///
/// On the async strategy it runs on the runtime's blocking pool; on a threaded strategy, on a pool
/// thread. For quick use, [`Task::blocking`](crate::Task::blocking) takes a closure.
pub trait BlockingNode: Send + 'static {
    /// What the node produces.
    type Output: fmt::Debug + Send + Sync + 'static;

    /// A human-readable name. Defaults to the type's name.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name::<Self>())
    }

    /// Runs the node to completion on the calling thread.
    ///
    /// # Errors
    ///
    /// Whatever the work fails with; it becomes the task's failure.
    fn run(self) -> Result<Self::Output, BoxError>;
}

pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    short_name(type_name::<T>())
}

/// A type's name without its module path, generic arguments kept readable:
/// `a::b::Foo<c::Bar>` -> `Foo<c::Bar>`.
pub(crate) fn short_name(full: &str) -> &str {
    let head = full.find('<').map_or(full, |generics| &full[..generics]);
    head.rfind("::").map_or(full, |i| &full[i + 2..])
}
