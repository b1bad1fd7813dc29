//! Handing a run to a worker, timing it out, and cancelling it when its caller stops waiting.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use task_core::{Completion, ErasedTask, Outcome, RequestId, TaskError};
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::input::BATCH_WHEN_PENDING;
use super::shared::{Kept, Pending, Reply, Shared};
use super::wire;

/// How many workers a run is handed to in turn when each dies, with nothing running, before
/// starting it: a safeguard against workers that die on their own (a broken environment), which
/// would otherwise pass a task around forever. A death another run accounts for never counts.
pub(super) const MAX_HANDOVERS: u32 = 16;

/// A run handed to a worker.
pub(super) struct Dispatched {
    pub(super) answer: oneshot::Receiver<Reply>,
    pub(super) worker_id: u64,
    pub(super) run: u64,
}

/// Cancels a run in its worker when its caller stops waiting before the answer came.
pub(super) struct AbandonOnDrop<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) worker_id: u64,
    pub(super) run: u64,
    pub(super) armed: bool,
}

impl Drop for AbandonOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abandon(self.worker_id, self.run, None);
        }
    }
}

/// How a run's wait for its worker ended.
enum Waited {
    /// With the outcome to deliver.
    Answered(Outcome),
    /// The request was cancelled (or passed its deadline): it has its outcome already. `Some`
    /// with the run a worker holds, and the run's place in the pool.
    Cancelled(Option<(Dispatched, OwnedSemaphorePermit)>),
}

/// `future`'s output, or `None` once the request is cancelled (checked first, as every wake-up).
async fn unless_cancelled<T>(
    completion: &Completion,
    future: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = completion.cancelled() => None,
        value = future => Some(value),
    }
}

impl Shared {
    /// Runs `task` on a worker and delivers its outcome to `completion`. When the request is
    /// cancelled or passes its deadline, the run stops waiting at once (its caller has its
    /// answer); a run a worker holds is cancelled there, and keeps the completion and its place
    /// in the pool until the worker answers it or is gone ([`Kept`]), so that a limit counts the
    /// node until it has stopped. Dropped unfinished (its runtime shut down), the run's
    /// [`AbandonOnDrop`] has it cancelled in its worker.
    pub(super) async fn run(self: Arc<Self>, task: ErasedTask, completion: Completion) {
        let Some(admission) = self.tracker.admit() else {
            // The node goes before its completion.
            crate::drop_unstarted(task);
            return completion.complete(Err(TaskError::shutdown("process")));
        };
        // Dropped at an await or cancelled, the run is counted stopped.
        let unfinished = self.tracker.unfinished();
        let waited = self
            .run_in_worker(task, &completion)
            .await
            .unwrap_or_else(|error| Waited::Answered(Err(error)));
        // Counted out before its completion reports, goes or is kept (which may free a place
        // for another request, whose caller then reads current stats).
        match &waited {
            Waited::Answered(outcome) => {
                unfinished.ended();
                self.tracker.record(outcome);
            }
            Waited::Cancelled(_) => drop(unfinished),
        }
        drop(admission);
        match waited {
            Waited::Answered(outcome) => completion.complete(outcome),
            // Nothing of it runs: the completion goes now.
            Waited::Cancelled(None) => drop(completion),
            Waited::Cancelled(Some((dispatched, place))) => {
                let kept = Kept {
                    _completion: completion,
                    _place: place,
                };
                self.abandon(dispatched.worker_id, dispatched.run, Some(kept));
            }
        }
    }

