//! A worker's input pipe, and the task that writes what it could not take at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::unix::pipe;
use tokio::sync::Notify;

/// From how many runs in flight on a worker its next frames wait for the writing task, to be
/// written together, instead of each being written at once.
pub(super) const BATCH_WHEN_PENDING: usize = 8;

/// A worker's input pipe. Dispatch writes frames for an idle worker straight into the pipe
/// without blocking; what the pipe cannot take yet, and the frames for a busy worker, wait in a
/// backlog that [`finish_writes`] drains (whatever has gathered, in large writes) when it is
/// writable.
pub(super) struct WorkerInput {
    pub(super) pipe: pipe::Sender,
    pub(super) backlog: Mutex<Backlog>,
    pub(super) wake: Notify,
}

#[derive(Default)]
pub(super) struct Backlog {
    pub(super) bytes: VecDeque<u8>,
    pub(super) closed: bool,
}

impl WorkerInput {
    pub(super) fn new(pipe: pipe::Sender) -> Self {
        Self {
            pipe,
            backlog: Mutex::new(Backlog::default()),
            wake: Notify::new(),
        }
    }

    pub(super) fn backlog(&self) -> MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame` behind anything already waiting. With `now` and nothing waiting, writes at
    /// once what the pipe takes; otherwise the writing task writes it, together with whatever
    /// else is queued by the time it runs.
    pub(super) fn send(&self, frame: &[u8], now: bool) -> std::io::Result<()> {
        let mut backlog = self.backlog();
        if backlog.closed {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        let mut rest = frame;
        if now && backlog.bytes.is_empty() {
            while !rest.is_empty() {
                match self.pipe.try_write(rest) {
                    Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if !rest.is_empty() {
            backlog.bytes.extend(rest);
            drop(backlog);
            self.wake.notify_one();
        }
        Ok(())
    }

    /// No more frames: once the backlog is written the pipe closes and the worker sees the end of
    /// its input.
    pub(super) fn close(&self) {
        self.backlog().closed = true;
        self.wake.notify_one();
    }
}

/// Writes each worker's backlog whenever the pipe can take it, until the input is closed and
/// empty; dropping the last handle then closes the pipe.
pub(super) async fn finish_writes(input: Arc<WorkerInput>) {
    enum Step {
        Wrote,
        Full,
        Idle,
    }
    loop {
        // The lock is held only inside this block, never across an await.
        let step = {
            let mut backlog = input.backlog();
            if backlog.bytes.is_empty() {
                if backlog.closed {
                    return;
                }
                Step::Idle
            } else {
                let (front, _) = backlog.bytes.as_slices();
                match input.pipe.try_write(front) {
                    Ok(n) if n > 0 => {
                        backlog.bytes.drain(..n);
                        Step::Wrote
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Step::Full,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Step::Wrote,
                    // The worker is gone; its supervision notices on the other pipe. Later
                    // frames are refused, so dispatch hands them to another worker.
                    _ => {
                        backlog.closed = true;
                        return;
                    }
                }
            }
        };
        match step {
            Step::Wrote => {}
            Step::Full => {
                if input.pipe.writable().await.is_err() {
                    input.backlog().closed = true;
                    return;
                }
            }
            Step::Idle => input.wake.notified().await,
        }
    }
}
