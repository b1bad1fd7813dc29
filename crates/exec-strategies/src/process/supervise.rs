//! Supervising a worker for its life: reading its answers, and when it ends, failing or handing
//! on the runs it held and starting its replacement.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use task_core::TaskError;
use tokio::io::{AsyncRead, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::input::finish_writes;
use super::launch::{describe, read_frame};
use super::shared::{Live, Reply, Shared, Slot, Started};
use super::wire::FromWorker;

/// How long a worker's answers are still read after it ended or was killed: what it wrote before
/// is in the pipe already.
pub(super) const READ_REST: Duration = Duration::from_millis(500);

/// The first pause before a slot starts a worker again after one could not start (or several in
/// a row ended at once on their own); each pause in a row doubles it, up to [`LAST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LAST_PAUSE: Duration = Duration::from_secs(5);

/// Why a worker's supervision ended.
pub(super) enum Ended {
    /// It died: it closed its output (exited, crashed, was killed from outside).
    Died(String),
    /// The pool ended it (a cancelled run that would not stop, its input closed, the pool
    /// stopping).
    Killed(String),
    /// It broke the protocol: nothing it holds is handed to another worker of the same program.
    BrokeProtocol(String),
}

impl Ended {
    pub(super) fn reason(&self) -> &str {
        match self {
            Self::Died(reason) | Self::Killed(reason) | Self::BrokeProtocol(reason) => reason,
        }
    }

    /// How it ended, as a metric's label: `crashed`, `killed` (by the pool) or `broke_protocol`
    /// (`retired` is decided by the caller: a worker that ends as its pool stops or retires it).
    #[cfg(feature = "metrics")]
    fn kind(&self) -> &'static str {
        match self {
            Self::Died(_) => "crashed",
            Self::Killed(_) => "killed",
            Self::BrokeProtocol(_) => "broke_protocol",
        }
    }
}

impl Shared {
    /// Runs one slot for the life of the pool: supervises its worker, and replaces it when it
    /// ends, until shutdown.
    pub(super) async fn supervise(self: Arc<Self>, slot: usize, mut live: Live) {
        let this = &self;
        let mut backoff = FIRST_PAUSE;
        // Workers in a row of this slot that ended on their own with nothing run.
        let mut idle_deaths = 0;
        loop {
            let died_idle = this.run_worker(slot, live).await;
            if self.lock().shutting_down {
                return;
            }
            // One such death is an accident (an idle worker killed from outside): it is replaced
            // at once. Several in a row are a worker that cannot run here (a broken environment):
            // replaced in a tight loop, they would start processes as fast as the machine allows.
            // They are paused as a worker that cannot start is, and tasks waiting for a worker
            // are told why meanwhile.
            match died_idle {
                Some(_) => idle_deaths += 1,
                None => idle_deaths = 0,
            }
            if let Some(how) = died_idle.filter(|_| idle_deaths > 1) {
                let error = format!(
                    "its workers keep ending on their own with nothing run, {idle_deaths} in a \
                     row (the last {how})"
                );
                tracing::warn!(slot, %error, "pausing before replacing a worker");
                self.lock().last_spawn_error = Some(error);
                self.ready.notify_waiters();
                let shift = (idle_deaths - 2).min(7);
                if !this
                    .pause((FIRST_PAUSE * (1 << shift)).min(LAST_PAUSE))
                    .await
                {
                    return;
                }
            }
            // Replace it; a worker that cannot start is retried with a growing pause, and tasks
            // waiting for a worker are told why meanwhile.
            live = loop {
                match self.start_worker(slot).await {
                    Ok(worker) => match self.install(slot, worker, true) {
                        Ok(live) => break live,
                        Err(mut worker) => {
                            // The pool shut down or was dropped while this one started: nobody
                            // would close its input or kill it.
                            let _ = worker.child.start_kill();
                            let _ = worker.child.wait().await;
                            return;
                        }
                    },
                    Err(e) => {
                        if self.lock().shutting_down {
                            // Its start was stopped with the pool: nothing went wrong.
                            return;
                        }
                        tracing::warn!(slot, error = %e, "could not replace a worker");
                        self.lock().last_spawn_error = Some(e.to_string());
                        self.ready.notify_waiters();
                        if !this.pause(backoff).await {
                            return;
                        }
                        backoff = (backoff * 2).min(LAST_PAUSE);
                    }
                }
            };
            backoff = FIRST_PAUSE;
        }
    }

