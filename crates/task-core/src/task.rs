//! Nodes (units of work) and tasks (a node bound to a request), typed and type-erased.

use std::any::type_name;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::portable::PortableTask;
use crate::{BoxError, NodeId, PortableNode, RequestId, TaskError, Value};

/// A boxed, `Send` future; the same type as `futures::future::BoxFuture`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The outcome of running a task: its output, or why there is none.
pub type Outcome = Result<Value, TaskError>;

/// A unit of work whose invocation is asynchronous (I/O-bound work, or work that submits children).
///
/// Implement it for a type when the work has state worth naming; for quick use,
/// [`Task::from_fn`] takes an async closure. For CPU-bound work, see [`BlockingNode`].
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
/// thread. For quick use, [`Task::blocking`] takes a closure.
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

fn short_type_name<T: ?Sized>() -> &'static str {
    short_name(type_name::<T>())
}

/// A type's name without its module path, generic arguments kept readable:
/// `a::b::Foo<c::Bar>` -> `Foo<c::Bar>`.
fn short_name(full: &str) -> &str {
    let head = full.find('<').map_or(full, |generics| &full[..generics]);
    head.rfind("::").map_or(full, |i| &full[i + 2..])
}

/// A name that is free to clone whether it was static or computed: a static name is borrowed,
/// a short one stored inline, a long one shared.
#[derive(Clone, PartialEq, Eq)]
struct Name(SmolStr);

impl Name {
    fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<Cow<'static, str>> for Name {
    fn from(name: Cow<'static, str>) -> Self {
        match name {
            Cow::Borrowed(s) => Name(SmolStr::new_static(s)),
            Cow::Owned(s) => Name(SmolStr::from(s)),
        }
    }
}

/// What identifies a task: its request, the node it runs, the node that submitted it, and a name.
///
/// Everything the job table and the messages need, without the work itself.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskInfo {
    request_id: RequestId,
    node_id: NodeId,
    parent_id: Option<NodeId>,
    name: Name,
}

