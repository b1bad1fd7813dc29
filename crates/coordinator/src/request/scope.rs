//! The node running on the current task or thread, and its request: the scope nested
//! submissions find their parent in.

use std::sync::Weak;

use task_core::NodeId;

use super::RequestCell;

tokio::task_local! {
    /// The node running on the current tokio task, and its request.
    pub(crate) static CURRENT_NODE: NodeScope;
}

/// What a running node's nested submissions need: its id (their parent) and its request, which
/// cancels them with it, even once its own job has closed.
#[derive(Clone)]
pub(crate) struct NodeScope {
    pub(crate) node: NodeId,
    pub(crate) request: Weak<RequestCell>,
}

/// The node running on the current tokio task or thread, if any.
///
/// Tasks submitted from inside a running node get that node as their parent automatically; this
/// is how nested calls are recorded. Async nodes are tracked per tokio task; nodes that a strategy
/// runs on a thread of its own are tracked through [`task_core::context`], which comes first: a
/// pool thread waiting for a child may run another node inside the first one's scope.
pub fn current_node() -> Option<NodeId> {
    if task_core::context::is_outside_node() {
        return None;
    }
    task_core::context::current_node()
        .or_else(|| CURRENT_NODE.try_with(|scope| scope.node.clone()).ok())
}

/// Whether the request of the node running here was ended from outside: cancelled, timed out,
/// cancelled at shutdown, or closed by a message given to `handle_item`. A blocking node cannot
/// be stopped from outside (its thread runs it to its end); a long one checks this now and then
/// and returns early. An async node is dropped at its next wake-up instead, and needs no check.
/// `false` outside a node the coordinator runs in this process.
///
/// # Examples
///
/// ```
/// use coordinator::{BoxError, Task, current_node_cancelled};
///
/// let task = Task::blocking("scan", "scan", || {
///     let mut scanned = 0_u64;
///     for _chunk in 0..1_000 {
///         if current_node_cancelled() {
///             return Err(BoxError::from("stopped: the request was cancelled"));
///         }
///         scanned += 1; // one chunk of the work
///     }
///     Ok::<_, BoxError>(scanned)
/// });
/// # drop(task);
/// ```
pub fn current_node_cancelled() -> bool {
    if task_core::context::is_outside_node() {
        return false;
    }
    CURRENT_NODE
        .try_with(|scope| scope.request.upgrade().is_some_and(|r| r.run_cancelled()))
        .unwrap_or(false)
}
