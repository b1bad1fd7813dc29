//! The stable vocabulary of the task-execution framework.
//!
//! `task-core` holds what every other crate, and every strategy crate a user writes, agrees on:
//!
//! - ids: [`RequestId`], [`NodeId`];
//! - work: the [`Node`] and [`BlockingNode`] traits, the typed [`Task`] a caller submits and the
//!   [`ErasedTask`] a strategy runs, producing an [`Outcome`]: a [`Value`] or a [`TaskError`];
//! - extension: the [`TaskExecutionStrategy`] trait and the [`ExecutionMode`] names;
//! - crossing processes (the `portable` feature): `PortableNode` (a serde node with a stable
//!   name), its `PortableTask` form, and the `NodeRegistry` workers run them from.
//!
//! It depends on no async runtime, and on serde and thiserror alone unless a feature asks for
//! more: `portable` (the wire format) and `inline-ids` (ids and names up to 23 bytes stored
//! inline, which the coordinator turns on for its job table). A custom strategy crate depends on
//! `task-core` alone.
//!
//! The job table and the lifecycle records it keeps belong to the `coordinator` crate.
//!
//! # Examples
//!
//! A task, as a caller builds it and a strategy sees it:
//!
//! ```
//! use task_core::Task;
//!
//! let task = Task::from_fn("123", "my_node", || async { Ok::<_, task_core::BoxError>("hi") });
//! let erased = task.into_erased();
//! assert_eq!(erased.info().request_id().as_str(), "123");
//! assert_eq!(erased.info().name(), "my_node");
//! ```

mod completion;
pub mod context;
mod erased;
mod error;
mod id;
mod info;
mod mode;
mod node;
#[cfg(feature = "portable")]
mod portable;
mod run;
mod strategy;
mod task;
mod value;

pub use crate::completion::{Completion, CompletionSink};
pub use crate::erased::{AsyncBody, BlockingBody, ErasedTask, TaskBody};
pub use crate::error::{BoxError, TaskError, catch_panic, first_unsaid_cause, panic_message};
pub use crate::id::{NodeId, RequestId};
pub use crate::info::TaskInfo;
pub use crate::mode::ExecutionMode;
pub use crate::node::{BlockingNode, BoxFuture, Node, Outcome};
#[cfg(feature = "portable")]
#[cfg_attr(docsrs, doc(cfg(feature = "portable")))]
pub use crate::portable::{
    NodeRegistry, PortableNode, PortableTask, RegistryError, decode, encode,
};
pub use crate::run::{Running, run};
pub use crate::strategy::{
    LONGEST_TIMER, StrategyStats, TaskExecutionStrategy, WorkerStats, deadline_after,
};
pub use crate::task::Task;
pub use crate::value::Value;

#[cfg(test)]
mod auto_traits {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn public_types_are_send_and_sync_where_expected() {
        send_sync::<RequestId>();
        send_sync::<NodeId>();
        send_sync::<TaskError>();
        send_sync::<Value>();
        send_sync::<TaskInfo>();
        send_sync::<ExecutionMode>();
        send::<ErasedTask>();
        send::<Task<String>>();
        fn object_safe(_: &dyn TaskExecutionStrategy) {}
        let _ = object_safe;
    }
}