    /// Waits `how_long` before a slot starts its next worker; returns early, with `false`, when
    /// the pool stops meanwhile (nobody would use the worker, and a shutdown waits for this).
    async fn pause(&self, how_long: Duration) -> bool {
        let until = tokio::time::Instant::now() + how_long;
        loop {
            // The pool notifies `ready` once it has marked itself stopping.
            let stopping = self.ready.notified();
            if self.lock().shutting_down {
                return false;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until) => return !self.lock().shutting_down,
                () = stopping => {}
            }
        }
    }

    /// Makes a started worker available for dispatch in `slot` (counted as a restart when it
    /// replaces one); hands it back when the pool is stopping.
    pub(super) fn install(
        &self,
        slot: usize,
        worker: Started,
        restart: bool,
    ) -> Result<Live, Box<Started>> {
        let (kill_tx, kill_rx) = oneshot::channel::<String>();
        let mut state = self.lock();
        if state.shutting_down {
            return Err(Box::new(worker));
        }
        if restart {
            state.restarts += 1;
            state.last_spawn_error = None;
        }
        state.slots[slot] = Some(Slot {
            id: worker.id,
            pid: worker.pid,
            input: Some(Arc::clone(&worker.input)),
            kill: Some(kill_tx),
            pending: HashMap::default(),
            given: 0,
            completed: 0,
            draining: false,
        });
        drop(state);
        #[cfg(feature = "metrics")]
        if restart {
            recorded(|| metrics::counter!("process_worker_restarts_total").increment(1));
        }
        self.ready.notify_waiters();
        Ok(Live {
            worker,
            kill: kill_rx,
        })
    }

    /// Serves one worker until it ends. Then the runs it had started fail (as poison once their
    /// request crashed its workers often enough) and those it had not started go to another.
    /// Returns how it ended when it ended on its own without having run anything: not killed by
    /// the pool, not retired, no answer given, nothing running.
    pub(super) async fn run_worker(self: &Arc<Self>, slot: usize, live: Live) -> Option<String> {
        let Live {
            worker,
            kill: kill_rx,
        } = live;
        let Started {
            id,
            pid,
            mut child,
            input,
            output,
        } = worker;
        let writer = self.runtime.spawn(finish_writes(input));
        let mut reader = self.read_on_callers_runtime(slot, id, output);
        let read_ended = |read: Result<Ended, tokio::task::JoinError>| {
            read.unwrap_or_else(|e| {
                if e.is_cancelled() {
                    // The runtime the pool was started on has shut down: read on the
                    // supervisor's from now on.
                    self.readers_gone.store(true, Ordering::SeqCst);
                }
                Ended::Killed(format!("its answers could no longer be read ({e})"))
            })
        };
        // Whether frames it wrote may be left unread (its reader stopped before the end of its
        // output): a run it started may then look queued.
        let mut unread = false;
        let (ended, read_all) = tokio::select! {
            read = &mut reader => {
                unread = read.is_err();
                (read_ended(read), true)
            }
            // Its output may outlive it (held by a process it started): its exit is its end.
            _ = child.wait() => (Ended::Died("it ended".into()), false),
            reason = kill_rx => {
                (Ended::Killed(reason.unwrap_or_else(|_| "its slot was closed".into())), false)
            }
        };
        let _ = child.start_kill();
        let status = match child.wait().await {
            Ok(status) => describe(status),
            Err(e) => format!("could not be waited for ({e})"),
        };
        if !read_all {
            // What it wrote before it ended still counts: a run it answered is answered, one it
            // started is started. Its output closes with it, so this is quick. A breach of the
            // protocol in it stops the reading there: what follows may say a run started.
            match tokio::time::timeout(READ_REST, &mut reader).await {
                Ok(Ok(read)) => unread = matches!(read, Ended::BrokeProtocol(_)),
                Ok(read) => {
                    unread = true;
                    read_ended(read);
                }
                Err(_) => unread = true,
            }
        }
        reader.abort();
        writer.abort();
        let reason = ended.reason();
        let (lost, stopping) = {
            let mut state = self.lock();
            (state.slots[slot].take(), state.shutting_down)
        };
        let lost = lost?;
        let running = lost.pending.values().filter(|p| p.started).count();
        #[cfg(feature = "metrics")]
        {
            // A worker that ends while the pool stops or retires it has not crashed, unless it
            // ended with runs started and unanswered: it died running them.
            let how = match ended {
                Ended::Died(_) if (stopping || lost.draining) && running == 0 => "retired",
                _ => ended.kind(),
            };
            recorded(|| metrics::counter!("process_worker_exits_total", "how" => how).increment(1));
        }
        let idle = matches!(ended, Ended::Died(_))
            && !stopping
            && !lost.draining
            && lost.completed == 0
            && running == 0;
        if !lost.pending.is_empty() {
            tracing::warn!(worker = id, pid, %status, %reason, running, queued = lost.pending.len() - running, "worker lost");
        }
        for mut pending in lost.pending.into_values() {
            let Some(reply) = pending.reply.take() else {
                continue;
            };
            // A death is said by its status alone; why the pool ended it, or how it broke the
            // protocol, is said after it.
            let what = match ended {
                Ended::Died(_) => format!("worker {pid} {status}"),
                Ended::Killed(_) | Ended::BrokeProtocol(_) => {
                    format!("worker {pid} {status} ({reason})")
                }
            };
            // A run not seen to start goes to another worker, unless this one may have started
            // it unseen: it is never run twice.
            if !pending.started && !matches!(ended, Ended::BrokeProtocol(_)) && !unread {
                let explained = running > 0 || matches!(ended, Ended::Killed(_));
                let _ = reply.send(Reply::NotStarted { explained });
                continue;
            }
            let crashes = match ended {
                Ended::Died(_) => self.crash_log().crashed(&pending.request_id),
                // The pool ended it, or it is broken: its runs did not crash it.
                Ended::Killed(_) | Ended::BrokeProtocol(_) => 0,
            };
            let error = if crashes >= self.config.poison_after {
                #[cfg(feature = "metrics")]
                recorded(|| metrics::counter!("process_tasks_poisoned_total").increment(1));
                self.crash_log().forget(&pending.request_id);
                let times = match crashes {
                    1 => String::new(),
                    n => format!(" {n} times in a row"),
                };
                TaskError::poison(format!(
                    "the task is poison: its worker died{times} running it, the last time: {what}"
                ))
            } else {
                TaskError::worker_lost(what)
            };
            let _ = reply.send(Reply::Done(Err(error)));
        }
        idle.then_some(status)
    }

    /// Starts reading the answers of worker `id` in `slot` on the runtime the pool was started on
    /// (falling back to the supervisor's when that one is gone, or when bytes are already
    /// buffered).
    pub(super) fn read_on_callers_runtime(
        self: &Arc<Self>,
        slot: usize,
        id: u64,
        mut output: BufReader<pipe::Receiver>,
    ) -> tokio::task::JoinHandle<Ended> {
        let shared = Arc::clone(self);
        if self.readers_gone.load(Ordering::SeqCst) || !output.buffer().is_empty() {
            return self
                .runtime
                .spawn(async move { shared.read_answers(slot, id, &mut output).await });
        }
        let fd = match output.into_inner().into_nonblocking_fd() {
            Ok(fd) => fd,
            Err(e) => {
                let ended =
                    Ended::Killed(format!("its output could not be moved to a reader ({e})"));
                return self.runtime.spawn(async move { ended });
            }
        };
        self.readers.spawn(async move {
            // Registered with this runtime's reactor, so its readiness wakes a thread here.
            match pipe::Receiver::from_owned_fd(fd) {
                Ok(pipe) => {
                    shared
                        .read_answers(slot, id, &mut BufReader::new(pipe))
                        .await
                }
                Err(e) => Ended::Killed(format!("its output could not be watched ({e})")),
            }
        })
    }

    /// Delivers the answers of worker `worker_id` in `slot` until it closes its output or breaks the
    /// protocol, or the slot no longer holds it; returns why it stopped.
    ///
    /// A reader may still be running after its worker's supervision ended (an abort takes effect
    /// at its next await), and by then the slot may hold the replacement, which can hold the same
    /// run numbers (a run not started is handed on under its number): the worker's id, not the
    /// slot, says whose runs a frame answers.
    pub(super) async fn read_answers(
        self: &Arc<Self>,
        slot: usize,
        worker_id: u64,
        output: &mut BufReader<impl AsyncRead + Unpin>,
    ) -> Ended {
        loop {
            let message = match read_frame(output, self.config.max_frame).await {
                Ok(Some(message)) => message,
                Ok(None) => return Ended::Died("it closed its output".into()),
                Err(e) if e.is_protocol_error() => return Ended::BrokeProtocol(e.to_string()),
                Err(e) => return Ended::Died(e.to_string()),
            };
            let mut state = self.lock();
            let Some(worker) = state.slots[slot].as_mut().filter(|w| w.id == worker_id) else {
                return Ended::Killed("its slot was closed".into());
            };
            let (id, outcome) = match message {
                FromWorker::Done { id, outcome } => (id, outcome),
                FromWorker::Started { id } => {
                    let Some(pending) = worker.pending.get_mut(&id) else {
                        return Ended::BrokeProtocol(format!(
                            "it started run {id}, which it was not given"
                        ));
                    };
                    let newly = !std::mem::replace(&mut pending.started, true);
                    if newly && pending.reply.is_some() {
                        pending.timer = self.time_out_later(worker.id, id);
                    }
                    continue;
                }
                FromWorker::Event { id, event } => {
                    // An event of a run answered already (a node that kept its sink) is
                    // dropped: run ids are never reused, so it can belong to no other.
                    let events = worker.pending.get(&id).and_then(|p| p.events.clone());
                    drop(state);
                    // Outside the pool's lock; this task reads the run's frames in order, so the
                    // event is handed on before the run's answer.
                    if let Some(events) = events {
                        events.send(event);
                    }
                    continue;
                }
                FromWorker::Hello { .. } => {
                    return Ended::BrokeProtocol("it announced itself twice".into());
                }
            };
            let Some(mut pending) = worker.pending.remove(&id) else {
                return Ended::BrokeProtocol(format!(
                    "it answered run {id}, which it was not given"
                ));
            };
            worker.completed += 1;
            // A worker that held all it may takes another run now: a dispatch may wait for one.
            let room_again = worker.pending.len() + 1 == self.config.per_worker_held;
            if worker.draining
                && worker.pending.is_empty()
                && let Some(input) = worker.input.take()
            {
                // Recycled: close its input; it exits once idle and the slot gets a new worker.
                input.close();
            }
            drop(state);
            if room_again {
                self.ready.notify_waiters();
            }
            if let Some(reply) = pending.reply.take() {
                let _ = reply.send(Reply::Done(outcome));
            }
        }
    }
}

