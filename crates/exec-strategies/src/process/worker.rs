//! The worker side: a process started by a [`ProcessExecutionStrategy`](super::ProcessExecutionStrategy)
//! serves tasks from its registry over two pipes of its own.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::{AbortHandle, AbortRegistration, Abortable};
use task_core::context::EventSink;
use task_core::{NodeRegistry, TaskError};

use super::pipes::{PARENT_ENV, named_pipes, worker_pipes};
use super::wire::{self, FromWorker, HEADER_LEN, PROTOCOL_VERSION, ToWorker};

/// Set (to `1`) in a worker's environment by the parent: "serve tasks, do not run `main`".
pub const WORKER_ENV: &str = "EXEC_STRATEGIES_WORKER";
/// The largest frame the worker accepts and sends, in bytes.
pub(crate) const MAX_FRAME_ENV: &str = "EXEC_STRATEGIES_MAX_FRAME";
/// How many runtime threads the worker runs tasks on.
pub(crate) const THREADS_ENV: &str = "EXEC_STRATEGIES_WORKER_THREADS";
/// How many tasks the worker runs at once.
pub(crate) const CONCURRENCY_ENV: &str = "EXEC_STRATEGIES_WORKER_CONCURRENCY";

/// Enters worker mode if this process was started as a worker of a
/// [`ProcessExecutionStrategy`](super::ProcessExecutionStrategy), and returns at once otherwise
/// (in a program a worker's node started, too: it inherits the environment, not the pipes).
///
/// Call it first thing in `main`, with the registry of every process-capable node the worker
/// should run. In worker mode it serves tasks until the parent asks it to stop (or goes away),
/// then exits the process; it never returns.
///
/// In worker mode the protocol runs on two pipes of its own ([`worker_pipes`]); stdin is
/// `/dev/null` and anything the program prints to stdout goes to the parent's stderr.
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
    // Pipes gone: a program a worker's node started (its parent is that worker), or a worker
    // that lost them on its way here (its parent is the pool), which must fail, not run main.
    let pool = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    if named_pipes().is_err() && pool != Some(std::os::unix::process::parent_id()) {
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

/// Where frames to the parent go: whichever thread has one writes it.
struct Output {
    out: Mutex<BufWriter<File>>,
}

impl Output {
    fn out(&self) -> MutexGuard<'_, BufWriter<File>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `frame`, flushing unless the caller says more is coming right away.
    fn send(&self, frame: &[u8], flush: bool) -> io::Result<()> {
        let mut out = self.out();
        out.write_all(frame)?;
        if flush { out.flush() } else { Ok(()) }
    }

    /// Sends what is queued (nothing to do when nothing is).
    fn flush(&self) -> io::Result<()> {
        self.out().flush()
    }
}

type Run = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, TaskError>> + Send>>;

/// Decodes the node of a run (user `Deserialize` code: a panic is the run's failure) and makes
/// its future.
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

/// Sends the events run `id`'s node broadcasts to the parent as they come, each in a frame of its
/// own, ahead of the run's answer.
struct RunEvents {
    id: u64,
    serving: Arc<Serving>,
}

impl EventSink for RunEvents {
    fn broadcast(&self, event: Arc<str>) {
        let message = FromWorker::Event {
            id: self.id,
            event: event.to_string(),
        };
        let frame = match wire::encode_frame(&message, self.serving.max_frame) {
            Ok(frame) => frame,
            Err(e) => return tracing::warn!(run = self.id, %e, "event not sent"),
        };
        let mut out = self.serving.output.out();
        // Checked under the output's lock, which the answer is written under: an event the
        // node sends after its run was answered (from a sink it kept) is dropped here.
        if !self.serving.runs().running.contains_key(&self.id) {
            return;
        }
        // A failed write means the parent is gone; the reading thread sees it too.
        let _ = out.write_all(&frame).and_then(|()| out.flush());
    }
}

/// `run`, polled with `events` taking what its node broadcasts.
fn with_events(events: Arc<RunEvents>, mut run: Run) -> Run {
    Box::pin(std::future::poll_fn(move |cx| {
        let sink: Arc<dyn EventSink> = Arc::clone(&events) as _;
        task_core::context::with_events(sink, || run.as_mut().poll(cx))
    }))
}

/// A run handed over and not started: its node is decoded only when it starts, after the parent
/// was told, so a crash while decoding is that run's.
struct Given {
    id: u64,
    name: String,
    payload: Vec<u8>,
}

/// The runs the worker was given: those waiting for a place, and those running.
#[derive(Default)]
struct Runs {
    queued: VecDeque<Given>,
    running: HashMap<u64, AbortHandle>,
    /// Runs ended and still being answered: the worker does not exit before they are.
    answering: usize,
}

impl Runs {
    /// Takes a place for run `id` (the caller checked there is one).
    fn take_place(&mut self, id: u64) -> AbortRegistration {
        let (handle, registration) = AbortHandle::new_pair();
        self.running.insert(id, handle);
        registration
    }

    /// Takes the next queued run out of the queue, with a place for it.
    fn next_queued(&mut self) -> Option<(Given, AbortRegistration)> {
        let given = self.queued.pop_front()?;
        let registration = self.take_place(given.id);
        Some((given, registration))
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.queued.is_empty() && self.answering == 0
    }
}

/// What the reading thread and the runtime's threads share.
struct Serving {
    registry: NodeRegistry,
    output: Output,
    runs: Mutex<Runs>,
    /// Woken when the last run is answered.
    idle: Condvar,
    max_frame: usize,
    concurrency: usize,
}

impl Serving {
    fn runs(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the parent that `id`, which has a place, starts (or, when the parent takes it as
    /// started, sends what is queued: an answer must not wait behind node code), then decodes it.
    fn begin(
        self: &Arc<Self>,
        id: u64,
        name: &str,
        payload: &[u8],
        registration: AbortRegistration,
        announce: bool,
    ) -> io::Result<Abortable<Run>> {
        if announce {
            self.output.send(&started_frame(id, self.max_frame), true)?;
        } else {
            self.output.flush()?;
        }
        let events = Arc::new(RunEvents {
            id,
            serving: Arc::clone(self),
        });
        Ok(Abortable::new(
            with_events(events, start_run(&self.registry, name, payload)),
            registration,
        ))
    }

    /// Runs `id`, started already, to its end on the runtime, then answers it.
    fn run_rest(self: &Arc<Self>, id: u64, run: Abortable<Run>) {
        let serving = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = run.await.unwrap_or_else(|_| Err(cancelled_by_pool()));
            // A failed write means the parent is gone; the reading thread sees it too.
            let _ = serving.finish(id, outcome, true, false);
        });
    }

    /// Answers run `id`, frees its place and, unless the reader does (`by_reader`), starts the
    /// next queued run in it. `flush` says whether nothing else is known to follow at once.
    fn finish(
        self: &Arc<Self>,
        id: u64,
        outcome: Result<Vec<u8>, TaskError>,
        flush: bool,
        by_reader: bool,
    ) -> io::Result<()> {
        let (follows, next) = {
            let mut runs = self.runs();
            runs.running.remove(&id);
            runs.answering += 1;
            let next = if by_reader { None } else { runs.next_queued() };
            (next.is_some() || !runs.queued.is_empty(), next)
        };
        // A queued run starts next (here, or on the reader): its start carries the answer.
        let answered = self
            .output
            .send(&done_frame(id, outcome, self.max_frame), flush && !follows);
        let mut result = answered;
        // The parent is gone when a write fails: the next run then never starts.
        let mut never_started = None;
        if let Some((given, registration)) = next {
            if result.is_ok() {
                match self.begin(given.id, &given.name, &given.payload, registration, true) {
                    Ok(run) => self.run_rest(given.id, run),
                    Err(e) => {
                        result = Err(e);
                        never_started = Some(given.id);
                    }
                }
            } else {
                never_started = Some(given.id);
            }
        }
        let mut runs = self.runs();
        runs.answering -= 1;
        if let Some(id) = never_started {
            runs.running.remove(&id);
        }
        if runs.is_idle() {
            self.idle.notify_all();
        }
        result
    }

    /// Drops run `id`: a queued one is answered as cancelled at once, a running one stops where it
    /// next waits (and is answered then).
    fn cancel(self: &Arc<Self>, id: u64) -> io::Result<()> {
        let mut runs = self.runs();
        if let Some(position) = runs.queued.iter().position(|given| given.id == id) {
            runs.queued.remove(position);
            drop(runs);
            let cancelled = Err(TaskError::cancelled(
                "the run was cancelled by the pool before it started",
            ));
            return self
                .output
                .send(&done_frame(id, cancelled, self.max_frame), true);
        }
        if let Some(handle) = runs.running.get(&id) {
            handle.abort();
        }
        Ok(())
    }

    /// Takes the next queued run, with a place for it, if a place is free and `ready()`.
    fn startable(&self, ready: impl FnOnce() -> bool) -> Option<(Given, AbortRegistration)> {
        let mut runs = self.runs();
        let free = runs.running.len() < self.concurrency && !runs.queued.is_empty();
        if free && ready() {
            runs.next_queued()
        } else {
            None
        }
    }

    /// Waits until every run given has been answered.
    fn wait_idle(&self) {
        let mut runs = self.runs();
        while !runs.is_idle() {
            runs = self.idle.wait(runs).unwrap_or_else(|p| p.into_inner());
        }
    }
}

fn serve(registry: &NodeRegistry) -> io::Result<()> {
    let max_frame = env_usize(MAX_FRAME_ENV, wire::DEFAULT_MAX_FRAME);
    let threads = env_usize(THREADS_ENV, 1).clamp(1, super::builder::MAX_WORKER_THREADS);
    let concurrency = env_usize(CONCURRENCY_ENV, 1).max(1);
    let (input, output) = worker_pipes()?;
    let serving = Arc::new(Serving {
        registry: registry.clone(),
        output: Output {
            out: Mutex::new(BufWriter::new(output)),
        },
        runs: Mutex::new(Runs::default()),
        idle: Condvar::new(),
        max_frame,
        concurrency,
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
    serving.output.send(
        &wire::encode_frame(&hello, max_frame.max(wire::MAX_HANDSHAKE))
            .map_err(io::Error::other)?,
        true,
    )?;

    let mut input = BufReader::new(input);
    // With one runtime thread and one run at a time, running a task on this reader until it
    // first waits costs no parallelism and saves two thread hops per task. Otherwise tasks go
    // straight to the runtime: a node polled here would keep this reader from the next frames
    // (which the parent may take as started, or which cancel a run).
    let inline = threads == 1 && concurrency == 1;
    let _runtime = runtime.enter();
    let noop = std::task::Waker::noop();
    let result = loop {
        // A run queued while more frames were waiting starts once they are read: a cancellation
        // among them drops it before it starts.
        let queued = serving.startable(|| !more_input(&input));
        let step = if let Some((given, registration)) = queued {
            serving
                .begin(given.id, &given.name, &given.payload, registration, true)
                .map(|run| Some((given.id, run)))
        } else {
            // About to wait for the parent: nothing queued to it may wait with us.
            if input.buffer().is_empty()
                && let Err(e) = serving.output.flush()
            {
                break Err(e);
            }
            let mut header = [0; HEADER_LEN];
            match input.read_exact(&mut header) {
                Ok(()) => {}
                // The parent closed our input: it is gone or done with us.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break Ok(()),
                Err(e) => break Err(e),
            }
            let len = match wire::body_len(header, max_frame) {
                Ok(len) => len,
                Err(e) => break Err(io::Error::other(e)),
            };
            let mut body = vec![0; len];
            if let Err(e) = input.read_exact(&mut body) {
                break Err(e);
            }
            match wire::decode_body::<ToWorker>(&body) {
                Ok(ToWorker::Run {
                    id,
                    name,
                    payload,
                    announce,
                }) => {
                    let given = Given { id, name, payload };
                    // Counted as queued, it may have its cancellation behind it: read that first.
                    let behind = announce && more_input(&input);
                    let place = {
                        let mut runs = serving.runs();
                        if runs.running.len() < concurrency && runs.queued.is_empty() && !behind {
                            Some((runs.take_place(id), given))
                        } else {
                            // Queued: it is announced when it starts, whatever the parent assumed.
                            runs.queued.push_back(given);
                            None
                        }
                    };
                    match place {
                        None => Ok(None),
                        Some((registration, given)) => serving
                            .begin(id, &given.name, &given.payload, registration, announce)
                            .map(|run| Some((id, run))),
                    }
                }
                Ok(ToWorker::Cancel { id }) => serving.cancel(id).map(|()| None),
                Err(e) => Err(io::Error::other(e)),
            }
        };
        let started = match step {
            Ok(started) => started,
            Err(e) => break Err(e),
        };
        let Some((id, mut run)) = started else {
            continue;
        };
        if !inline {
            serving.run_rest(id, run);
            continue;
        }
        match Pin::new(&mut run).poll(&mut Context::from_waker(noop)) {
            Poll::Ready(outcome) => {
                let outcome = outcome.unwrap_or_else(|_| Err(cancelled_by_pool()));
                // More frames already buffered, or a queued run to start: one flush for all.
                let more_waiting = !input.buffer().is_empty();
                if let Err(e) = serving.finish(id, outcome, !more_waiting, true) {
                    break Err(e);
                }
            }
            Poll::Pending => serving.run_rest(id, run),
        }
    };
    // At the end of the input, every run given is finished and answered first; when the parent
    // is gone (an error), there is nobody to answer.
    let mut result = result;
    while result.is_ok()
        && let Some((given, registration)) = serving.startable(|| true)
    {
        let run = serving.begin(given.id, &given.name, &given.payload, registration, true);
        result = run.map(|run| serving.run_rest(given.id, run));
    }
    if result.is_ok() {
        serving.wait_idle();
    }
    let flushed = serving.output.flush();
    drop(_runtime);
    runtime.shutdown_background();
    result.and(flushed)
}

/// Whether more of the parent's frames can be read at once: buffered, or waiting in the pipe.
fn more_input(input: &BufReader<File>) -> bool {
    if !input.buffer().is_empty() {
        return true;
    }
    let mut fd = libc::pollfd {
        fd: input.get_ref().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, and no wait.
    unsafe { libc::poll(&mut fd, 1, 0) > 0 }
}

fn cancelled_by_pool() -> TaskError {
    TaskError::cancelled("the run was cancelled by the pool (its caller stopped waiting)")
}

fn started_frame(id: u64, max_frame: usize) -> Vec<u8> {
    // A few bytes: always within the smallest maximum frame (64 bytes).
    wire::encode_frame(&FromWorker::Started { id }, max_frame).unwrap_or_default()
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
            // A short error message fits the smallest frame a pool accepts (1 KiB).
            wire::encode_frame(&refusal, usize::MAX).unwrap_or_default()
        }
    }
}
