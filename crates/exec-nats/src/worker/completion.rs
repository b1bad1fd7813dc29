//! A run's completion: made, sized against what the completion stream and the server take, and
//! stored before its task is acknowledged.

use std::time::Duration;

use task_core::TaskError;

use super::Shared;
use crate::config::{largest_body, publish_stored, too_large};
use crate::wire::{Completion, Reply, TaskMessage, encode};

/// How long a completion handed directly waits for its submitting side's confirmation before
/// it is stored instead (a confirmation lost or late makes a duplicate, which that side drops).
const CONFIRMED_WITHIN: Duration = Duration::from_secs(2);

/// The message id of run `run`'s completion: the completion stream keeps one however many
/// stores reach it.
fn done_id(run: &str) -> String {
    format!("done.{run}")
}

impl Shared {
    /// Hands the completion of `task` with `outcome` to its submitting side at `direct`, or,
    /// unconfirmed there, stores it; whether either was done. An outcome too large to store, or
    /// one its encoding fails, is answered as the encoding error instead: its request fails at
    /// once, and the task is not run again until the server gives up on it.
    pub(super) async fn answer(
        &self,
        task: &TaskMessage,
        outcome: Result<Vec<u8>, TaskError>,
        direct: Option<&str>,
    ) -> bool {
        let done = |outcome| {
            let worker = self.id.clone();
            let run = task.run.clone();
            encode(&Reply::Done(Completion {
                run,
                outcome,
                worker,
            }))
        };
        let id = done_id(&task.run);
        let largest = largest_body(&self.client, self.max_message_size, &[("Nats-Msg-Id", &id)]);
        let sized = done(outcome).and_then(|bytes| {
            if bytes.len() <= largest {
                return Ok(bytes);
            }
            Err(TaskError::encoding(format!(
                "the output's completion is {} bytes, more than the {largest} a completion may \
                 have here (the completion stream's max_message_size and the server's \
                 max_payload, less its header)",
                bytes.len()
            )))
        });
        let Ok(bytes) = sized.or_else(|e| done(Err(e))) else {
            return false;
        };
        let bytes = bytes::Bytes::from(bytes);
        if let Some(direct) = direct
            && self.hand(direct, &task.run, bytes.clone()).await
        {
            return true;
        }
        match self.store(&task.reply, &task.run, bytes).await {
            Ok(stored) => stored,
            // Refused for its size all the same (the stream's limit changed since).
            Err(refused) => {
                let error = TaskError::encoding(format!(
                    "the output's completion was refused as too large: {refused}"
                ));
                match done(Err(error)) {
                    Ok(bytes) => self.store(&task.reply, &task.run, bytes.into()).await == Ok(true),
                    Err(_) => false,
                }
            }
        }
    }

    /// Whether `subject` is a submitting side's own subject for completions: `{prefix}.answer.`
    /// and one token. A task published by hand could name any other, an API's among them.
    pub(super) fn answers_there(&self, subject: &str) -> bool {
        subject
            .strip_prefix(&self.answers)
            .is_some_and(|client| super::answerable(client) && !client.contains(['.', '*', '>']))
    }

    /// Hands a completion to its submitting side by request; whether that side confirmed it with
    /// the run's id (a reply of anyone else, such as a stream's acknowledgement, is no
    /// confirmation).
    async fn hand(&self, subject: &str, run: &str, bytes: bytes::Bytes) -> bool {
        let request = async_nats::Request::new()
            .payload(bytes)
            .timeout(Some(CONFIRMED_WITHIN));
        match self.client.send_request(subject.to_owned(), request).await {
            Ok(reply) => reply.payload == run.as_bytes(),
            // Nobody there (the side is away, or speaks an older protocol), or no confirmation
            // in time: stored instead.
            Err(_) => false,
        }
    }

    /// Stores a completion in the completion stream, trying a few times over a server blip; the
    /// run id as message id keeps one copy however many tries reached it. Whether it was stored;
    /// an error when the server refused it for its size, which no try changes.
    async fn store(&self, subject: &str, run: &str, bytes: bytes::Bytes) -> Result<bool, String> {
        for pause in [
            Duration::from_millis(200),
            Duration::from_secs(1),
            Duration::ZERO,
        ] {
            let id = done_id(run);
            let headers = [("Nats-Msg-Id", id.as_str())];
            match publish_stored(&self.js, subject.to_owned(), &headers, bytes.clone()).await {
                Ok(_) => return Ok(true),
                Err(e) if too_large(&e) => return Err(e.to_string()),
                Err(_) => tokio::time::sleep(pause).await,
            }
        }
        Ok(false)
    }
}
