//! [`ProcessExecutionStrategy`]: tasks run in a supervised pool of worker processes.

mod pool;
pub mod wire;
mod worker;

pub use pool::{ProcessBuilder, ProcessError, ProcessExecutionStrategy};
pub use worker::{WORKER_ENV, run_worker_if_requested, worker_pipes};
