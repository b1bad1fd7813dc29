//! The built-in execution strategies: where a coordinator's tasks run.
//!
//! Each strategy implements [`TaskExecutionStrategy`](task_core::TaskExecutionStrategy) and is
//! behind a feature, so an application compiles only the ones it uses.
//!
//! # Feature flags
//!
//! - `async` (default): [`AsyncExecutionStrategy`], tasks on the tokio runtime (I/O-bound work).
//! - `threaded`: [`ThreadedExecutionStrategy`], tasks on a rayon thread pool (CPU-bound work),
//!   and [`block_on`], which lets a pool thread wait for a child without deadlocking the pool.
//! - `process`: [`ProcessExecutionStrategy`], tasks in a supervised pool of worker processes
//!   (crash isolation, separate memory), and [`run_worker_if_requested`] for the worker's `main`.
//!
//! # Examples
//!
//! ```
//! use exec_strategies::AsyncExecutionStrategy;
//! use task_core::Task;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let strategy = AsyncExecutionStrategy::new();
//! let task = Task::from_fn("1", "boom", || async {
//!     panic!("the node broke");
//!     #[allow(unreachable_code)]
//!     Ok::<(), task_core::BoxError>(())
//! });
//! let error = task_core::run(&strategy, task.into_erased()).await.unwrap_err();
//! assert!(error.is_panic());
//! assert_eq!(error.message(), "node panicked: the node broke");
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "async")]
mod async_strategy;
#[cfg(feature = "process")]
pub mod process;
#[cfg(feature = "threaded")]
mod signal;
#[cfg(feature = "threaded")]
mod sync;
#[cfg(feature = "threaded")]
mod threaded;
#[cfg(any(feature = "async", feature = "threaded", feature = "process"))]
mod tracker;

#[cfg(feature = "async")]
pub use crate::async_strategy::AsyncExecutionStrategy;

/// Drops what a task that never started leaves (its body, holding the user's code and what it
/// captured), before its completion goes: nothing of the node outlives its request's end. A
/// panic in its `Drop` is logged, and reaches neither whoever cancelled the request nor a pool
/// thread (a rayon pool the application gave aborts on one).
#[cfg(any(feature = "async", feature = "threaded", feature = "process"))]
fn drop_unstarted<T>(unstarted: T) {
    if let Some(reason) = task_core::catch_panic(move || drop(unstarted)) {
        tracing::error!(%reason, "the body of a task that never started panicked when dropped");
    }
}
#[cfg(feature = "process")]
pub use crate::process::{
    ProcessBuilder, ProcessError, ProcessExecutionStrategy, run_worker_if_requested,
};
#[cfg(feature = "threaded")]
pub use crate::threaded::{BuildError, ThreadedBuilder, ThreadedExecutionStrategy, block_on};
