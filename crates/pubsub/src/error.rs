//! The publisher's errors: opaque structs with predicates.

use std::fmt;

/// Why a publish was refused. The message is handed back with [`PublishError::into_inner`].
pub struct PublishError<M> {
    message: M,
    reason: Refusal,
}

/// Why a publish was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotStarted,
    ShutDown,
    /// Only from `try_publish`: the slowest subscriber is a whole capacity behind.
    Full,
}

impl<M> PublishError<M> {
    pub(crate) fn new(message: M, reason: Refusal) -> Self {
        Self { message, reason }
    }

    /// The publisher was never started.
    pub fn is_not_started(&self) -> bool {
        self.reason == Refusal::NotStarted
    }

    /// The publisher has been shut down.
    pub fn is_shut_down(&self) -> bool {
        self.reason == Refusal::ShutDown
    }

    /// [`try_publish`](crate::Publisher::try_publish) only: the slowest subscriber is
    /// `capacity` messages behind, so the message would have to wait. Nothing was published;
    /// [`publish`](crate::Publisher::publish) waits for room instead.
    pub fn is_full(&self) -> bool {
        self.reason == Refusal::Full
    }

    /// The message that was not published.
    pub fn into_inner(self) -> M {
        self.message
    }
}

impl<M> fmt::Debug for PublishError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishError")
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

impl<M> fmt::Display for PublishError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.reason {
            Refusal::NotStarted => "the publisher has not been started",
            Refusal::ShutDown => "the publisher is shut down",
            Refusal::Full => "the slowest subscriber is a whole capacity behind",
        })
    }
}

impl<M> std::error::Error for PublishError<M> {}

/// Why a subscribe, unsubscribe, start or listener failed.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    ShutDown,
    NoRuntime,
    UnknownSubscriber(u64),
    FilterPanicked,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Self { kind }
    }

    /// The publisher has been shut down (for a listener: before a matching message arrived).
    pub fn is_shut_down(&self) -> bool {
        self.kind == Kind::ShutDown
    }

    /// A callback subscriber needs a tokio runtime, and none was running on this thread.
    pub fn is_no_runtime(&self) -> bool {
        self.kind == Kind::NoRuntime
    }

    /// No subscriber has the id given to `unsubscribe`.
    pub fn is_unknown_subscriber(&self) -> bool {
        matches!(self.kind, Kind::UnknownSubscriber(_))
    }

    /// A listener's filter panicked; the listener was removed.
    pub fn is_filter_panic(&self) -> bool {
        self.kind == Kind::FilterPanicked
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::ShutDown => f.write_str("the publisher is shut down"),
            Kind::NoRuntime => {
                f.write_str("a callback subscriber must be added from within a tokio runtime")
            }
            Kind::UnknownSubscriber(id) => write!(f, "no subscriber has id {id}"),
            Kind::FilterPanicked => f.write_str("the listener's filter panicked"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error").field("kind", &self.kind).finish()
    }
}

impl std::error::Error for Error {}
