//! Past one machine: a strategy whose tasks run on worker processes anywhere, through NATS
//! JetStream.
//!
//! - [`NatsStrategy`] (the submitting side) publishes each task (registered node name, encoded
//!   node, request id) to a JetStream work-queue stream, one subject per mode, and resolves when
//!   the completion comes back. It depends on `task-core` only: register it with a coordinator
//!   under any mode name.
//! - [`NatsWorker`] (the working side) binds a durable pull consumer, runs tasks with the same
//!   [`NodeRegistry`](task_core::NodeRegistry) the process workers use, hands each completion to
//!   the submitting side, which confirms it (or, unconfirmed, stores it in the completion stream
//!   on that side's own subject), then acknowledges the task.
//!   `exec-nats-worker` is a runnable worker binary.
//!
//! Tasks and completions are kept on disk by the server, so a disconnect of either side or a
//! server restart loses neither: every request ends, with or without a timeout. A server
//! unreachable for longer than [`NatsBuilder::unreachable_after`] fails what waits on it, and a
//! task no worker finished within the stream's `max_age` fails as expired.
//!
//! Delivery is at-least-once from the server and exactly one terminal outcome per request at the
//! coordinator: completions are correlated by a run id unique per attempt, and a second
//! completion for a run (a task redelivered after its worker finished but died before its
//! acknowledgement) is counted and dropped. A task whose workers keep dying is failed once the
//! server gives up after `max_deliver` deliveries, never left hanging. See `docs/distributed.md`.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod advisories;
mod client;
mod config;
mod error;
pub mod example_nodes;
mod listen;
mod strategy;
mod streams;
pub mod wire;
mod worker;

pub use crate::config::{NatsConfig, URL_ENV, default_url};
pub use crate::error::NatsError;
pub use crate::strategy::{DEFAULT_UNREACHABLE_AFTER, NatsBuilder, NatsStrategy};
pub use crate::worker::{NatsWorker, NatsWorkerBuilder};
pub use async_nats;

/// Records on the application's metrics recorder: a panic in it is logged, and never unwinds
/// into the strategy or the worker.
#[cfg(feature = "metrics")]
fn recorded(record: impl FnOnce()) {
    if let Some(reason) = task_core::catch_panic(record) {
        tracing::error!(%reason, "the metrics recorder panicked");
    }
}
