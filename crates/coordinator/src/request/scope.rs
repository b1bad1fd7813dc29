//! The node running on the current task or thread, and its request: the scope nested
//! submissions find their parent in.

use std::sync::Arc;

use task_core::NodeId;

use super::RequestCell;

/// The request of the node the coordinator runs here, from inside its code: the sink its
/// completion makes current around the node's code ([`task_core::Completion::in_scope`]).
pub(crate) fn current_request() -> Option<Arc<RequestCell>> {
    task_core::context::current_sink()
}

/// The node running on the current tokio task or thread, if any.
///
/// Tasks submitted from inside a running node get that node as their parent automatically; this
/// is how nested calls are recorded. The node is found through [`task_core::context`]: the one a
/// strategy entered on its thread ([`enter_node`](task_core::context::enter_node)) comes first,
/// then the one whose request's scope the node's code runs in.
pub fn current_node() -> Option<NodeId> {
    task_core::context::current_node().or_else(|| Some(current_request()?.node_id().clone()))
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
    current_request().is_some_and(|request| request.run_cancelled())
}
