//! Starting a worker process: its pipes, its environment, its handshake.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use task_core::TaskError;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Command;

use super::error::{ErrorKind, ProcessError};
use super::input::WorkerInput;
use super::pipes::{PARENT_ENV, PIPES_ENV};
use super::shared::{Shared, Started};
use super::wire::{self, FromWorker, HEADER_LEN, PROTOCOL_VERSION};
use super::worker::{CONCURRENCY_ENV, MAX_FRAME_ENV, THREADS_ENV, WORKER_ENV};

/// How long a worker that closed its output before announcing itself is given to exit, for its
/// exit status to be told.
const EXIT_AFTER_EOF: Duration = Duration::from_millis(500);

pub(super) fn describe(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGKILL => "SIGKILL",
            libc::SIGTERM => "SIGTERM",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGINT => "SIGINT",
            libc::SIGPIPE => "SIGPIPE",
            _ => "signal",
        };
        format!("was killed by signal {signal} ({name})")
    } else if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else {
        format!("ended ({status})")
    }
}

pub(super) async fn read_frame(
    stdout: &mut BufReader<impl AsyncRead + Unpin>,
    max_frame: usize,
) -> Result<Option<FromWorker>, TaskError> {
    let mut header = [0; HEADER_LEN];
    match stdout.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => {
            return Err(TaskError::worker_lost(format!(
                "reading from the worker: {e}"
            )));
        }
    }
    let len = wire::body_len(header, max_frame)?;
    // Usually the whole frame came in with its header: decode it where it lies.
    if stdout.buffer().len() >= len {
        let message = wire::decode_body(&stdout.buffer()[..len]);
        std::pin::Pin::new(&mut *stdout).consume(len);
        return Ok(Some(message?));
    }
    let mut body = vec![0; len];
    // A frame cut short by the end of the output is a worker that died while writing it (killed
    // during a large answer, say), not one that broke the protocol: what it held is handed on as
    // for any other death.
    stdout.read_exact(&mut body).await.map_err(|e| {
        TaskError::worker_lost(format!("the worker's output ended within a frame: {e}"))
    })?;
    Ok(Some(wire::decode_body(&body)?))
}

