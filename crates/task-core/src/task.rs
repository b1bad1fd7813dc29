//! [`Task`]: a node bound to a request, typed by its output.

use std::any::type_name;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::erased::{AsyncBody, BlockingBody, ErasedTask, TaskBody};
use crate::info::TaskInfo;
use crate::node::{BlockingNode, Node};
#[cfg(feature = "portable")]
use crate::portable::{PortableNode, PortableTask};
use crate::{BoxError, NodeId, RequestId, TaskError, Value};

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

    /// A task that runs an async [`Node`]. It runs once: a `Clone` node that can run again for a
    /// retry is [`replayable`](Self::replayable).
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
    #[cfg(feature = "portable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "portable")))]
    pub fn portable<N>(request_id: impl Into<RequestId>, node: N) -> Self
    where
        N: PortableNode<Output = O>,
    {
        let portable = PortableTask::of(&node);
        let mut task = Self::new(request_id, node);
        let encoded = portable.clone();
        task.inner.replay = Some(Arc::new(move || {
            match encoded
                .payload()
                .and_then(crate::portable::decode_whole::<N>)
            {
                Ok(node) => node_body(node),
                // Encoding failed when the task was made: every attempt fails the same way.
                Err(error) => TaskBody::Async(AsyncBody(Box::pin(std::future::ready(Err(error))))),
            }
        }));
        task.inner.portable = Some(Box::new(portable));
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

    /// A task that runs an async closure, without declaring a node type. It runs once: a
    /// closure that can run again for a retry is [`replayable_fn`](Self::replayable_fn).
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

    /// A task that runs a [`BlockingNode`] (synchronous, CPU-bound work) on a thread. It runs
    /// once (a retry needs a replayable task).
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

    /// A task that runs a synchronous closure (CPU-bound work) on a thread. It runs once: a
    /// closure that can run again for a retry is [`replayable_blocking`](Self::replayable_blocking).
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
    use crate::node::short_name;
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
