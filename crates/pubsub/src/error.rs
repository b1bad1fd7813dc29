//! The publisher's errors: opaque structs with predicates, and [`Missed`], what a subscriber that
//! fell a whole buffer behind is told.

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
    UnknownSubscriber(u64),
    FilterPanicked,
    /// The thread of a callback subscriber could not be started.
    SpawnFailed,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Self { kind }
    }

    /// The publisher has been shut down (for a listener: before a matching message arrived).
    pub fn is_shut_down(&self) -> bool {
        self.kind == Kind::ShutDown
    }

    /// The operating system refused the thread a callback subscriber runs on; nothing was
    /// subscribed.
    pub fn is_spawn_failure(&self) -> bool {
        self.kind == Kind::SpawnFailed
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
            Kind::UnknownSubscriber(id) => write!(f, "no subscriber has id {id}"),
            Kind::FilterPanicked => f.write_str("the listener's filter panicked"),
            Kind::SpawnFailed => f.write_str("the thread of a callback subscriber could not start"),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error").field("kind", &self.kind).finish()
    }
}

impl std::error::Error for Error {}

/// What a subscriber reads in place of the messages it missed. [`count`](Self::count) says
/// exactly how many (for a filtered subscriber, how many of the bus's messages, matching or not);
/// the subscriber goes on with the next message it can read.
///
/// A [bounded](crate::Buffer::Bounded) subscriber misses messages when it falls a whole buffer
/// behind: the oldest it had not read were overwritten. Any subscriber misses a message whose
/// `Clone` panics while its copy is made (logged at `warn`; a count of 1): neither the publisher
/// nor the other subscribers are disturbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Missed {
    count: u64,
    /// Its copy's `Clone` panicked, rather than it fell behind.
    unclonable: bool,
}

impl Missed {
    /// `count` messages overwritten before the subscriber read them.
    pub(crate) fn new(count: u64) -> Self {
        Self {
            count,
            unclonable: false,
        }
    }

    /// One message whose `Clone` panicked as the subscriber's copy was made.
    pub(crate) fn unclonable() -> Self {
        Self {
            count: 1,
            unclonable: true,
        }
    }

    /// How many messages in a row the subscriber missed (at least 1).
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl fmt::Display for Missed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.unclonable {
            return f.write_str("missed 1 message: its Clone panicked");
        }
        let noun = if self.count == 1 {
            "message"
        } else {
            "messages"
        };
        write!(
            f,
            "missed {} {noun}: the subscriber fell a whole buffer behind",
            self.count
        )
    }
}

impl std::error::Error for Missed {}
