//! The submitting side's background tasks: reading completions, watching the connection, and
//! failing what the server will not deliver.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures::StreamExt;
use task_core::TaskError;
use tokio_util::task::AbortOnDropHandle;

use crate::client::Inner;
use crate::config::{publish_stored, too_large};
use crate::wire::{Completion, Reply, decode};

/// Reads this side's completions from its durable consumer, acknowledging each once applied.
/// Pulling resumes by itself after a disconnect; when the consumer (or its stream) is gone, as
/// after a server whose store was wiped, both are made again.
pub(crate) async fn listen_completions(
    inner: std::sync::Weak<Inner>,
    mut consumer: jetstream::consumer::PullConsumer,
) {
    use jetstream::consumer::pull::MessagesErrorKind as Kind;
    let mut pause = Duration::from_millis(50);
    loop {
        match consumer.messages().await {
            Ok(mut messages) => {
                while let Some(message) = messages.next().await {
                    let Some(inner) = inner.upgrade() else { return };
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::debug!(error = %e, "reading completions");
                            // The consumer is gone (deleted, or lost with a wiped store): make
                            // it again. Other errors (no responders or missed heartbeats during
                            // an outage) pass: the pulls resume after reconnecting, and making
                            // the consumer again then, measured, left completions unread.
                            if matches!(e.kind(), Kind::ConsumerDeleted) {
                                break;
                            }
                            continue;
                        }
                    };
                    match decode::<Reply>(&message.payload) {
                        Ok(Reply::Done(done)) => inner.resolve(&done.run, done.outcome),
                        Ok(Reply::Event(event)) => inner.forward_event(&event.run, event.event),
                        // A worker of protocol 2 answers with a bare completion (a protocol
                        // error, as its version differs): still an answer, not a hang.
                        Err(e) => match decode::<Completion>(&message.payload) {
                            Ok(done) => inner.resolve(&done.run, done.outcome),
                            Err(_) => tracing::warn!(%e, "undecodable completion dropped"),
                        },
                    }
                    let _ = message.ack().await;
                    pause = Duration::from_millis(50);
                }
            }
            Err(e) => tracing::debug!(error = %e, "pulling completions"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if let Ok(again) = strong.completion_consumer().await {
            consumer = again;
        }
    }
}

/// Reads the completions workers hand this side directly, and confirms each (with its run id)
/// once applied: a worker stores in the completion stream what nobody confirms. Only a bare
/// completion comes here; a run whose node sent events has its completion stored after them, so
/// that it never overtakes them.
pub(crate) async fn listen_answers(
    inner: std::sync::Weak<Inner>,
    mut answers: async_nats::Subscriber,
) {
    while let Some(message) = answers.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Ok(Reply::Done(done)) = decode::<Reply>(&message.payload) else {
            // Unconfirmed: the worker stores it, and the completion stream's reader says why.
            continue;
        };
        inner.resolve(&done.run, done.outcome);
        if let Some(reply) = message.reply {
            let _ = inner.client.publish(reply, done.run.into()).await;
        }
    }
}

/// After an outage: a server killed outright may lose the last messages it had acknowledged (it
/// writes to disk a moment later), or its whole store; and a task stream made again (deleted by
/// an operator) has lost every task. Every run still waiting whose task is no longer in the
/// stream (a worker took it and its completion was lost, or the stream lost the task) is
/// published again, under a message id of its own, once the completions stored meanwhile have
/// had `after` to arrive. A run answered twice this way is answered once: the second completion
/// is dropped.
pub(crate) async fn reconcile(inner: std::sync::Weak<Inner>, after: Duration) {
    tokio::time::sleep(after).await;
    let Some(inner) = inner.upgrade() else { return };
    let Ok((stream, _)) = inner.current_stream().await else {
        return;
    };
    let waiting: Vec<(u64, String, bytes::Bytes)> = {
        let table = inner.table();
        table
            .pending
            .iter()
            .filter_map(|(run, waiting)| Some((waiting.seq?, run.clone(), waiting.task.clone())))
            .collect()
    };
    for (seq, run, task) in waiting {
        // Gone only when the server says so: an error of another kind (a server not ready yet
        // after its restart) is no sign that the task is gone, and publishing it again would
        // have it run twice. A message of another run at its place is a stream made again
        // since (which numbers its messages from 1 again).
        let gone = match stream.get_raw_message(seq).await {
            Err(e) => e.kind() == RawMessageErrorKind::NoMessageFound,
            Ok(message) => !message
                .headers
                .get("Nats-Msg-Id")
                .is_some_and(|id| is_copy_of(id.as_str(), &run)),
        };
        if !gone || !inner.table().pending.contains_key(&run) {
            continue;
        }
        tracing::debug!(
            run,
            seq,
            "the task is gone from the stream unanswered: publishing it again"
        );
        let (subject, id) = (inner.task_subject.clone(), format!("{run}.again-{seq}"));
        let headers = inner.task_headers(&id, &run);
        match publish_stored(&inner.js, subject, &headers, task).await {
            Ok(ack) => inner.track_or_withdraw(&run, ack.sequence).await,
            // Its longer message id took it past the limit: it can never be sent again.
            Err(e) if too_large(&e) => {
                let waiting = inner.table().remove(&run);
                if let Some(waiting) = waiting {
                    let error =
                        format!("the task could not be sent again after a reconnection: {e}");
                    let _ = waiting.answer.send(Err(TaskError::encoding(error)));
                }
            }
            // Tried again at the next reconnection.
            Err(_) => {}
        }
    }
}

