//! Messages about requests, and the publisher that fans them out.
//!
//! - [`RequestCompletionMessage`] and its parts ([`RequestSuccess`], [`RequestFailure`], ...): what
//!   the bus says about every request. One bus carries results of every node type, erased as
//!   [`Value`](task_core::Value) for subscribers to downcast.
//! - [`Publisher`]: subscribe a callback or a [`Stream`](futures::Stream), wait for the first
//!   matching message with a [`Listener`], publish, shut down. Every subscriber sees messages in
//!   one total publish order. Publishing never waits for a subscriber: a slow, stuck or unread
//!   one delays nobody. Each has a bounded buffer, and one that falls a whole buffer behind reads
//!   a [`Missed`] saying exactly how many messages it missed, unless it asked for an unbounded
//!   buffer ([`Buffer::Unbounded`]), which never misses one and grows with its lag. A publish
//!   does run two pieces of the message's own code: its `Clone` for each unbounded subscriber,
//!   and, where it overwrites a copy a subscriber a whole buffer behind never read, its `Drop`
//!   (after the publisher's lock is released). Keep both cheap: put a large message in an `Arc`.
//!
//! # Examples
//!
//! ```
//! use pubsub::{Publisher, RequestCompletionMessage, RequestSuccess};
//! use task_core::{NodeId, TaskInfo, Value};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let bus = Publisher::<RequestCompletionMessage>::new();
//! bus.start()?;
//! bus.subscribe(|m| match m {
//!     Ok(m) => println!("{m}"),
//!     Err(missed) => println!("{missed}"),
//! })?;
//! let done = bus.listener(
//!     |m| m.request_id().is_some_and(|id| id.as_str() == "123"),
//!     |m| m.to_string(),
//! );
//!
//! let info = TaskInfo::new("123".into(), NodeId::generate(), None, "greet");
//! bus.publish(RequestSuccess { info, result: Value::new("hello") }.into())?;
//! assert_eq!(done.await?, "greet DONE with result \"hello\"");
//! bus.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod bus;
mod defer;
mod error;
mod grace;
mod messages;
mod publisher;
mod subscription;

pub use crate::bus::{Buffer, SubscriberId};
pub use crate::defer::{DeferredDrops, defer_drops};
pub use crate::error::{Error, Missed, PublishError};
pub use crate::messages::{
    BroadcastEvent, FatalFailure, RequestCompletionMessage, RequestCreation,
    RequestCreationFailure, RequestFailure, RequestSuccess, TakenOutput,
};
pub use crate::publisher::{DEFAULT_CAPACITY, DEFAULT_SHUTDOWN_GRACE, MAX_CAPACITY, Publisher};
pub use crate::subscription::{Listener, Subscription};

/// The publisher of request-completion messages that coordinators subscribe to.
pub type RequestCompletionPublisher = Publisher<RequestCompletionMessage>;