/// Counts on the application's metrics recorder: a panic in it is logged, and never unwinds into
/// the supervisor.
#[cfg(feature = "metrics")]
fn recorded(count: impl FnOnce()) {
    if let Some(reason) = task_core::catch_panic(count) {
        tracing::error!(%reason, "the metrics recorder panicked");
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use task_core::{NodeRegistry, RequestId};

    use super::*;
    use crate::process::shared::{Config, Pending};
    use crate::process::wire::{DEFAULT_MAX_FRAME, encode_frame};

    fn pool_of_one_slot() -> Shared {
        let config = Config {
            program: PathBuf::from("unused"),
            args: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            per_worker: 1,
            per_worker_held: 1,
            worker_threads: 1,
            task_timeout: None,
            cancel_grace: Duration::from_secs(1),
            poison_after: 2,
            recycle_after: None,
            handshake_timeout: Duration::from_secs(1),
        };
        let runtime = tokio::runtime::Handle::current();
        let (stop, _) = oneshot::channel();
        let runtimes = [runtime.clone(), runtime];
        Shared::new(config, &NodeRegistry::new(), 1, 1, runtimes, stop)
    }

    /// Worker `id`'s slot, holding `pending`.
    fn slot(id: u64, pending: HashMap<u64, Pending>) -> Slot {
        Slot {
            id,
            pid: 0,
            input: None,
            kill: None,
            pending,
            given: 0,
            completed: 0,
            draining: false,
        }
    }

    /// A worker's reader still running once its slot holds the replacement, which was handed the
    /// same run number (the run had not started as far as the pool knew): the old worker's
    /// answer is not the new one's.
    #[tokio::test]
    async fn a_reader_never_answers_runs_of_the_worker_that_replaced_its_own() {
        let shared = Arc::new(pool_of_one_slot());
        let (reply, mut answer) = oneshot::channel();
        let pending = Pending {
            reply: Some(reply),
            started: false,
            request_id: RequestId::from("r"),
            timer: None,
            events: None,
            kept: None,
        };
        shared.lock().slots[0] = Some(Slot {
            given: 1,
            ..slot(2, HashMap::from([(5, pending)]))
        });
        let done = FromWorker::Done {
            id: 5,
            outcome: Ok(vec![1]),
        };
        let frame = encode_frame(&done, DEFAULT_MAX_FRAME).expect("a small frame");
        // Worker 1's reader, reading an answer its worker wrote before it ended.
        let ended = shared
            .read_answers(0, 1, &mut BufReader::new(&frame[..]))
            .await;
        assert!(matches!(ended, Ended::Killed(_)), "{}", ended.reason());
        assert!(
            answer.try_recv().is_err(),
            "the replacement's run stays unanswered"
        );
        let state = shared.lock();
        let slot = state.slots[0].as_ref().expect("the replacement");
        assert!(slot.pending.contains_key(&5) && slot.completed == 0);
    }

    /// A run cancelled in its worker starts the cancel grace's timer; the worker's answer stops
    /// it. Left to sleep out the grace, each would hold the pool: cancellations within a long
    /// grace would pile them up.
    #[tokio::test]
    async fn a_cancelled_run_answered_leaves_no_timer_behind() {
        let shared = Arc::new(pool_of_one_slot());
        shared.lock().slots[0] = Some(slot(1, HashMap::new()));
        for run in 0..100 {
            let pending = Pending {
                reply: None,
                started: true,
                request_id: RequestId::from("r"),
                timer: None,
                events: None,
                kept: None,
            };
            shared.with_worker(1, |worker| worker.pending.insert(run, pending));
            // Its caller stops waiting (half of them as their task timeout passes too, which
            // starts a second timer), and the worker answers the cancellation at once.
            shared.abandon(1, run, None);
            if run % 2 == 0 {
                shared.kill_later(1, run);
            }
            shared.with_worker(1, |worker| worker.pending.remove(&run));
        }
        // An aborted timer lets go of the pool once the runtime runs it (well within the grace
        // of 1 s, which a timer left running sleeps out).
        for _ in 0..1000 {
            if Arc::strong_count(&shared) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            Arc::strong_count(&shared),
            1,
            "every cancelled run was answered, yet timers hold the pool"
        );
    }
}
