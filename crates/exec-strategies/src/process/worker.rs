//! The worker side: a process started by a [`ProcessExecutionStrategy`](super::ProcessExecutionStrategy)
//! serves tasks from its registry over stdin/stdout.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use futures::FutureExt;
use task_core::{NodeRegistry, TaskError};

use super::wire::{self, FromWorker, HEADER_LEN, PROTOCOL_VERSION, ToWorkerRef};

/// Set (to `1`) in a worker's environment by the parent: "serve tasks, do not run `main`".
pub const WORKER_ENV: &str = "EXEC_STRATEGIES_WORKER";
/// The largest frame the worker accepts and sends, in bytes.
pub(crate) const MAX_FRAME_ENV: &str = "EXEC_STRATEGIES_MAX_FRAME";
/// How many runtime threads the worker runs tasks on.
pub(crate) const THREADS_ENV: &str = "EXEC_STRATEGIES_WORKER_THREADS";

/// Enters worker mode if this process was started as a worker of a
/// [`ProcessExecutionStrategy`](super::ProcessExecutionStrategy), and returns at once otherwise.
///
/// Call it first thing in `main`, with the registry of every process-capable node the worker
/// should run. In worker mode it serves tasks until the parent asks it to stop (or goes away),
/// then exits the process; it never returns.
///
/// In worker mode, stdout carries the protocol, so anything the program prints to stdout is sent
/// to stderr instead.
///
/// # Examples
///
/// ```no_run
/// use task_core::NodeRegistry;
///
/// fn registry() -> NodeRegistry {
///     let mut registry = NodeRegistry::new();
///     // registry.register::<MyNode>().unwrap();
///     registry
/// }
///
/// fn main() {
///     exec_strategies::run_worker_if_requested(&registry());
///     // ... the program proper: build a ProcessExecutionStrategy, submit tasks ...
/// }
/// ```
pub fn run_worker_if_requested(registry: &NodeRegistry) {
    if std::env::var_os(WORKER_ENV).is_none() {
        return;
    }
    let code = match serve(registry) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("exec-strategies worker {}: {e}", std::process::id());
            3
        }
    };
    std::process::exit(code);
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Keeps the protocol's stdout for frames and sends fd 1 (what `print!` writes to) to stderr.
fn take_stdout_for_frames() -> io::Result<File> {
    let frames = io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 on two open descriptors of this process; no Rust object owns fd 1 exclusively.
    let rc = unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(File::from(frames))
}

/// Counts runs in flight so the worker can finish them before exiting.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    lock: Mutex<()>,
    idle: Condvar,
}

impl InFlight {
    fn start(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn finish(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            drop(self.lock.lock().unwrap_or_else(|p| p.into_inner()));
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while self.count.load(Ordering::SeqCst) > 0 {
            guard = self.idle.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Where answers go: whichever thread finishes a run writes its answer.
struct Output {
    out: Mutex<BufWriter<File>>,
}

impl Output {
    /// Queues `frame`, flushing unless the caller says more is coming right away.
    fn send(&self, frame: &[u8], flush: bool) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        out.write_all(frame)?;
        if flush { out.flush() } else { Ok(()) }
    }
}

type Run = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, TaskError>> + Send>>;

fn start_run(registry: &NodeRegistry, name: &str, payload: &[u8]) -> Run {
    match registry.run(name, payload) {
        Ok(run) => Box::pin(
            AssertUnwindSafe(run)
                .catch_unwind()
                .map(|caught| caught.unwrap_or_else(|panic| Err(TaskError::panic(panic)))),
        ),
        Err(e) => Box::pin(std::future::ready(Err(e))),
    }
}

fn serve(registry: &NodeRegistry) -> io::Result<()> {
    let max_frame = env_usize(MAX_FRAME_ENV, wire::DEFAULT_MAX_FRAME);
    let threads = env_usize(THREADS_ENV, 1).max(1);
    let output = Arc::new(Output {
        out: Mutex::new(BufWriter::new(take_stdout_for_frames()?)),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("exec-worker")
        .enable_all()
        .build()?;

    let hello = FromWorker::Hello {
        protocol: PROTOCOL_VERSION,
        names: registry.names().into_iter().map(String::from).collect(),
        pid: std::process::id(),
    };
    output.send(
        &wire::encode_frame(&hello, max_frame).map_err(io::Error::other)?,
        true,
    )?;

    let in_flight = Arc::new(InFlight::default());
    let mut input = BufReader::new(io::stdin().lock());
    // With one runtime thread, running a task on this reader until it first waits costs no
    // parallelism and saves two thread hops per task; with more, tasks go straight to the runtime.
    let inline = threads == 1;
    let _runtime = runtime.enter();
    let noop = std::task::Waker::noop();
    let result = loop {
        let mut header = [0; HEADER_LEN];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            // The parent closed our stdin: it is gone or done with us.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(e) => break Err(e),
        }
        let len = match wire::body_len(header, max_frame) {
            Ok(len) => len,
            Err(e) => break Err(io::Error::other(e)),
        };
        // Usually the whole frame came in with its header: read it where it lies. The run is
        // started (its node decoded) before the bytes are let go.
        let mut body = Vec::new();
        let buffered = input.buffer().len() >= len;
        if !buffered {
            body.resize(len, 0);
            if let Err(e) = input.read_exact(&mut body) {
                break Err(e);
            }
        }
        let frame = if buffered {
            &input.buffer()[..len]
        } else {
            &body[..]
        };
        let message = match wire::decode_borrowed::<ToWorkerRef<'_>>(frame) {
            Ok(ToWorkerRef::Run { id, name, payload }) => {
                Ok(Some((id, start_run(registry, name, payload))))
            }
            Ok(ToWorkerRef::Shutdown) => Ok(None),
            Err(e) => Err(e),
        };
        if buffered {
            input.consume(len);
        }
        match message {
            Ok(Some((id, mut run))) => {
                if inline
                    && let std::task::Poll::Ready(outcome) =
                        run.as_mut().poll(&mut std::task::Context::from_waker(noop))
                {
                    // More requests already buffered: answer them all before one flush.
                    let more_waiting = !input.buffer().is_empty();
                    if let Err(e) = output.send(&done_frame(id, outcome, max_frame), !more_waiting)
                    {
                        break Err(e);
                    }
                    continue;
                }
                in_flight.start();
                let (output, in_flight) = (Arc::clone(&output), Arc::clone(&in_flight));
                runtime.spawn(async move {
                    let outcome = run.await;
                    // A failed write means the parent is gone; the read loop will see it too.
                    let _ = output.send(&done_frame(id, outcome, max_frame), true);
                    in_flight.finish();
                });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(io::Error::other(e)),
        }
    };
    in_flight.wait_idle();
    let flushed = output.out.lock().unwrap_or_else(|p| p.into_inner()).flush();
    drop(_runtime);
    runtime.shutdown_background();
    result.and(flushed)
}

/// The answer frame; an output too large for a frame becomes an error answer instead.
fn done_frame(id: u64, outcome: Result<Vec<u8>, TaskError>, max_frame: usize) -> Vec<u8> {
    let done = FromWorker::Done { id, outcome };
    match wire::encode_frame(&done, max_frame) {
        Ok(frame) => frame,
        Err(e) => {
            let refusal = FromWorker::Done {
                id,
                outcome: Err(TaskError::protocol(format!("the output was not sent: {e}"))),
            };
            // A short error message always fits a frame.
            wire::encode_frame(&refusal, usize::MAX).unwrap_or_default()
        }
    }
}
