//! The submitting side's shared state: the runs waiting for their completions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use task_core::{ErasedTask, Outcome, TaskError};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DeleteMessageErrorKind;

use crate::config::{NatsConfig, largest_body, publish_stored, too_large};
use crate::error::NatsError;
use crate::listen::reconcile;
use crate::wire::{ANSWER_HEADER, PROTOCOL_VERSION, REPLY_HEADER, RUN_HEADER, TaskMessage, encode};

/// The longest one try to hand a task to the stream takes (the JetStream context's default
/// acknowledgement timeout, and a margin).
pub(crate) const PUBLISH_TRY: Duration = Duration::from_secs(10);

/// A run waiting for its completion.
pub(crate) struct Waiting {
    pub(crate) answer: oneshot::Sender<Result<Vec<u8>, TaskError>>,
    /// When its task was handed to the stream (it expires from there `max_age` later).
    pub(crate) published: Instant,
    /// The task as published, to publish it again if the server lost it.
    pub(crate) task: bytes::Bytes,
    /// Where its node's events go: the request's sink.
    pub(crate) events: Option<task_core::context::Events>,
    /// Where the stream keeps its task, once the server acknowledged it.
    pub(crate) seq: Option<u64>,
}

#[derive(Default)]
pub(crate) struct Table {
    /// Runs waiting for their completion, by run id.
    pub(crate) pending: HashMap<String, Waiting>,
    /// Run id by stream sequence, to fail a run the server stopped delivering.
    pub(crate) by_seq: HashMap<u64, String>,
    /// The strategy was shut down (past its grace) or dropped: nothing could answer a run from
    /// now on, so none is taken.
    pub(crate) closed: bool,
}

impl Table {
    /// Takes run `run` out of the table, its place in the stream with it. Its `seq` is left
    /// `None` where the stream numbered another run's task the same since (a server killed
    /// outright may lose its last writes, and reuse their numbers): that task is not this run's.
    pub(crate) fn remove(&mut self, run: &str) -> Option<Waiting> {
        let mut waiting = self.pending.remove(run)?;
        if let Some(seq) = waiting.seq.take()
            && self.by_seq.get(&seq).is_some_and(|owner| owner == run)
        {
            self.by_seq.remove(&seq);
            waiting.seq = Some(seq);
        }
        Some(waiting)
    }

    /// Records that the stream keeps run `run`'s task at `seq` (in place of where it was);
    /// `false` when the run no longer waits.
    fn track(&mut self, run: &str, seq: u64) -> bool {
        let Some(waiting) = self.pending.get_mut(run) else {
            return false;
        };
        if let Some(old) = waiting.seq.replace(seq)
            && self.by_seq.get(&old).is_some_and(|owner| owner == run)
        {
            self.by_seq.remove(&old);
        }
        self.by_seq.insert(seq, run.to_owned());
        true
    }
}

pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) config: NatsConfig,
    pub(crate) client_id: String,
    pub(crate) task_subject: String,
    pub(crate) cancel_subject: String,
    /// Where the workers publish this side's completions.
    pub(crate) completion_subject: String,
    /// Where the workers hand this side's completions directly ([`ANSWER_HEADER`]).
    pub(crate) answer_subject: String,
    pub(crate) unreachable_after: Duration,
    pub(crate) max_message_size: usize,
    pub(crate) table: Mutex<Table>,
    pub(crate) next_run: AtomicU64,
    /// The runs in flight, and the hand-overs and withdrawals they left going; closed by
    /// shutdown, which then waits for them.
    pub(crate) tasks: TaskTracker,
    /// The runs in flight alone, as the stats count them.
    pub(crate) running: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Runs let go of unfinished (their request was cancelled or timed out).
    pub(crate) stopped: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    /// Told when the connection is back after an outage.
    pub(crate) reconnected: Arc<tokio::sync::Notify>,
    /// The task stream as this side last found it.
    pub(crate) stream: Mutex<StreamSeen>,
    /// The runtime `start` ran on ([`Inner::runtime`]).
    pub(crate) runtime: tokio::runtime::Handle,
}