impl TaskInfo {
    /// Describes a task; `name` is the node's human-readable name.
    pub fn new(
        request_id: RequestId,
        node_id: NodeId,
        parent_id: Option<NodeId>,
        name: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            request_id,
            node_id,
            parent_id,
            name: Name::from(name.into()),
        }
    }

    /// The request this task answers.
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The node this task runs (the job's child node).
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The node that submitted this task, or `None` for a top-level request.
    pub fn parent_id(&self) -> Option<&NodeId> {
        self.parent_id.as_ref()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl AsRef<TaskInfo> for TaskInfo {
    fn as_ref(&self) -> &TaskInfo {
        self
    }
}

impl fmt::Debug for TaskInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskInfo")
            .field("request_id", &self.request_id)
            .field("node_id", &self.node_id)
            .field("parent_id", &self.parent_id)
            .field("name", &self.name())
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct TaskInfoWire {
    request_id: RequestId,
    node_id: NodeId,
    parent_id: Option<NodeId>,
    name: String,
}

impl Serialize for TaskInfo {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TaskInfoWire {
            request_id: self.request_id.clone(),
            node_id: self.node_id.clone(),
            parent_id: self.parent_id.clone(),
            name: self.name().to_owned(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskInfo {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = TaskInfoWire::deserialize(deserializer)?;
        Ok(Self::new(w.request_id, w.node_id, w.parent_id, w.name))
    }
}

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
pub struct AsyncBody(BoxFuture<'static, Outcome>);

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
pub struct BlockingBody(Box<dyn FnOnce() -> Outcome + Send>);

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
/// Made from a typed [`Task`] with [`Task::into_erased`]; a strategy takes it apart with
/// [`ErasedTask::into_parts`] and runs the [`TaskBody`] however it runs work.
pub struct ErasedTask {
    info: TaskInfo,
    body: TaskBody,
    portable: Option<PortableTask>,
    replay: Option<Replay>,
}

/// Makes a fresh copy of a task's work, for another attempt.
type Replay = Arc<dyn Fn() -> TaskBody + Send + Sync>;

impl ErasedTask {
    /// Builds an erased task from its description and its work.
    pub fn from_parts(info: TaskInfo, body: TaskBody) -> Self {
        Self {
            info,
            body,
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
            portable: None,
            replay: Some(replay),
        }
    }

    /// Whether the task can be run again ([`replay`](Self::replay)): made with one of the
    /// `replayable` constructors of [`Task`], or with [`Task::portable`].
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
            portable: self.portable.clone(),
            replay: Some(Arc::clone(replay)),
        })
    }

    /// The description and the process-crossing form, dropping the in-process work: what a
    /// strategy that sends tasks elsewhere keeps. The form is `None` unless the node is a
    /// [`PortableNode`].
    pub fn into_portable(self) -> (TaskInfo, Option<PortableTask>) {
        (self.info, self.portable)
    }

    /// The process-crossing form of the task, if its node is a [`PortableNode`].
    pub fn portable(&self) -> Option<&PortableTask> {
        self.portable.as_ref()
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
        f.debug_struct("ErasedTask")
            .field("info", &self.info)
            .field("body", &self.body)
            .field("portable", &self.portable)
            .field("replayable", &self.replay.is_some())
            .finish()
    }
}

/// A node bound to a request: what is submitted to a coordinator.
///
/// `O` is the node's output type; the coordinator hands a value of that type back to the caller.
/// A task gets a fresh node id unless one is given with [`Task::with_node_id`], and no parent
/// unless it is submitted from inside another node ([`Task::with_parent`]).
///
/// # Examples
///
/// ```
/// use task_core::Task;
///
/// # futures::executor::block_on(async {
/// let task = Task::from_fn("123", "double", || async { Ok::<_, task_core::BoxError>(21 * 2) })
///     .with_parent("planner-node".into());
/// assert_eq!(task.request_id().as_str(), "123");
/// assert_eq!(task.parent_id().map(|p| p.as_str()), Some("planner-node"));
/// assert_eq!(task.invoke().await.unwrap(), 42);
/// # });
/// ```
pub struct Task<O> {
    inner: ErasedTask,
    _output: PhantomData<fn() -> O>,
}

/// The work of an async node.
fn node_body<N: Node>(node: N) -> TaskBody {
    TaskBody::Async(AsyncBody(Box::pin(async move {
        node.invoke().await.map(Value::new).map_err(TaskError::node)
    })))
}

/// The work of an async closure.
fn fn_body<O, F, Fut, E>(f: F) -> TaskBody
where
    O: fmt::Debug + Send + Sync + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<O, E>> + Send + 'static,
    E: Into<BoxError>,
{
    TaskBody::Async(AsyncBody(Box::pin(async move {
        f().await
            .map(Value::new)
            .map_err(|e| TaskError::node(e.into()))
    })))
}

/// The work of a synchronous closure.
fn blocking_body<O, F, E>(f: F) -> TaskBody
where
    O: fmt::Debug + Send + Sync + 'static,
    F: FnOnce() -> Result<O, E> + Send + 'static,
    E: Into<BoxError>,
{
    TaskBody::Blocking(BlockingBody(Box::new(move || {
        f().map(Value::new).map_err(|e| TaskError::node(e.into()))
    })))
}

impl<O: fmt::Debug + Send + Sync + 'static> Task<O> {
    fn from_body(request_id: RequestId, name: Cow<'static, str>, body: TaskBody) -> Self {
        let info = TaskInfo::new(request_id, NodeId::generate(), None, name);
        Self {
            inner: ErasedTask::from_parts(info, body),
            _output: PhantomData,
        }
    }

    /// A replayable task whose work `make_body` makes afresh for every attempt.
    fn from_factory(
        request_id: RequestId,
        name: Cow<'static, str>,
        make_body: impl Fn() -> TaskBody + Send + Sync + 'static,
    ) -> Self {
        let info = TaskInfo::new(request_id, NodeId::generate(), None, name);
        Self {
            inner: ErasedTask::from_factory(info, make_body),
            _output: PhantomData,
        }
    }

    /// A task that runs an async [`Node`].
    pub fn new<N>(request_id: impl Into<RequestId>, node: N) -> Self
    where
        N: Node<Output = O>,
    {
        let name = node.name();
        Self::from_body(request_id.into(), name, node_body(node))
    }

    /// A task that runs a [`PortableNode`]: in-process under the async and threaded modes, and in
    /// a worker process (or on another machine) under modes that need to send it.
    ///
    /// Portable tasks are replayable (a retry decodes a fresh node from the encoded one), so a
    /// retry policy applies to them.
    pub fn portable<N>(request_id: impl Into<RequestId>, node: N) -> Self
    where
        N: PortableNode<Output = O>,
    {
        let portable = PortableTask::of(&node);
        let mut task = Self::new(request_id, node);
        let encoded = portable.clone();
        task.inner.replay = Some(Arc::new(move || {
            match encoded.payload().and_then(crate::portable::decode::<N>) {
                Ok(node) => node_body(node),
                // Encoding failed when the task was made: every attempt fails the same way.
                Err(error) => TaskBody::Async(AsyncBody(Box::pin(std::future::ready(Err(error))))),
            }
        }));
        task.inner.portable = Some(portable);
        task
    }

    /// A replayable task that runs an async [`Node`]: each attempt runs a clone of `node`, so a
    /// retry policy applies to it.
    pub fn replayable<N>(request_id: impl Into<RequestId>, node: N) -> Self
    where
        N: Node<Output = O> + Clone + Sync,
    {
        let name = node.name();
        Self::from_factory(request_id.into(), name, move || node_body(node.clone()))
    }

    /// A replayable task that runs an async closure: each attempt calls `f` again, so a retry
    /// policy applies to it.
    pub fn replayable_fn<F, Fut, E>(
        request_id: impl Into<RequestId>,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let f = Arc::new(f);
        Self::from_factory(request_id.into(), name.into(), move || {
            let f = Arc::clone(&f);
            fn_body(move || f())
        })
    }

    /// A replayable task that runs a synchronous closure on a thread: each attempt calls `f`
    /// again, so a retry policy applies to it.
    pub fn replayable_blocking<F, E>(
        request_id: impl Into<RequestId>,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Self
    where
        F: Fn() -> Result<O, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let f = Arc::new(f);
        Self::from_factory(request_id.into(), name.into(), move || {
            let f = Arc::clone(&f);
            blocking_body(move || f())
        })
    }

    /// A task that runs an async closure, without declaring a node type.
    pub fn from_fn<F, Fut, E>(
        request_id: impl Into<RequestId>,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<O, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::from_body(request_id.into(), name.into(), fn_body(f))
    }

    /// A task that runs a [`BlockingNode`] (synchronous, CPU-bound work) on a thread.
    pub fn from_blocking<N>(request_id: impl Into<RequestId>, node: N) -> Self
    where
        N: BlockingNode<Output = O>,
    {
        let name = node.name();
        let body = TaskBody::Blocking(BlockingBody(Box::new(move || {
            node.run().map(Value::new).map_err(TaskError::node)
        })));
        Self::from_body(request_id.into(), name, body)
    }

    /// A task that runs a synchronous closure (CPU-bound work) on a thread.
    pub fn blocking<F, E>(
        request_id: impl Into<RequestId>,
        name: impl Into<Cow<'static, str>>,
        f: F,
    ) -> Self
    where
        F: FnOnce() -> Result<O, E> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::from_body(request_id.into(), name.into(), blocking_body(f))
    }

    /// Records the node that submitted this task (the job's parent node).
    #[must_use]
    pub fn with_parent(mut self, parent: NodeId) -> Self {
        self.inner.info.parent_id = Some(parent);
        self
    }

    /// Gives the task's node a chosen id instead of a generated one.
    #[must_use]
    pub fn with_node_id(mut self, node_id: NodeId) -> Self {
        self.inner.info.node_id = node_id;
        self
    }

    /// The request this task answers.
    pub fn request_id(&self) -> &RequestId {
        self.inner.info.request_id()
    }

    /// The node this task runs.
    pub fn node_id(&self) -> &NodeId {
        self.inner.info.node_id()
    }

    /// The node that submitted this task, if any.
    pub fn parent_id(&self) -> Option<&NodeId> {
        self.inner.info.parent_id()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.inner.info.name()
    }

    /// The task's description.
    pub fn info(&self) -> &TaskInfo {
        &self.inner.info
    }

    /// Erases the output type: the form strategies run.
    pub fn into_erased(self) -> ErasedTask {
        self.inner
    }

    /// Runs the node on the calling task (blocking nodes on the calling thread) and returns its
    /// output. Panics are not caught: this is a plain call, not an execution strategy.
    ///
    /// # Errors
    ///
    /// The node's error, as a [`TaskError`] for which [`TaskError::is_node_error`] holds.
    pub async fn invoke(self) -> Result<O, TaskError> {
        let value = self.inner.run_inline().await?;
        value
            .downcast::<O>()
            .ok()
            .and_then(|arc| Arc::try_unwrap(arc).ok())
            .ok_or_else(|| TaskError::strategy("the task produced a value of an unexpected type"))
    }
}