impl Shared {
    /// Spawns a worker process and checks its handshake.
    pub(super) async fn start_worker(&self, slot: usize) -> Result<Started, ProcessError> {
        let spawn_error = |what: &str, e: std::io::Error| {
            ProcessError::new(
                ErrorKind::Spawn,
                format!(
                    "cannot start worker `{}`: {what}: {e}",
                    self.config.program.display()
                ),
            )
        };
        // The protocol's pipes: the worker's ends are named in its environment and kept open
        // across its exec, every other end closes there (the standard library opens pipes
        // close-on-exec), so no other child holds them.
        let (worker_reads, to_worker) = std::io::pipe().map_err(|e| spawn_error("pipe", e))?;
        let (from_worker, worker_writes) = std::io::pipe().map_err(|e| spawn_error("pipe", e))?;
        // What a node prints goes to the parent's stderr, never into a frame.
        // Each of the worker's ends is named with its pipe, which the worker checks it holds.
        let named = |end: std::os::fd::BorrowedFd<'_>| {
            let pipe = std::fs::File::from(end.try_clone_to_owned()?).metadata()?;
            Ok::<_, std::io::Error>(format!("{}:{}", end.as_raw_fd(), pipe.ino()))
        };
        let pipes = named(worker_reads.as_fd())
            .and_then(|reads| Ok(format!("{reads},{}", named(worker_writes.as_fd())?)))
            .map_err(|e| spawn_error("pipe", e))?;
        let stdout = std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| spawn_error("stderr", e))?;
        let mut command = Command::new(&self.config.program);
        command
            .args(&self.config.args)
            .env(WORKER_ENV, "1")
            .env(MAX_FRAME_ENV, self.config.max_frame.to_string())
            .env(THREADS_ENV, self.config.worker_threads.to_string())
            .env(CONCURRENCY_ENV, self.config.per_worker.to_string())
            .env(PIPES_ENV, pipes)
            .env(PARENT_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        keep_open_in_child(
            &mut command,
            [worker_reads.as_raw_fd(), worker_writes.as_raw_fd()],
        );
        let spawned = command.spawn();
        // The worker has its own copies now (or never will).
        drop((worker_reads, worker_writes));
        let mut child = spawned.map_err(|e| spawn_error("spawn", e))?;
        let pipes = pipe::Sender::from_owned_fd(OwnedFd::from(to_worker)).and_then(|input| {
            Ok((
                input,
                pipe::Receiver::from_owned_fd(OwnedFd::from(from_worker))?,
            ))
        });
        let (input, output) = match pipes {
            Ok(pipes) => pipes,
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(spawn_error("the worker's pipes", e));
            }
        };
        let mut output = BufReader::new(output);
        let handshake_limit = self.config.max_frame.max(wire::MAX_HANDSHAKE);
        let hello = tokio::time::timeout(self.config.handshake_timeout, async {
            // A pool that stops meanwhile has no use for the worker: it is not waited for.
            tokio::select! {
                hello = read_frame(&mut output, handshake_limit) => Some(hello),
                () = self.stopped() => None,
            }
        })
        .await;
        let hello = match hello {
            Ok(Some(read)) => Ok(read),
            Ok(None) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(ProcessError::new(
                    ErrorKind::Spawn,
                    "the pool stopped while the worker started",
                ));
            }
            Err(elapsed) => Err(elapsed),
        };
        let failure = match hello {
            Ok(Ok(Some(FromWorker::Hello {
                protocol,
                names,
                pid,
            }))) => {
                if protocol != PROTOCOL_VERSION {
                    ProcessError::new(
                        ErrorKind::Handshake,
                        format!(
                            "worker speaks protocol {protocol}, this program speaks {PROTOCOL_VERSION}"
                        ),
                    )
                } else {
                    let missing: Vec<&String> = self
                        .expected_names
                        .iter()
                        .filter(|n| !names.contains(n))
                        .collect();
                    if missing.is_empty() {
                        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(worker = id, pid, slot, "worker ready");
                        return Ok(Started {
                            id,
                            pid,
                            child,
                            input: Arc::new(WorkerInput::new(input)),
                            output,
                        });
                    } else {
                        ProcessError::new(
                            ErrorKind::Handshake,
                            format!(
                                "the worker's registry lacks {missing:?}: it is not the same program"
                            ),
                        )
                    }
                }
            }
            Ok(Ok(Some(
                FromWorker::Done { .. } | FromWorker::Started { .. } | FromWorker::Event { .. },
            ))) => ProcessError::new(
                ErrorKind::Protocol,
                "the worker answered before announcing itself",
            ),
            Ok(Ok(None)) => {
                // Its output usually closes as it exits; one that closed it and lives on is
                // killed below, not waited for.
                let status = match tokio::time::timeout(EXIT_AFTER_EOF, child.wait()).await {
                    Ok(status) => status.map(describe).unwrap_or_default(),
                    Err(_) => "closed its output without exiting".into(),
                };
                ProcessError::new(
                    ErrorKind::Spawn,
                    format!(
                        "the worker {status} before announcing itself: does its main call run_worker_if_requested first?"
                    ),
                )
            }
            Ok(Err(e)) => ProcessError::new(ErrorKind::Protocol, format!("bad handshake: {e}")),
            Err(_) => ProcessError::new(
                ErrorKind::HandshakeTimeout,
                format!(
                    "the worker did not announce itself within {:?}: does its main call run_worker_if_requested first?",
                    self.config.handshake_timeout
                ),
            ),
        };
        let _ = child.start_kill();
        let _ = child.wait().await;
        Err(failure)
    }
}

/// Asks the kernel to kill the worker when the thread that spawned it (the supervisor) ends,
/// including when the whole parent process is killed, so no worker outlives its parent.
pub(super) fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec and only calls
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl took effect.
                if u32::try_from(libc::getppid()).ok() != Some(parent) {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = command;
}

/// Keeps `fds` open across the worker's exec: clears their close-on-exec flag in the forked
/// child only, so the parent's copies stay close-on-exec and no other child inherits them.
pub(super) fn keep_open_in_child(command: &mut Command, fds: [std::os::fd::RawFd; 2]) {
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe, on descriptors the child inherited.
    unsafe {
        command.pre_exec(move || {
            for fd in fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