/// The task stream as the submitting side last found it.
pub(crate) struct StreamSeen {
    /// When it was made (nanoseconds since the epoch): a stream made since is another, which
    /// lost the tasks of the old.
    pub(crate) created: i128,
    /// How long a task's hand-over may go on trying ([`retry_period`]).
    pub(crate) retry_for: Duration,
    /// How long the stream keeps an unworked task (0: no limit); a run waiting longer fails as
    /// expired.
    pub(crate) max_age: Duration,
}

impl StreamSeen {
    /// The stream as the server describes it; an error when its limits leave a publish no time
    /// to be tried again.
    pub(crate) fn new(info: &jetstream::stream::Info) -> Result<Self, NatsError> {
        let retry_for = retry_period(info.config.duplicate_window, info.config.max_age)?;
        let created = info.created.unix_timestamp_nanos();
        let max_age = info.config.max_age;
        Ok(Self {
            created,
            retry_for,
            max_age,
        })
    }
}

/// How long the hand-over of a task may go on trying, on a stream that drops a message whose id
/// it saw within `window`, and drops a message `max_age` after storing it (0: never).
///
/// A try the server stored but whose acknowledgement was lost must not be stored twice: every
/// try lands within the window of the first, so trying goes on for the window less the longest
/// try. Where the window is `max_age` (the server allows no longer), a try landing past it finds
/// its run ended already (expired, `max_age` after it was first handed over), so trying goes on
/// for the whole `max_age`, and a copy stored that late is taken out again. A window no longer
/// than one try leaves no time for a second: refused, saying why.
pub(crate) fn retry_period(window: Duration, max_age: Duration) -> Result<Duration, NatsError> {
    if !max_age.is_zero() && window >= max_age {
        return Ok(max_age);
    }
    if window > PUBLISH_TRY {
        return Ok(window - PUBLISH_TRY);
    }
    Err(NatsError::config(
        "checking the task stream's limits",
        format!(
            "its duplicate_window of {window:?} (shorter than its max_age of {max_age:?}) leaves \
             no time to try a publish again: a try takes up to {PUBLISH_TRY:?}, and one landing \
             past the window of the first could store the task twice. Give the stream a \
             duplicate_window longer than {PUBLISH_TRY:?}, or one at least its max_age \
             (NatsConfig::duplicate_window)"
        ),
    ))
}

impl Inner {
    pub(crate) fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stream(&self) -> MutexGuard<'_, StreamSeen> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands an event of run `run`'s node to its request; dropped when the run is answered
    /// already (or not this side's).
    pub(crate) fn forward_event(&self, run: &str, event: String) {
        let events = self
            .table()
            .pending
            .get(run)
            .and_then(|waiting| waiting.events.clone());
        // Outside the table's lock; completions are read in order, so before the run's answer.
        if let Some(events) = events {
            events.send(event);
        }
    }

