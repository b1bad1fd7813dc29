//! The stable vocabulary of the task-execution framework.
//!
//! `task-core` holds what every other crate, and every strategy crate a user writes, agrees on:
//!
//! - ids: [`RequestId`], [`NodeId`];
//! - work: the [`Node`] and [`BlockingNode`] traits, the typed [`Task`] a caller submits and the
//!   [`ErasedTask`] a strategy runs, producing an [`Outcome`]: a [`Value`] or a [`TaskError`];
//! - lifecycle: [`Job`], [`JobStatus`], [`JobResult`] and the job table [`CoordinatorState`];
//! - extension: the [`TaskExecutionStrategy`] trait and the [`ExecutionMode`] names;
//! - crossing processes (the `portable` feature): `PortableNode` (a serde node with a stable
//!   name), its `PortableTask` form, and the `NodeRegistry` workers run them from.
//!
//! It depends on no async runtime. A custom strategy crate depends on `task-core` alone.
//!
//! # Examples
//!
//! The seed's job-management use case:
//!
//! ```
//! use task_core::{CoordinatorState, JobResult, Task};
//!
//! let mut state = CoordinatorState::empty();
//! let task = Task::from_fn("123", "my_node", || async { Ok::<_, task_core::BoxError>("hi") });
//! state.add_job(&task)?;
//! state.end_job("123", "success".parse()?)?;
//! assert_eq!(state.get("123").unwrap().result(), Some(JobResult::Success));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod completion;
pub mod context;
mod erased;
mod error;
mod id;
mod info;
mod job;
mod mode;
mod node;
#[cfg(feature = "portable")]
mod portable;
mod run;
mod state;
mod strategy;
mod table;
mod task;
mod value;

pub use crate::completion::{Completion, CompletionSink};
pub use crate::erased::{AsyncBody, BlockingBody, ErasedTask, TaskBody};
pub use crate::error::{BoxError, TaskError, panic_message};
pub use crate::id::{NodeId, RequestId};
pub use crate::info::TaskInfo;
pub use crate::job::{Job, JobResult, JobStatus, ParseJobResultError};
pub use crate::mode::ExecutionMode;
pub use crate::node::{BlockingNode, BoxFuture, Node, Outcome};
#[cfg(feature = "portable")]
#[cfg_attr(docsrs, doc(cfg(feature = "portable")))]
pub use crate::portable::{
    NodeRegistry, PortableNode, PortableTask, RegistryError, decode, encode,
};
pub use crate::run::{Running, run};
pub use crate::state::{CoordinatorState, JobCounts, Retention, StateError};
pub use crate::strategy::{StrategyStats, TaskExecutionStrategy, WorkerStats};
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
        send_sync::<Job>();
        send_sync::<CoordinatorState>();
        send_sync::<StateError>();
        send_sync::<TaskInfo>();
        send_sync::<ExecutionMode>();
        send::<ErasedTask>();
        send::<Task<String>>();
        fn object_safe(_: &dyn TaskExecutionStrategy) {}
        let _ = object_safe;
    }
}
