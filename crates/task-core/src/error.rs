//! [`TaskError`]: why a task did not produce a value.

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A boxed error, what a node returns on failure. Anything that implements
/// [`std::error::Error`] converts into it with `?`, and so do `&str` and `String`.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// The text of a panic payload (what `catch_unwind` returns): the `&str` or `String` given to
/// `panic!`, or a placeholder for any other payload.
///
/// # Examples
///
/// ```
/// let payload = std::panic::catch_unwind(|| panic!("bad row {}", 7)).unwrap_err();
/// assert_eq!(task_core::panic_message(payload.as_ref()), "bad row 7");
/// ```
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        String::from("a panic with a non-string payload")
    }
}

/// Runs `f`, code of the application's that must not unwind into its caller (a `Drop`, a
/// callback, a metrics recorder): the message of its panic ([`panic_message`]), if it panicked.
///
/// ```
/// assert_eq!(task_core::catch_panic(|| panic!("bad row {}", 7)).as_deref(), Some("bad row 7"));
/// assert_eq!(task_core::catch_panic(|| ()), None);
/// ```
pub fn catch_panic(f: impl FnOnce()) -> Option<String> {
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    caught.err().map(|payload| panic_message(payload.as_ref()))
}

/// The first error of `cause` and its sources that `message` does not already say (as its whole
/// text, or at its end after `": "`, the way errors show their cause): what an error whose message
/// shows its cause's text returns as its source, so that a report of the chain (`anyhow`'s
/// `{:#}`, `eyre`) says each cause once, however the errors below word themselves.
///
/// # Examples
///
/// ```
/// use std::error::Error;
///
/// let io = std::io::Error::other("disk full");
/// let message = format!("could not save: {io}");
/// assert!(task_core::first_unsaid_cause(&message, Some(&io)).is_none());
/// assert!(task_core::first_unsaid_cause("could not save", Some(&io)).is_some());
/// ```
pub fn first_unsaid_cause<'a>(
    message: &str,
    mut cause: Option<&'a (dyn StdError + 'static)>,
) -> Option<&'a (dyn StdError + 'static)> {
    while let Some(error) = cause {
        let text = error.to_string();
        let said = message.strip_suffix(text.as_str());
        if !said.is_some_and(|before| before.is_empty() || before.ends_with(": ")) {
            return Some(error);
        }
        cause = error.source();
    }
    None
}

/// Why a task did not produce a value.
///
/// Opaque, cheap to clone, with predicates for the cause: the node returned an error
/// ([`is_node_error`](Self::is_node_error)), panicked ([`is_panic`](Self::is_panic)), the strategy
/// was shut down ([`is_shutdown`](Self::is_shutdown)), the strategy cannot run this kind of task
/// ([`is_unsupported`](Self::is_unsupported)), or another cause a later strategy reports.
///
/// # Examples
///
/// ```
/// use task_core::TaskError;
///
/// let err = TaskError::node("disk full".into());
/// assert!(err.is_node_error());
/// assert_eq!(err.to_string(), "disk full");
/// ```
#[derive(Clone)]
pub struct TaskError {
    kind: Kind,
    message: Arc<str>,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

/// The cause of a [`TaskError`]; private so new causes can be added without breaking users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Node,
    Panic,
    Shutdown,
    Unsupported,
    Strategy,
    TimedOut,
    WorkerLost,
    NotRegistered,
    Encoding,
    Protocol,
    Cancelled,
    Poison,
    /// Read from a peer of a later version, which knows a cause this one does not; the error is
    /// made a [`Kind::Strategy`] as it is read, so no `TaskError` holds it. Stays last: a new
    /// cause goes before it (serde numbers variants by position). A new cause must be a unit
    /// variant too: `#[serde(other)]` reads no data for it, so in postcard the data of a variant
    /// that had some would be read as the message (and whatever follows it in the message that
    /// carries the error as the rest); in JSON it is an error. Anything a cause needs to say goes
    /// in the message.
    #[serde(other)]
    Unknown,
}