    /// The headers of run `run`'s task message published under message id `id`: the stream's
    /// de-duplication id; the run and its reply subject, for a worker that cannot decode the
    /// body; and where its completion may be handed directly.
    pub(crate) fn task_headers<'a>(
        &'a self,
        id: &'a str,
        run: &'a str,
    ) -> [(&'static str, &'a str); 4] {
        [
            ("Nats-Msg-Id", id),
            (RUN_HEADER, run),
            (REPLY_HEADER, &self.completion_subject),
            (ANSWER_HEADER, &self.answer_subject),
        ]
    }

    pub(crate) fn resolve(&self, run: &str, outcome: Result<Vec<u8>, TaskError>) {
        let waiter = self.table().remove(run);
        match waiter {
            Some(waiter) => {
                let _ = waiter.answer.send(outcome);
            }
            None => {
                // A redelivered task answered twice, or an answer after the caller gave up.
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                #[cfg(feature = "metrics")]
                crate::recorded(|| {
                    metrics::counter!("nats_duplicate_completions_total").increment(1)
                });
                tracing::debug!(run, "completion for no waiting run dropped");
            }
        }
    }

    /// This side's completion consumer, made (with its stream) if missing.
    pub(crate) async fn completion_consumer(
        &self,
    ) -> Result<jetstream::consumer::PullConsumer, NatsError> {
        completion_consumer(&self.js, &self.config, &self.client_id).await
    }

    /// Records where the stream keeps run `run`'s task. A run that no longer waits (withdrawn, or
    /// answered, while its task was handed over) has its task taken out of the stream instead, so
    /// that no worker runs it later.
    pub(crate) async fn track_or_withdraw(&self, run: &str, seq: u64) {
        let tracked = self.table().track(run, seq);
        if !tracked {
            // Boxed: taken only by a run that ended before its task was stored; inline, its
            // future would sit in every run's hand-over.
            let _ = Box::pin(self.delete(seq)).await;
        }
    }

    /// Takes the task at `seq` out of the stream; whether it is out: taken out now, or gone
    /// already (a worker took it, or it was deleted before), as the server says.
    pub(crate) async fn delete(&self, seq: u64) -> bool {
        let Ok(stream) = self.js.get_stream_no_info(&self.config.stream).await else {
            return false;
        };
        let Err(e) = stream.delete_message(seq).await else {
            return true;
        };
        let DeleteMessageErrorKind::JetStream(error) = e.kind() else {
            return false;
        };
        match error.error_code() {
            // The answer for a message deleted or acknowledged already.
            ErrorCode::SEQUENCE_NOT_FOUND => true,
            // The store's own error, passed on: out only where it says there is no such message.
            ErrorCode::STREAM_MESSAGE_DELETE_FAILED => {
                let text = error.to_string();
                text.contains("no message found") || text.contains("store EOF")
            }
            _ => false,
        }
    }

    /// The task stream, made again if it is gone (deleted, or lost with the server's store);
    /// whether it is another than the one this side found last (made again, by this side or
    /// another).
    pub(crate) async fn current_stream(
        &self,
    ) -> Result<(jetstream::stream::Stream, bool), NatsError> {
        let stream = self.config.ensure_stream(&self.js).await?;
        let info = stream.cached_info();
        let seen = StreamSeen::new(info).unwrap_or_else(|e| {
            // Made again by another side with such limits: tasks are still handed over, once.
            tracing::warn!(error = %e, "a task's hand-over is tried once");
            StreamSeen {
                created: info.created.unix_timestamp_nanos(),
                retry_for: Duration::ZERO,
                max_age: info.config.max_age,
            }
        });
        let other = std::mem::replace(&mut *self.stream(), seen).created
            != info.created.unix_timestamp_nanos();
        Ok((stream, other))
    }

    /// Makes the task stream again if it is gone. When it is another than the one this side
    /// found last, the tasks of the runs waiting were lost with the old one: they are published
    /// again at once ([`reconcile`]), so that no run waits for a task nobody will see.
    pub(crate) async fn refresh_stream(self: &Arc<Self>) -> Result<(), NatsError> {
        let (_, other) = self.current_stream().await?;
        if other {
            tracing::warn!(
                stream = self.config.stream,
                "the task stream was made again: the tasks it lost are published again"
            );
            tokio::spawn(reconcile(Arc::downgrade(self), Duration::ZERO));
        }
        Ok(())
    }

    /// Hands a task to the stream, trying again while the server is unreachable, for at most
    /// [`NatsBuilder::unreachable_after`]. Every try carries the run id as its message id, so the
    /// stream keeps one copy however many tries reached it. A stream found gone is made again.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        run: &str,
        bytes: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, TaskError> {
        let started = Instant::now();
        let retry_for = self.unreachable_after.min(self.stream().retry_for);
        let mut pause = Duration::from_millis(50);
        loop {
            let subject = self.task_subject.clone();
            let headers = self.task_headers(run, run);
            match publish_stored(&self.js, subject, &headers, bytes.clone()).await {
                Ok(ack) => return Ok(ack),
                // Refused whatever the tries (the server's or the stream's limit lower than the
                // one checked before sending).
                Err(e) if too_large(&e) => {
                    return Err(TaskError::encoding(format!(
                        "the server refused the task: {e}"
                    )));
                }
                // No stream holds the subject (deleted, or lost with the server's store).
                Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                    // Boxed: only when the stream is gone; inline, its 6 KB future would sit in
                    // every run's hand-over.
                    let remade = Box::pin(self.refresh_stream()).await;
                    if started.elapsed() >= retry_for {
                        let why = remade.err().map(|e| format!(" ({e})")).unwrap_or_default();
                        return Err(TaskError::strategy(format!(
                            "no stream took the task within {retry_for:?}: {e}{why}"
                        )));
                    }
                    if let Err(refused) = remade {
                        tracing::debug!(run, error = %refused, "making the task stream again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
                Err(e) if started.elapsed() >= retry_for => {
                    return Err(TaskError::strategy(format!(
                        "the NATS server was unreachable and did not take the task within \
                         {retry_for:?}: {e}"
                    )));
                }
                Err(e) => {
                    tracing::debug!(run, error = %e, "the stream did not take the task yet");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Fails every waiting run with `error(waited)`, or only those `expired` says; gives back
    /// each failed run with where the stream keeps its task, if it is known.
    pub(crate) fn fail_waiting(
        &self,
        mut expired: impl FnMut(&Waiting) -> bool,
        error: impl Fn(&Waiting) -> TaskError,
    ) -> Vec<(String, Option<u64>)> {
        let failed: Vec<(Waiting, String)> = {
            let mut table = self.table();
            let runs: Vec<String> = table
                .pending
                .iter()
                .filter(|(_, waiting)| expired(waiting))
                .map(|(run, _)| run.clone())
                .collect();
            let failed = runs
                .into_iter()
                .filter_map(|run| Some((table.remove(&run)?, run)));
            failed.collect()
        };
        let mut runs = Vec::with_capacity(failed.len());
        for (waiting, run) in failed {
            let error = error(&waiting);
            runs.push((run, waiting.seq));
            let _ = waiting.answer.send(Err(error));
        }
        runs
    }

    /// Withdraws run `run`: tells the workers (one that has it skips it, one running it drops
    /// it), then takes its task, stored at `seq`, out of the stream, so that no worker that
    /// comes later runs it.
    pub(crate) async fn withdraw(&self, run: String, seq: Option<u64>) {
        self.announce_withdrawal(run).await;
        if let Some(seq) = seq {
            let _ = self.delete(seq).await;
        }
    }

    /// Tells the workers that run `run` is withdrawn: one that has it skips it, one running it
    /// drops it.
    pub(crate) async fn announce_withdrawal(&self, run: String) {
        let _ = self
            .client
            .publish(self.cancel_subject.clone(), run.into())
            .await;
    }

    /// Publishes `task` and waits for its completion. Dropping the future unfinished withdraws
    /// the run (its [`RunGuard`]).
    pub(crate) async fn run(self: &Arc<Self>, task: ErasedTask) -> Outcome {
        let inner = self;
        let (info, portable) = task.into_portable();
        let Some(portable) = portable else {
            return Err(TaskError::unsupported(format!(
                "node `{}` is not a PortableNode: the NATS strategy runs only tasks made with Task::portable",
                info.name()
            )));
        };
        let run = format!(
            "{}.{}",
            inner.client_id,
            inner.next_run.fetch_add(1, Ordering::Relaxed)
        );
        let message = TaskMessage {
            version: PROTOCOL_VERSION,
            run: run.clone(),
            request_id: info.request_id().to_string(),
            name: portable.name().to_owned(),
            payload: portable.payload()?.to_vec(),
            reply: inner.completion_subject.clone(),
        };
        let bytes = bytes::Bytes::from(encode(&message)?);
        let headers = inner.task_headers(&run, &run);
        let largest = largest_body(&inner.client, inner.max_message_size, &headers);
        if bytes.len() > largest {
            return Err(TaskError::encoding(format!(
                "the task is {} bytes, more than the {largest} a task may have here (the stream's \
                 max_message_size and the server's max_payload, less its header)",
                bytes.len(),
            )));
        }
        let (sender, answer) = oneshot::channel();
        {
            let mut table = inner.table();
            // Accepted before the strategy was shut down or dropped, and first polled after.
            if table.closed {
                return Err(TaskError::shutdown("nats"));
            }
            table.pending.insert(
                run.clone(),
                Waiting {
                    answer: sender,
                    published: Instant::now(),
                    task: bytes.clone(),
                    // Run in the request's scope: its event sink is current.
                    events: task_core::context::current_events(),
                    seq: None,
                },
            );
        }
        // The hand-over is driven here while the run waits. When the run ends first (it is
        // withdrawn, or answered or failed before the server's acknowledgement came) it goes on
        // by itself until the server acknowledges the task: then the task is taken out again,
        // where a worker that comes later would otherwise find it. Shutdown waits for it, as for
        // the run.
        let handing: HandOver = Box::pin({
            let (inner, run, in_flight) = (Arc::clone(inner), run.clone(), inner.tasks.token());
            async move {
                let _in_flight = in_flight;
                let ack = inner.publish(&run, bytes).await?;
                inner.track_or_withdraw(&run, ack.sequence).await;
                Ok(())
            }
        });
        let mut guard = RunGuard {
            inner,
            run: Some(run.clone()),
            handing: Some(handing),
        };
        let mut answer = answer;
        let early = tokio::select! {
            handed = guard.handed() => {
                handed?;
                None
            }
            early = &mut answer => Some(early),
        };
        let answer = match early {
            Some(early) => early,
            None => answer.await,
        };
        guard.run = None;
        let bytes = answer.unwrap_or_else(|_| {
            Err(TaskError::strategy(
                "the strategy stopped before the task's outcome arrived",
            ))
        })?;
        portable.decode_output(&bytes)
    }
}

/// The durable consumer of one submitting side's completions (`done-{client}`), made with its
/// stream if missing. It outlives a disconnect and a server restart (the server keeps it on
/// disk), and the server deletes it an hour after its side stops pulling (it died without a
/// shutdown).
pub(crate) async fn completion_consumer(
    js: &jetstream::Context,
    config: &NatsConfig,
    client_id: &str,
) -> Result<jetstream::consumer::PullConsumer, NatsError> {
    let name = format!("done-{client_id}");
    config
        .ensure_completion_stream(js)
        .await?
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: config.completion_subject(client_id),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                inactive_threshold: COMPLETION_CONSUMER_IDLE,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| NatsError::new("creating the completion consumer", e))
}

/// How long a completion consumer nobody pulls from is kept by the server.
pub(crate) const COMPLETION_CONSUMER_IDLE: Duration = Duration::from_secs(3600);

/// A task's hand-over to the stream: published, then its place in the stream recorded (or the
/// task taken out again, when its run no longer waits).
type HandOver = std::pin::Pin<Box<dyn Future<Output = Result<(), TaskError>> + Send>>;

/// Withdraws a run if the caller stops waiting before its completion, and lets its hand-over
/// finish by itself if the run ends first.
pub(crate) struct RunGuard<'a> {
    pub(crate) inner: &'a Arc<Inner>,
    pub(crate) run: Option<String>,
    /// The hand-over, until it has ended.
    handing: Option<HandOver>,
}

impl RunGuard<'_> {
    /// Drives the hand-over to its end.
    async fn handed(&mut self) -> Result<(), TaskError> {
        let Some(handing) = self.handing.as_mut() else {
            return Ok(());
        };
        let handed = handing.await;
        self.handing = None;
        handed
    }
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        // Both on the runtime `start` ran on, wherever this is dropped (a coordinator ends what
        // it had open on a thread of its own).
        if let Some(handing) = self.handing.take() {
            drop(self.inner.runtime().spawn(handing));
        }
        let Some(run) = self.run.take() else { return };
        let seq = self
            .inner
            .table()
            .remove(&run)
            .and_then(|waiting| waiting.seq);
        // Where the server has not acknowledged the task yet, its hand-over takes it out once it
        // does. Shutdown waits for this, as for the run.
        let (inner, in_flight) = (Arc::clone(self.inner), self.inner.tasks.token());
        inner.runtime().spawn(async move {
            let _in_flight = in_flight;
            inner.withdraw(run, seq).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_max_age_leaves_publish_retries_and_a_short_window_is_refused() {
        let secs = Duration::from_secs;
        // The window is max_age: trying goes on for all of it, however short.
        assert_eq!(retry_period(secs(5), secs(5)).unwrap(), secs(5));
        assert_eq!(retry_period(secs(10), secs(10)).unwrap(), secs(10));
        // A window of its own: tries land within it.
        assert_eq!(retry_period(secs(120), secs(86_400)).unwrap(), secs(110));
        assert_eq!(retry_period(secs(120), Duration::ZERO).unwrap(), secs(110));
        let error = retry_period(secs(5), secs(86_400)).unwrap_err();
        assert!(error.is_config_error(), "{error}");
        assert!(error.to_string().contains("duplicate_window"), "{error}");
    }
}
