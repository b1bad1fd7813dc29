//! [`NatsError`]: why connecting, binding a stream or a consumer, or serving failed, and what a
//! caller may do about it.

/// Why connecting, binding the stream or the consumer, or serving failed.
#[derive(Debug)]
pub struct NatsError {
    context: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
    kind: ErrorKind,
}

/// What a caller may do about a [`NatsError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    /// The configuration cannot work: change it.
    Config,
    /// The server could not be reached: try again later.
    Connect,
    /// The consumer a worker served was deleted (with its stream, perhaps): make the worker
    /// again.
    Gone,
    Other,
}

impl std::fmt::Display for NatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

/// The client's error is in the message; the source is the first of its causes the message
/// does not already say, so a chain says each cause once.
impl std::error::Error for NatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        task_core::first_unsaid_cause(&self.to_string(), self.source.source())
    }
}

impl NatsError {
    pub(crate) fn new(
        context: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            context,
            source: source.into(),
            kind: ErrorKind::Other,
        }
    }

    fn of_kind(self, kind: ErrorKind) -> Self {
        Self { kind, ..self }
    }

    /// The server could not be reached.
    pub(crate) fn connect(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new("connecting to the NATS server", source).of_kind(ErrorKind::Connect)
    }

    /// The consumer a worker served is gone.
    pub(crate) fn gone(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new("serving the consumer", source).of_kind(ErrorKind::Gone)
    }

    /// A configuration (this side's, or a stream's as the server keeps it) that cannot work:
    /// `why` says why, and what to change.
    pub(crate) fn config(
        context: &'static str,
        why: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::new(context, why).of_kind(ErrorKind::Config)
    }

    /// Whether the configuration, or a stream's limits as the server keeps them, cannot work
    /// (the message says why and what to change): a stream's subjects held by another stream,
    /// a duplicate window too short. No retry helps.
    pub fn is_config_error(&self) -> bool {
        self.kind == ErrorKind::Config
    }

    /// Whether the NATS server could not be reached (refused, no route, bad credentials, a
    /// timeout): trying again later may help.
    pub fn is_connect_error(&self) -> bool {
        self.kind == ErrorKind::Connect
    }

    /// Whether the consumer a worker served is gone (deleted, or its stream with it): a
    /// worker made again makes it again.
    pub fn is_consumer_gone(&self) -> bool {
        self.kind == ErrorKind::Gone
    }

    /// What was being done.
    pub fn context(&self) -> &str {
        self.context
    }
}