impl TaskError {
    /// The node returned this error.
    pub fn node(error: BoxError) -> Self {
        Self {
            kind: Kind::Node,
            message: error.to_string().into(),
            source: Some(Arc::from(error)),
        }
    }

    /// The node panicked; `payload` is what `catch_unwind` returned.
    pub fn panic(payload: Box<dyn Any + Send>) -> Self {
        let message = panic_message(payload.as_ref());
        Self::with_message(Kind::Panic, format!("node panicked: {message}"))
    }

    /// The strategy is shut down and takes no new tasks.
    pub fn shutdown(strategy: &str) -> Self {
        Self::with_message(
            Kind::Shutdown,
            format!("the {strategy} strategy is shut down"),
        )
    }

    /// The strategy cannot run this kind of task (for example a closure on a process strategy).
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::with_message(Kind::Unsupported, message.into())
    }

    /// The strategy itself failed while running the task (for example its runtime went away).
    pub fn strategy(message: impl Into<String>) -> Self {
        Self::with_message(Kind::Strategy, message.into())
    }

    /// The task ran past its deadline.
    pub fn timed_out(message: impl Into<String>) -> Self {
        Self::with_message(Kind::TimedOut, message.into())
    }

    /// The worker running the task died (crashed, was killed, exited) before answering.
    pub fn worker_lost(message: impl Into<String>) -> Self {
        Self::with_message(Kind::WorkerLost, message.into())
    }

    /// The task killed the worker running it too many times in a row (it is "poison"): it is
    /// not run again, and a coordinator does not retry it whatever its retry policy says.
    pub fn poison(message: impl Into<String>) -> Self {
        Self::with_message(Kind::Poison, message.into())
    }

    /// The node's name is not registered where the task was sent.
    pub fn not_registered(name: &str) -> Self {
        Self::with_message(
            Kind::NotRegistered,
            format!("node `{name}` is not registered in the worker"),
        )
    }

    /// The task, its output or its error could not be encoded or decoded.
    pub fn encoding(message: impl Into<String>) -> Self {
        Self::with_message(Kind::Encoding, message.into())
    }

    /// A peer broke the wire protocol (malformed or oversize frame, unexpected answer).
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::with_message(Kind::Protocol, message.into())
    }

    /// The request was cancelled (by its handle, its parent's cancellation, or a shutdown
    /// deadline) before it produced a value.
    pub fn cancelled(message: impl Into<String>) -> Self {
        Self::with_message(Kind::Cancelled, message.into())
    }

    fn with_message(kind: Kind, message: String) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Whether the node itself returned an error.
    pub fn is_node_error(&self) -> bool {
        self.kind == Kind::Node
    }

    /// Whether the node panicked.
    pub fn is_panic(&self) -> bool {
        self.kind == Kind::Panic
    }

    /// Whether the strategy was shut down.
    pub fn is_shutdown(&self) -> bool {
        self.kind == Kind::Shutdown
    }

    /// Whether the strategy cannot run this kind of task.
    pub fn is_unsupported(&self) -> bool {
        self.kind == Kind::Unsupported
    }

    /// Whether the strategy itself failed.
    pub fn is_strategy_error(&self) -> bool {
        self.kind == Kind::Strategy
    }

    /// Whether the task ran past its deadline.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::TimedOut
    }

    /// Whether the worker running the task died before answering.
    pub fn is_worker_lost(&self) -> bool {
        self.kind == Kind::WorkerLost
    }

    /// Whether the node was not registered where the task was sent.
    pub fn is_not_registered(&self) -> bool {
        self.kind == Kind::NotRegistered
    }

    /// Whether encoding or decoding the task, its output or its error failed.
    pub fn is_encoding_error(&self) -> bool {
        self.kind == Kind::Encoding
    }

    /// Whether a peer broke the wire protocol.
    pub fn is_protocol_error(&self) -> bool {
        self.kind == Kind::Protocol
    }

    /// Whether the request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.kind == Kind::Cancelled
    }

    /// Whether the task killed (or stalled) its workers too many times and is given up: no retry
    /// policy runs it again ([`TaskError::poison`]).
    pub fn is_poison(&self) -> bool {
        self.kind == Kind::Poison
    }

    /// The message, as shown by `Display`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The node's own error, if it returned one of type `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        self.source.as_deref()?.downcast_ref()
    }
}

