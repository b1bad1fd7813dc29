//! What code inside a running node can reach: the node running on the current thread (for
//! strategies that run a node's body on a thread of their own rather than on an async task), and
//! [`broadcast`], which streams events from the node to whoever follows its request.

use std::cell::RefCell;
use std::sync::Arc;

use crate::NodeId;

thread_local! {
    /// The node a strategy declared running on this thread; `Some(None)` inside [`outside_node`].
    static CURRENT: RefCell<Option<Option<NodeId>>> = const { RefCell::new(None) };
}

/// The node a strategy declared running on this thread with [`enter_node`], if any: `None`
/// inside a node that no strategy declared, such as one a coordinator runs through
/// [`Completion::in_scope`](crate::Completion::in_scope) without its strategy entering it (the
/// coordinator keeps the node in a scope of its own).
///
/// A coordinator reads this first when it records the parent of a task submitted from inside a
/// node, then its own scope. Code inside a node asks the coordinator
/// (`coordinator::current_node()`), which knows both.
pub fn current_node() -> Option<NodeId> {
    CURRENT.with(|c| c.borrow().clone().flatten())
}

/// Whether this thread runs inside [`outside_node`] (and no node entered since): no node's scope
/// applies here, whatever an enclosing one says.
pub fn is_outside_node() -> bool {
    CURRENT.with(|c| matches!(*c.borrow(), Some(None)))
}

/// Runs `f` outside any node's scope: no current node, no event sink, until it returns (or
/// panics), when the scope it left is current again. A strategy whose thread waits inside a node
/// and meanwhile runs other work on that thread (a pool thread helping its pool) runs that work
/// here, so that it never passes for the waiting node's (its events, its children); work that
/// enters a node of its own is in that node's scope as usual.
///
/// ```
/// use task_core::{NodeId, context};
///
/// let _a = context::enter_node(NodeId::from("a"));
/// context::outside_node(|| {
///     assert!(context::current_node().is_none() && context::is_outside_node());
///     let _b = context::enter_node(NodeId::from("b"));
///     assert_eq!(context::current_node().unwrap().as_str(), "b");
/// });
/// assert_eq!(context::current_node().unwrap().as_str(), "a");
/// ```
pub fn outside_node<R>(f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(Some(None)));
    let _node = NodeGuard { previous };
    let previous = EVENTS.try_with(|current| current.replace(None));
    let _events = Restore(previous.ok().flatten());
    f()
}

/// Runs `f` in the scope a [`Completion`](crate::Completion) enters, whose sink knows its node:
/// no node an enclosing scope entered, nor [`outside_node`], applies in it (a coordinator finds
/// the node through the sink; a strategy may [`enter_node`] inside it).
pub(crate) fn within_completion<R>(f: impl FnOnce() -> R) -> R {
    let _left = NodeGuard {
        previous: CURRENT.with(|c| c.replace(None)),
    };
    f()
}

/// Declares `node` running on this thread until the returned guard is dropped, when the previous
/// value (for nested runs) is restored.
///
/// It names the node, nothing more: where [`broadcast`] sends is the sink of the scope around
/// it. A strategy that runs a node of its own on a thread where another node's scope is current
/// (a pool thread helping its pool while a node waits) runs it inside [`outside_node`], or
/// inside the node's [`Completion::in_scope`](crate::Completion::in_scope), so that the waiting
/// node's sink does not take its events.
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
    let previous = CURRENT.with(|c| c.replace(Some(Some(node))));
    NodeGuard { previous }
}

/// Restores the previously running node when dropped. Made by [`enter_node`].
#[derive(Debug)]
#[must_use = "the node is current only while the guard lives"]
pub struct NodeGuard {
    previous: Option<Option<NodeId>>,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = previous);
    }
}

/// Where the events of a running node go: the strategy or coordinator running it implements
/// this, and makes it current around the node's code with [`with_events`] (a coordinator's
/// [`Completion::in_scope`](crate::Completion::in_scope) does it for every in-process strategy).
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event [`broadcast`] by the node running in this sink's scope, in the order sent.
    /// Must not wait for a reader: the node is waiting for it to return.
    fn broadcast(&self, event: Arc<str>);
}

