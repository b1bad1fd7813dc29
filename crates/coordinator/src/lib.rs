//! The coordinator: runs tasks under the execution mode asked for, tracks every job's lifecycle
//! in a state table, and announces every outcome on a publish/subscribe bus.
//!
//! Most applications depend on this crate alone: it re-exports the vocabulary of
//! [`task_core`], the messages and publisher of [`pubsub`], and the built-in strategies of
//! [`exec_strategies`].
//!
//! # Examples
//!
//! The seed's task-submission use case, and a failure:
//!
//! ```
//! use coordinator::{BoxError, Coordinator, ExecutionMode, RequestCompletionPublisher, Task};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let publisher = RequestCompletionPublisher::new();
//! publisher.start()?;
//! let coordinator = Coordinator::builder().with_async().build();
//! coordinator.start(&publisher)?;
//!
//! let task = Task::from_fn("123", "my_node", || async { Ok::<_, BoxError>(6 * 7) });
//! assert_eq!(coordinator.submit(task, ExecutionMode::ASYNC).await?, 42);
//!
//! let failing: Task<()> = Task::from_fn("124", "flaky", || async { Err("upstream down") });
//! let error = coordinator.submit(failing, ExecutionMode::ASYNC).await.unwrap_err();
//! assert!(error.task_error().unwrap().is_node_error());
//!
//! let detail = coordinator.system_detail();
//! assert_eq!((detail.counts.succeeded, detail.counts.failed), (1, 1));
//! coordinator.shutdown().await;
//! publisher.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! Documentation built locally shows the items of the features it was built with: build it
//! with `cargo doc -p coordinator --all-features` to see them all.
//!
//! - `async` (default): the async strategy, [`AsyncExecutionStrategy`], and
//!   [`CoordinatorBuilder::with_async`].
//! - `threaded`: the threaded strategy, [`ThreadedExecutionStrategy`], and [`block_on`] for
//!   blocking nodes that wait for children.
//! - `process`: the process strategy, [`ProcessExecutionStrategy`], and
//!   [`run_worker_if_requested`] for the worker's `main`.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod admission;
mod batch;
mod builder;
mod coordinator;
mod error;
mod handle;
mod inner;
mod job;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod options;
mod queue;
mod request;
mod shutdown;
mod state;
mod waiting;

pub use crate::batch::{AsCompleted, Batch};
pub use crate::builder::CoordinatorBuilder;
pub use crate::coordinator::{Coordinator, DEFAULT_SHUTDOWN_GRACE, OpeningsFollower, SystemDetail};
pub use crate::error::{StartError, SubmitError};
pub use crate::handle::RequestHandle;
pub use crate::inner::{ModeCounts, OpenRequest};
pub use crate::job::{Job, JobResult, JobStatus, ParseJobResultError};
pub use crate::options::{RetryPolicy, SubmitOptions};
pub use crate::request::{StrategyRef, TreeEvent, current_node, current_node_cancelled};
pub use crate::state::{CoordinatorState, JobCounts, Retention, StateError};

#[doc(inline)]
pub use task_core::context::{Events, NotInNode, broadcast, current_events};
#[doc(inline)]
pub use task_core::{
    AsyncBody, BlockingBody, BlockingNode, BoxError, BoxFuture, Completion, ErasedTask,
    ExecutionMode, Node, NodeId, Outcome, RequestId, StrategyStats, Task, TaskBody, TaskError,
    TaskExecutionStrategy, TaskInfo, Value, WorkerStats,
};
#[cfg(feature = "portable")]
#[doc(inline)]
pub use task_core::{NodeRegistry, PortableNode};

#[doc(inline)]
pub use pubsub::{
    BroadcastEvent, Buffer, FatalFailure, Listener, Missed, PublishError, Publisher,
    RequestCompletionMessage, RequestCompletionPublisher, RequestCreation, RequestCreationFailure,
    RequestFailure, RequestSuccess, SubscriberId, Subscription, TakenOutput,
};

/// The bus crate whole (its `Error` included), for what the names above leave out: an
/// application depends on `coordinator` alone.
pub use pubsub;

#[cfg(feature = "async")]
#[doc(inline)]
pub use exec_strategies::AsyncExecutionStrategy;
#[cfg(feature = "process")]
#[doc(inline)]
pub use exec_strategies::{
    ProcessBuilder, ProcessError, ProcessExecutionStrategy, run_worker_if_requested,
};
#[cfg(feature = "threaded")]
#[doc(inline)]
pub use exec_strategies::{ThreadedBuilder, ThreadedExecutionStrategy, block_on};
