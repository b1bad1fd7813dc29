//! The node running on the current thread, for strategies that run a node's body on a thread of
//! their own (a thread pool, a worker process) rather than on an async task.

use std::cell::RefCell;

use crate::NodeId;

thread_local! {
    static CURRENT: RefCell<Option<NodeId>> = const { RefCell::new(None) };
}

/// The node a strategy declared running on this thread with [`enter_node`], if any.
///
/// Coordinators use it to record the parent of tasks submitted from inside a node.
pub fn current_node() -> Option<NodeId> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Declares `node` running on this thread until the returned guard is dropped, when the previous
/// value (for nested runs) is restored.
///
/// # Examples
///
/// ```
/// use task_core::{NodeId, context};
///
/// assert!(context::current_node().is_none());
/// {
///     let _outer = context::enter_node(NodeId::from("a"));
///     let _inner = context::enter_node(NodeId::from("b"));
///     assert_eq!(context::current_node().unwrap().as_str(), "b");
/// }
/// assert!(context::current_node().is_none());
/// ```
pub fn enter_node(node: NodeId) -> NodeGuard {
    let previous = CURRENT.with(|c| c.replace(Some(node)));
    NodeGuard { previous }
}

/// Restores the previously running node when dropped. Made by [`enter_node`].
#[derive(Debug)]
#[must_use = "the node is current only while the guard lives"]
pub struct NodeGuard {
    previous: Option<NodeId>,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}
