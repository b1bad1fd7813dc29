//! Why a process pool could not start.

use std::fmt;

/// Why a [`ProcessExecutionStrategy`](super::ProcessExecutionStrategy) could not start.
#[derive(Clone)]
pub struct ProcessError {
    kind: ErrorKind,
    message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ErrorKind {
    Spawn,
    Handshake,
    HandshakeTimeout,
    Protocol,
    Runtime,
}

impl ProcessError {
    pub(super) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// A worker process could not be started (missing or unexecutable command, resource limits).
    pub fn is_spawn(&self) -> bool {
        self.kind == ErrorKind::Spawn
    }

    /// A worker announced another protocol version (it is a different build of the program).
    pub fn is_handshake_mismatch(&self) -> bool {
        self.kind == ErrorKind::Handshake
    }

    /// A worker did not announce itself in time (it is not a worker: `main` never called
    /// [`run_worker_if_requested`](super::run_worker_if_requested)).
    pub fn is_handshake_timeout(&self) -> bool {
        self.kind == ErrorKind::HandshakeTimeout
    }

    /// A worker broke the wire protocol during the handshake (wrote something that is not a frame).
    pub fn is_protocol(&self) -> bool {
        self.kind == ErrorKind::Protocol
    }

    /// The supervisor thread or its runtime could not be started, or `start` was not awaited on a
    /// tokio runtime (or on a multi-thread one without its IO driver).
    pub fn is_runtime(&self) -> bool {
        self.kind == ErrorKind::Runtime
    }
}

impl fmt::Display for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for ProcessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for ProcessError {}
