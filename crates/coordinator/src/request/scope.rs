//! The request whose node runs on the current thread: the scope nested submissions find their
//! parent in.

use std::sync::Arc;

use task_core::NodeId;

use super::RequestCell;

scoped_tls::scoped_thread_local! {
    /// The request whose node runs on this thread: set by the request's `run_in_scope` (around
    /// each poll of an async node's future, around a blocking body, around the drop of a
    /// cancelled node's future), a borrow for the call's length, so entering it counts no
    /// reference.
    static CURRENT_REQUEST: RequestCell
}

/// Runs `f` with `cell` as the request whose node runs here.
pub(crate) fn in_request(cell: &RequestCell, f: &mut dyn FnMut()) {
    CURRENT_REQUEST.set(cell, f);
}

/// What `f` reads of the request whose node runs here, if one does.
fn with_current<R>(f: impl FnOnce(&RequestCell) -> R) -> Option<R> {
    CURRENT_REQUEST.is_set().then(|| CURRENT_REQUEST.with(f))
}

/// The request of node `parent` when it runs here: the request a task naming it as its parent
/// is submitted from inside (open or not).
pub(crate) fn request_of_running(parent: &NodeId) -> Option<Arc<RequestCell>> {
    with_current(|cell| (cell.node_id() == parent).then(|| cell.me.upgrade()))
        .flatten()
        .flatten()
}

/// The node running on the current thread, if any.
///
/// Tasks submitted from inside a running node get that node as their parent automatically; this
/// is how nested calls are recorded. The coordinator tracks the node around each poll of its
/// future (or around its blocking body) on the thread running it; a node that a strategy
/// declares running on a thread of its own through [`task_core::context`] comes first: a pool
/// thread waiting for a child may run another node inside the first one's scope.
pub fn current_node() -> Option<NodeId> {
    if task_core::context::is_outside_node() {
        return None;
    }
    task_core::context::current_node().or_else(|| with_current(|cell| cell.node_id().clone()))
}

/// Whether the request of the node running here was ended from outside: cancelled, timed out,
/// cancelled at shutdown, or closed by a message given to `handle_item`. A blocking node cannot
/// be stopped from outside (its thread runs it to its end); a long one checks this now and then
/// and returns early. An async node is dropped at its next wake-up instead, and needs no check.
/// `false` outside a node the coordinator runs in this process, and in a node that a strategy
/// declares running here through [`task_core::context`] without running it through the
/// coordinator (its request is not known here).
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
    with_current(|cell| {
        cell.run_cancelled()
            && task_core::context::current_node().is_none_or(|node| &node == cell.node_id())
    })
    .unwrap_or(false)
}