thread_local! {
    static EVENTS: RefCell<Option<Arc<dyn EventSink>>> = const { RefCell::new(None) };
}

/// Runs `f` with `sink` taking what [`broadcast`] sends on this thread, then puts back the sink
/// that was current before (also when `f` panics). Strategies call it around every poll of a
/// node's future, or once around a blocking body.
pub fn with_events<R>(sink: Arc<dyn EventSink>, f: impl FnOnce() -> R) -> R {
    let previous = EVENTS.try_with(|current| current.replace(Some(sink)));
    let _restore = Restore(previous.ok().flatten());
    f()
}

/// Puts back the sink that was current, when dropped.
struct Restore(Option<Arc<dyn EventSink>>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        let _ = EVENTS.try_with(|current| *current.borrow_mut() = previous);
    }
}

/// Sends `event` from inside a running node to whoever follows its request: the subscribers of
/// the coordinator's bus (as a broadcast event naming the request and the node) and the caller,
/// when it asked for its request's events. Works the same on every execution mode: a node in a
/// worker process or behind NATS has its events forwarded, in order.
///
/// Events of one request arrive in the order sent and before that request's terminal message.
/// Sending never waits for a reader (a node in a worker process writes each event to the pipe
/// to its parent as it sends it). An event sent once the request has ended (it was cancelled or
/// timed out while the node kept running) is dropped. A retried request's stream holds the
/// events of every attempt, in turn: a node that restarts its stream can send a marker first.
///
/// The node is found on the calling thread: call it from the node's own code. Work the node
/// hands to another thread or task (`tokio::spawn`, `std::thread::spawn`, a rayon `join`)
/// takes [`current_events`] with it and sends through that.
///
/// # Errors
///
/// [`NotInNode`] when no node runs here (the call is not on a thread running a node's code, or
/// the strategy running it does not carry events). An event is best-effort: a node that can do
/// without its stream ignores the error (`let _ = broadcast(..)`) rather than failing on it.
///
/// # Examples
///
/// ```
/// use task_core::{BoxError, Task, context};
///
/// let task = Task::from_fn("r1", "writer", || async {
///     for token in ["Hello", ", ", "world"] {
///         context::broadcast(token)?;
///     }
///     Ok::<_, BoxError>("Hello, world")
/// });
/// # let _ = task;
/// // Outside a node there is nobody to send to.
/// assert!(context::broadcast("lost").is_err());
/// ```
pub fn broadcast(event: impl Into<Arc<str>>) -> Result<(), NotInNode> {
    // Taken out while it runs, so that code it runs (a log layer that broadcasts what it
    // logs, say) finds no node here instead of re-entering the sink.
    let sink = EVENTS
        .try_with(|current| current.borrow_mut().take())
        .ok()
        .flatten()
        .ok_or(NotInNode)?;
    let _restore = Restore(Some(Arc::clone(&sink)));
    sink.broadcast(event.into());
    Ok(())
}

/// The sink of the events of the node running here, if any, as a handle that can be kept and
/// used from elsewhere: how a strategy whose node runs in another process or on another machine
/// forwards the events that come back to it, from the task that reads them.
///
/// Call it where the node's scope is current (in the future a strategy hands to
/// [`Completion::spawn`](crate::Completion::spawn), which runs in it).
pub fn current_events() -> Option<Events> {
    EVENTS
        .try_with(|current| current.borrow().clone())
        .ok()
        .flatten()
        .map(Events)
}

/// A handle to one request's event sink, made by [`current_events`] or
/// [`Completion::events`](crate::Completion::events).
#[derive(Clone)]
pub struct Events(pub(crate) Arc<dyn EventSink>);

impl Events {
    /// Sends `event` as if the request's node had sent it with [`broadcast`] here. Events sent
    /// once the request has ended are dropped.
    pub fn send(&self, event: impl Into<Arc<str>>) {
        self.0.broadcast(event.into());
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// [`broadcast`] was called where no node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("broadcast called outside a running node: nobody follows this thread's events")]
pub struct NotInNode;