    /// Hands `task` to a worker (waiting for a place and a worker) and waits for its answer,
    /// until the request is cancelled.
    async fn run_in_worker(
        self: &Arc<Self>,
        task: ErasedTask,
        completion: &Completion,
    ) -> Result<Waited, TaskError> {
        let (info, portable) = task.into_portable();
        let Some(portable) = portable else {
            return Err(TaskError::unsupported(format!(
                "node `{}` is not a PortableNode: the process mode runs only tasks made with Task::portable",
                info.name()
            )));
        };
        if !self.expected_names.iter().any(|n| n == portable.name()) {
            return Err(TaskError::not_registered(portable.name()));
        }
        let (payload, max) = (portable.payload()?, self.config.max_frame);
        if payload.len() > max {
            // Refused before it is copied into a frame: the frame would be larger still.
            return Err(wire::FrameError::Oversize {
                len: payload.len(),
                max,
            }
            .into());
        }
        let run = self.next_run.fetch_add(1, Ordering::Relaxed);
        let mut frame = wire::encode_frame(
            &wire::ToWorker::Run {
                id: run,
                name: portable.name().to_owned(),
                payload: payload.to_vec(),
                announce: true,
            },
            self.config.max_frame,
        )?;
        let places = Arc::clone(&self.places);
        let Some(place) = unless_cancelled(completion, places.acquire_owned()).await else {
            return Ok(Waited::Cancelled(None));
        };
        let place = place.map_err(|_| TaskError::shutdown("process"))?;
        let events = completion.events();
        let mut handed = 0;
        let bytes = loop {
            let dispatch = self.dispatch(info.request_id(), &mut frame, run, events.clone());
            let Some(dispatched) = unless_cancelled(completion, dispatch).await else {
                return Ok(Waited::Cancelled(None));
            };
            let mut dispatched = dispatched?;
            let mut abandon = AbandonOnDrop {
                shared: self,
                worker_id: dispatched.worker_id,
                run,
                armed: true,
            };
            let answer = unless_cancelled(completion, &mut dispatched.answer).await;
            abandon.armed = false;
            let Some(answer) = answer else {
                return Ok(Waited::Cancelled(Some((dispatched, place))));
            };
            match answer {
                Ok(Reply::Done(answer)) => break answer,
                Ok(Reply::NotStarted { explained: true }) => {}
                Ok(Reply::NotStarted { explained: false }) if handed < MAX_HANDOVERS => {
                    handed += 1;
                }
                Ok(Reply::NotStarted { explained: false }) => {
                    break Err(TaskError::worker_lost(format!(
                        "{MAX_HANDOVERS} workers died holding the task before starting it, \
                         with nothing running in them"
                    )));
                }
                Err(_) => {
                    break Err(TaskError::worker_lost("the worker ended without answering"));
                }
            }
        };
        if !bytes.as_ref().is_err_and(TaskError::is_worker_lost) {
            self.forget_crashes(info.request_id());
        }
        Ok(Waited::Answered(portable.decode_output(&bytes?)))
    }

