//! [`ExecutionMode`]: the name under which a coordinator looks up a strategy.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of an execution mode: the key of a coordinator's mode -> strategy map.
///
/// The built-in modes are [`ExecutionMode::ASYNC`], [`ExecutionMode::THREADED`] and
/// [`ExecutionMode::PROCESS`]; any other name is a custom mode for a user's strategy.
///
/// A mode is made from a `&'static str` or a `String`: a name borrowed for less than `'static`
/// (read from a configuration, say) is passed as `name.to_owned()`.
///
/// # Examples
///
/// ```
/// use task_core::ExecutionMode;
///
/// assert_eq!(ExecutionMode::ASYNC.as_str(), "async");
/// let custom = ExecutionMode::from("rate-limited");
/// assert!(!custom.is_builtin());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecutionMode(Cow<'static, str>);

impl ExecutionMode {
    /// Tasks run on the tokio runtime: I/O-bound work.
    pub const ASYNC: ExecutionMode = ExecutionMode(Cow::Borrowed("async"));
    /// Tasks run on a thread pool: CPU-bound work.
    pub const THREADED: ExecutionMode = ExecutionMode(Cow::Borrowed("threaded"));
    /// Tasks run in supervised worker processes: crash isolation, separate memory.
    pub const PROCESS: ExecutionMode = ExecutionMode(Cow::Borrowed("process"));

    /// A mode named `name`.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// A mode with a static name, usable in constants (as a strategy crate's suggested mode).
    pub const fn new_static(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }

    /// The mode's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of the built-in modes.
    pub fn is_builtin(&self) -> bool {
        [Self::ASYNC, Self::THREADED, Self::PROCESS].contains(self)
    }
}

impl fmt::Debug for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ExecutionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&'static str> for ExecutionMode {
    fn from(name: &'static str) -> Self {
        Self(Cow::Borrowed(name))
    }
}

impl From<String> for ExecutionMode {
    fn from(name: String) -> Self {
        Self(Cow::Owned(name))
    }
}