/// Whether message id `id` is run `run`'s task: the run id, or that of a copy published again.
fn is_copy_of(id: &str, run: &str) -> bool {
    id.strip_prefix(run)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(".again-"))
}

/// How long after reconnecting the runs still waiting are checked against the stream.
pub(crate) const RECONCILE_AFTER: Duration = Duration::from_secs(1);

/// How many of the watch's ticks (250 ms) pass between two looks at the task stream while tasks
/// wait in it.
const STREAM_LOOK_TICKS: u64 = 4;

/// Fails what can no longer be answered: every waiting run once the server has been unreachable
/// for [`NatsBuilder::unreachable_after`], and a run whose task outlived the stream's `max_age`.
/// Has the task stream made again, and the tasks it lost published again, when it is gone.
pub(crate) async fn watch(inner: std::sync::Weak<Inner>) {
    let mut since: Option<Instant> = None;
    // Connections made so far: a reconnection between two looks shows here, however quick.
    let mut connects = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // The look at the task stream under way, if any (stopped with this watch).
    let mut looking: Option<AbortOnDropHandle<()>> = None;
    let mut ticks = 0_u64;
    loop {
        tick.tick().await;
        ticks += 1;
        let Some(inner) = inner.upgrade() else { return };
        let connected = inner.client.connection_state() == async_nats::connection::State::Connected;
        #[cfg(feature = "metrics")]
        crate::recorded(|| {
            metrics::gauge!("nats_connected").set(if connected { 1.0 } else { 0.0 })
        });
        let made = inner.client.statistics().connects.load(Ordering::Relaxed);
        let reconnected = connects.is_some_and(|before| made > before);
        if connected {
            connects = Some(made);
        }
        if connected && (since.is_some() || reconnected) {
            #[cfg(feature = "metrics")]
            crate::recorded(|| metrics::counter!("nats_reconnects_total").increment(1));
            // Back after an outage: the server may have lost what it took just before it went,
            // and the pull of the advisories' reader made before it.
            inner.reconnected.notify_one();
            tokio::spawn(reconcile(Arc::downgrade(&inner), RECONCILE_AFTER));
        }
        // While tasks wait in the stream, a look at it every `STREAM_LOOK`: one deleted (or made
        // again by another side) lost them, and no worker will ever answer them.
        if connected
            && ticks.is_multiple_of(STREAM_LOOK_TICKS)
            && looking.as_ref().is_none_or(|look| look.is_finished())
            && !inner.table().by_seq.is_empty()
        {
            let inner = Arc::clone(&inner);
            looking = Some(AbortOnDropHandle::new(tokio::spawn(async move {
                if let Err(e) = inner.refresh_stream().await {
                    tracing::debug!(error = %e, "looking at the task stream");
                }
            })));
        }
        since = if connected {
            None
        } else {
            since.or(Some(Instant::now()))
        };
        if let Some(since) = since
            && since.elapsed() >= inner.unreachable_after
        {
            let after = inner.unreachable_after;
            drop(inner.fail_waiting(
                |_| true,
                |_| {
                    TaskError::strategy(format!(
                        "the NATS server has been unreachable for {after:?}: the task's outcome \
                         cannot be learnt (it may still run)"
                    ))
                },
            ));
        }
        let max_age = inner.stream().max_age;
        if max_age.is_zero() {
            // JetStream's "no limit".
            continue;
        }
        drop(inner.fail_waiting(
            |waiting| waiting.published.elapsed() >= max_age,
            |_| {
                TaskError::timed_out(format!(
                    "the task expired: no worker finished it within the stream's max_age of \
                     {max_age:?}"
                ))
            },
        ));
    }
}