impl<O> AsRef<TaskInfo> for Task<O> {
    fn as_ref(&self) -> &TaskInfo {
        &self.inner.info
    }
}

impl<O> fmt::Debug for Task<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("info", &self.inner.info)
            .field("output", &type_name::<O>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    struct Sum(Vec<u64>);

    impl BlockingNode for Sum {
        type Output = u64;
        fn run(self) -> Result<u64, BoxError> {
            Ok(self.0.iter().sum())
        }
    }

    struct Echo;

    impl Node for Echo {
        type Output = &'static str;
        async fn invoke(self) -> Result<&'static str, BoxError> {
            Ok("echo")
        }
    }

    #[test]
    fn short_names_drop_the_path_and_keep_the_generics() {
        assert_eq!(short_name("a::b::Foo"), "Foo");
        assert_eq!(short_name("Foo"), "Foo");
        assert_eq!(
            short_name("a::Foo<c::Bar, d::e::Baz>"),
            "Foo<c::Bar, d::e::Baz>"
        );
        assert_eq!(short_name("Foo<c::Bar>"), "Foo<c::Bar>");
        assert_eq!(short_name("a::b::Foo<'_>"), "Foo<'_>");
        assert_eq!(short_name(""), "");
    }

    #[test]
    fn default_names_are_short_type_names() {
        let t = Task::from_blocking("1", Sum(vec![1, 2, 3]));
        assert_eq!(t.name(), "Sum");
        assert!(t.parent_id().is_none());
        let t = Task::new("2", Echo);
        assert_eq!(t.name(), "Echo");
    }

    #[test]
    fn blocking_tasks_invoke_and_erase() {
        let t = Task::from_blocking("1", Sum(vec![1, 2, 3]));
        assert_eq!(block_on(t.invoke()).unwrap(), 6);
        let erased = Task::blocking("2", "add", || Ok::<_, BoxError>(1 + 1)).into_erased();
        assert!(erased.is_blocking());
        let value = block_on(erased.run_inline()).unwrap();
        assert_eq!(value.downcast_ref::<i32>(), Some(&2));
    }

    #[test]
    fn node_errors_become_task_errors() {
        let t: Task<()> = Task::from_fn("1", "fails", || async { Err("nope") });
        let err = block_on(t.invoke()).unwrap_err();
        assert!(err.is_node_error());
        assert_eq!(err.message(), "nope");
    }

    #[test]
    fn each_task_gets_its_own_node_id_unless_given() {
        let a = Task::new("1", Echo);
        let b = Task::new("2", Echo);
        assert_ne!(a.node_id(), b.node_id());
        let c = Task::new("3", Echo).with_node_id("fixed".into());
        assert_eq!(c.node_id().as_str(), "fixed");
    }

    #[test]
    fn replayable_tasks_run_again_and_others_do_not() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let task = Task::replayable_fn("r", "count", move || {
            let counter = Arc::clone(&counter);
            async move { Ok::<_, BoxError>(counter.fetch_add(1, Ordering::SeqCst) + 1) }
        })
        .with_parent("p".into())
        .into_erased();
        assert!(task.is_replayable());
        let again = task.replay().unwrap();
        assert_eq!(again.info(), task.info());
        let first = block_on(task.run_inline()).unwrap();
        let second = block_on(again.run_inline()).unwrap();
        assert_eq!(first.downcast_ref::<u32>(), Some(&1));
        assert_eq!(second.downcast_ref::<u32>(), Some(&2));

        let blocking = Task::replayable_blocking("b", "b", || Ok::<_, BoxError>(5)).into_erased();
        assert!(blocking.replay().unwrap().is_blocking());

        #[derive(Clone)]
        struct Cloned;
        impl Node for Cloned {
            type Output = u8;
            async fn invoke(self) -> Result<u8, BoxError> {
                Ok(8)
            }
        }
        let node = Task::replayable("n", Cloned).into_erased();
        let copy = node.replay().unwrap();
        assert_eq!(
            block_on(copy.run_inline()).unwrap().downcast_ref::<u8>(),
            Some(&8)
        );

        let once = Task::new("o", Echo).into_erased();
        assert!(!once.is_replayable());
        assert!(once.replay().is_none());
    }

    #[test]
    fn info_serializes() {
        let t = Task::new("9", Echo).with_parent("p".into());
        let json = serde_json::to_value(t.info()).unwrap();
        assert_eq!(json["request_id"], "9");
        assert_eq!(json["parent_id"], "p");
        assert_eq!(json["name"], "Echo");
        let back: TaskInfo = serde_json::from_value(json).unwrap();
        assert_eq!(&back, t.info());
    }
}