/// The message; with `{:#}`, followed by each cause below it that the message does not already
/// say ([`source`](StdError::source), then its sources), as `anyhow` prints a chain:
/// `the upload failed: disk full`.
impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if f.alternate() {
            let mut cause = StdError::source(self);
            while let Some(below) = cause {
                let text = below.to_string();
                write!(f, ": {text}")?;
                cause = first_unsaid_cause(&text, below.source());
            }
        }
        Ok(())
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The source error's own `Debug` (an `io::ErrorKind`, say), which the message may not
        // say: what `unwrap` and `main`'s error report print.
        let mut debug = f.debug_struct("TaskError");
        debug
            .field("kind", &self.kind)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            debug.field("source", source);
        }
        debug.finish()
    }
}

/// The node's own error is this error's message (and [`downcast_ref`](TaskError::downcast_ref)),
/// so `source` continues with the first of that error's causes the message does not already
/// say ([`first_unsaid_cause`]): a report of the whole chain says each cause once.
impl StdError for TaskError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        first_unsaid_cause(&self.message, self.source.as_deref()?.source())
    }
}

impl TaskError {
    /// The same error without its source error: what a record kept for long holds, so that it
    /// does not keep the user's error objects alive. Its cause and message are kept.
    pub fn without_source(mut self) -> Self {
        self.source = None;
        self
    }
}

/// Two errors are equal when they have the same cause and message (their source errors, which
/// stay in the process, are not compared): what survives serialization.
impl PartialEq for TaskError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for TaskError {}

/// The serialized form keeps the cause and the message; the source error stays in the process.
/// A cause the reader does not know (sent by a later version) reads as a strategy failure with
/// the sender's message, so an answer that carries it is not lost.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    kind: Kind,
    message: std::borrow::Cow<'a, str>,
}

