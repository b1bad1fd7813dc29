//! [`ProcessExecutionStrategy`]: tasks run in a supervised pool of worker processes.
//!
//! The modules, from the bottom up: `error` and `input` (a worker's input pipe) depend on no
//! other; `shared` holds the pool's state; `launch` starts a worker, `dispatch` hands it runs,
//! `supervise` serves it for its life; `pool` is the strategy's handle and `builder` starts it.

mod builder;
mod dispatch;
mod error;
mod input;
mod launch;
mod pipes;
mod pool;
mod shared;
mod supervise;
pub mod wire;
mod worker;

pub use builder::ProcessBuilder;
pub use error::ProcessError;
pub use pipes::worker_pipes;
pub use pool::ProcessExecutionStrategy;
pub use worker::{WORKER_ENV, run_worker_if_requested};