    /// Hands a run to the least busy live worker that holds fewer runs than its places and its
    /// prefetch, waiting for one when none does: a worker never holds more than its share, even
    /// while another is down (the runs a dead worker held wait for its replacement rather than
    /// queue behind a busy survivor).
    pub(super) async fn dispatch(
        self: &Arc<Self>,
        request_id: &RequestId,
        frame: &mut [u8],
        run: u64,
        events: Option<task_core::context::Events>,
    ) -> Result<Dispatched, TaskError> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if state.shutting_down {
                    return Err(TaskError::shutdown("process"));
                }
                let chosen = state
                    .slots
                    .iter_mut()
                    .flatten()
                    .filter(|w| !w.draining && w.input.is_some())
                    .filter(|w| w.pending.len() < self.config.per_worker_held)
                    .min_by_key(|w| w.pending.len());
                if let Some(worker) = chosen {
                    // The lock keeps frames of concurrent dispatches whole and in order. A worker
                    // with little to do gets the frame at once, written from this thread
                    // straight into the pipe (no hop through the supervisor). One with a queue
                    // of runs gets it from the writing task on the supervisor's thread, with the
                    // other frames dispatched meanwhile, in one write: the worker has work until
                    // then, and a write per frame (and a wake of the worker per write) is what
                    // limits a full pipeline.
                    let now = worker.pending.len() < BATCH_WHEN_PENDING;
                    // A worker with a free place and nothing queued (every answer it gave is
                    // read) starts the run as it arrives: it is taken as started, and the worker
                    // need not say so (a round trip then costs one frame each way). Otherwise the
                    // worker says when it starts it.
                    let started = worker.pending.len() < self.config.per_worker;
                    wire::set_announce(frame, !started);
                    let sent = worker.input.as_ref().map(|input| input.send(frame, now));
                    if !matches!(sent, Some(Ok(()))) {
                        // The worker is dying (its end of the pipe closed): it takes nothing
                        // more, its supervision sees it end, and the run goes to another.
                        worker.input = None;
                        continue;
                    }
                    let (reply, answer) = oneshot::channel();
                    worker.pending.insert(
                        run,
                        Pending {
                            reply: Some(reply),
                            started,
                            request_id: request_id.clone(),
                            timer: if started {
                                self.time_out_later(worker.id, run)
                            } else {
                                None
                            },
                            events,
                            kept: None,
                        },
                    );
                    worker.given += 1;
                    if self.config.recycle_after.is_some_and(|k| worker.given >= k) {
                        worker.draining = true;
                    }
                    return Ok(Dispatched {
                        answer,
                        worker_id: worker.id,
                        run,
                    });
                }
                if let Some(error) = &state.last_spawn_error
                    && state.slots.iter().all(Option::is_none)
                {
                    return Err(TaskError::worker_lost(format!(
                        "no worker is running: {error}"
                    )));
                }
            }
            notified.await;
        }
    }

    /// Starts the task timeout of `run`, which just started, if the pool has one.
    pub(super) fn time_out_later(
        self: &Arc<Self>,
        worker_id: u64,
        run: u64,
    ) -> Option<tokio::task::AbortHandle> {
        let timeout = self.config.task_timeout?;
        let shared = Arc::clone(self);
        let timer = self.runtime.spawn(async move {
            tokio::time::sleep(timeout).await;
            shared.expire(worker_id, run);
        });
        Some(timer.abort_handle())
    }

    /// `run` passed the pool's task timeout: if it is still running, its caller is answered as
    /// timed out now, and it is cancelled in its worker.
    pub(super) fn expire(self: &Arc<Self>, worker_id: u64, run: u64) {
        let timeout = self.config.task_timeout.unwrap_or_default();
        let expired = self.with_worker(worker_id, |worker| {
            let Some(reply) = worker.pending.get_mut(&run).and_then(|p| p.reply.take()) else {
                // Answered in time, or already abandoned.
                return false;
            };
            let _ = reply.send(Reply::Done(Err(TaskError::timed_out(format!(
                "the task ran past its timeout of {timeout:?}"
            )))));
            worker.abandon(run, &mut None)
        });
        if expired == Some(true) {
            self.kill_later(worker_id, run);
        }
    }

    /// The caller stopped waiting for `run` (its request was cancelled or passed its deadline):
    /// it is cancelled in its worker, and `kept` stays with it until the worker answers or is
    /// gone (killed, at the latest, after the cancel grace).
    pub(super) fn abandon(self: &Arc<Self>, worker_id: u64, run: u64, mut kept: Option<Kept>) {
        // The entry stays until the worker answers, so a late answer is not a protocol breach.
        let pending = self.with_worker(worker_id, |worker| worker.abandon(run, &mut kept));
        // Answered already, or its worker is gone: nothing of it runs any more. Let go outside
        // the pool's lock.
        drop(kept);
        if pending == Some(true) {
            self.kill_later(worker_id, run);
        }
    }

    /// Kills the worker if the cancelled `run` is still running in it after the cancel grace
    /// (nothing else stops a node that never waits); the runs it had not started go to others.
    /// The timer is the run's: it stops when the worker answers the run or is gone.
    pub(super) fn kill_later(self: &Arc<Self>, worker_id: u64, run: u64) {
        let shared = Arc::clone(self);
        let grace = self.config.cancel_grace;
        let timer = self.runtime.spawn(async move {
            tokio::time::sleep(grace).await;
            shared.with_worker(worker_id, |worker| {
                if worker.pending.get(&run).is_some_and(|p| p.started) {
                    worker.request_kill(format!(
                        "run {run} was still running {grace:?} after it was cancelled"
                    ));
                }
            });
        });
        let mut timer = Some(timer.abort_handle());
        self.with_worker(worker_id, |worker| {
            if let Some(pending) = worker.pending.get_mut(&run)
                && let Some(replaced) = std::mem::replace(&mut pending.timer, timer.take())
            {
                // Abandoned twice (its task timeout and its caller at once): one timer is kept.
                replaced.abort();
            }
        });
        // Answered (or its worker gone) since it was abandoned: nothing left to kill.
        if let Some(timer) = timer {
            timer.abort();
        }
    }
}