impl Serialize for TaskError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            kind: self.kind,
            message: std::borrow::Cow::Borrowed(&self.message),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TaskError {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(deserializer)?;
        // A cause this version does not know: the peer's task still failed, and says why.
        let kind = match wire.kind {
            Kind::Unknown => Kind::Strategy,
            kind => kind,
        };
        Ok(Self::with_message(kind, wire.message.into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("quota exceeded")]
    struct Quota;

    #[derive(Debug, thiserror::Error)]
    #[error("the upload failed")]
    struct Upload(#[source] Quota);

    #[test]
    fn node_errors_keep_their_source() {
        let err = TaskError::node(Box::new(Quota));
        assert!(err.is_node_error());
        assert!(err.downcast_ref::<Quota>().is_some());
        assert_eq!(err.to_string(), "quota exceeded");
    }

    /// `Debug`, what `unwrap` and `main`'s report print, shows the node's own error's `Debug`,
    /// which its message may not say.
    #[test]
    fn debug_shows_the_node_errors_own_debug() {
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "open /etc/x");
        let debug = format!("{:?}", TaskError::node(Box::new(denied)));
        assert!(debug.contains("PermissionDenied"), "{debug}");
        let plain = format!("{:?}", TaskError::strategy("lost"));
        assert!(!plain.contains("source"), "{plain}");
    }

    /// `{:#}` says the whole chain, each cause once; `{}` the message alone.
    #[test]
    fn the_alternate_form_says_the_whole_chain() {
        let err = TaskError::node(Box::new(Upload(Quota)));
        assert_eq!(err.to_string(), "the upload failed");
        assert_eq!(format!("{err:#}"), "the upload failed: quota exceeded");
        // A cause below that says its own cause in its text: that one is not said again.
        #[derive(Debug, thiserror::Error)]
        #[error("write: {0}")]
        struct Write(#[source] Quota);
        #[derive(Debug, thiserror::Error)]
        #[error("the upload failed")]
        struct Deep(#[source] Write);
        let deep = TaskError::node(Box::new(Deep(Write(Quota))));
        assert_eq!(
            format!("{deep:#}"),
            "the upload failed: write: quota exceeded"
        );
        let plain = TaskError::strategy("lost");
        assert_eq!(format!("{plain:#}"), "lost");
    }

    /// Each cause once in the chain: the node's error is the message, its cause the source.
    #[test]
    fn the_chain_says_each_cause_once() {
        let err = TaskError::node(Box::new(Upload(Quota)));
        assert_eq!(err.to_string(), "the upload failed");
        assert!(err.downcast_ref::<Upload>().is_some());
        let cause = err.source().expect("the node error's cause");
        assert_eq!(cause.to_string(), "quota exceeded");
        assert!(cause.source().is_none());
        assert!(TaskError::node(Box::new(Quota)).source().is_none());
    }

    /// An error that shows its cause in its message and returns it as its source too.
    #[derive(Debug, thiserror::Error)]
    #[error("upload: {0}")]
    struct SaysItsCause(#[source] Upload);

    #[test]
    fn a_cause_the_message_already_says_is_passed_over() {
        let err = TaskError::node(Box::new(SaysItsCause(Upload(Quota))));
        assert_eq!(err.to_string(), "upload: the upload failed");
        // "the upload failed" is said: the chain goes on with what is not.
        assert_eq!(err.source().unwrap().to_string(), "quota exceeded");
        let cause = SaysItsCause(Upload(Quota));
        let unsaid = first_unsaid_cause("saving: upload: the upload failed", Some(&cause));
        assert_eq!(unsaid.unwrap().to_string(), "quota exceeded");
        let all_said = "saving: upload: the upload failed: quota exceeded";
        assert!(first_unsaid_cause(all_said, Some(&Quota)).is_none());
        assert!(first_unsaid_cause("", None).is_none());
        // Text that only happens to appear in the message is not said.
        let exceeded = first_unsaid_cause("quota exceeded twice", Some(&Quota));
        assert!(exceeded.is_some());
        assert!(first_unsaid_cause("the quota exceeded", Some(&Quota)).is_some());
    }

    #[test]
    fn panic_payloads_become_messages() {
        let err = TaskError::panic(Box::new("boom"));
        assert!(err.is_panic());
        assert_eq!(err.message(), "node panicked: boom");
        let err = TaskError::panic(Box::new(String::from("bang")));
        assert_eq!(err.message(), "node panicked: bang");
        let err = TaskError::panic(Box::new(7_u8));
        assert!(err.message().contains("non-string"));
    }

    /// A peer of a later version may send a cause this one does not know yet: its error still
    /// reads (as the strategy's failure, with the peer's message), so the answer it carries is
    /// not lost with it.
    #[test]
    fn a_cause_this_version_does_not_know_reads_as_a_strategy_failure() {
        let json = r#"{"kind":"rate_limited","message":"slow down"}"#;
        let back: TaskError = serde_json::from_str(json).unwrap();
        assert!(back.is_strategy_error(), "{back:?}");
        assert_eq!(back.message(), "slow down");
        #[cfg(feature = "portable")]
        {
            // postcard: the variant's index (a varint, 200 here, past every known cause), then
            // the message's length and bytes.
            let back: TaskError = crate::decode(&[0xc8, 0x01, 2, b'h', b'i']).unwrap();
            assert!(back.is_strategy_error(), "{back:?}");
            assert_eq!(back.message(), "hi");
            let again: TaskError = crate::decode(&crate::encode(&back).unwrap()).unwrap();
            assert_eq!(again, back, "sent on as the strategy failure it reads as");
        }
    }

    #[test]
    fn serde_round_trip_keeps_kind_and_message() {
        let err = TaskError::shutdown("async");
        let json = serde_json::to_string(&err).unwrap();
        let back: TaskError = serde_json::from_str(&json).unwrap();
        assert!(back.is_shutdown());
        assert_eq!(back.message(), err.message());
    }
}
