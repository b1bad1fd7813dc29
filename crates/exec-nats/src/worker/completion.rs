//! A run's completion: made, sized against what the completion stream and the server take, and
//! handed to its submitting side ([`confirm`](super::confirm)) or stored, before its task is
//! acknowledged.

use std::time::Duration;

use task_core::TaskError;

use super::Shared;
use crate::config::{largest_body, publish_stored, too_large};
use crate::wire::{Completion, Reply, TaskMessage, encode};

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
        // Stores are boxed: the usual way only for a run that sent events, and inline their
        // future would sit in every task's handling.
        match Box::pin(self.store(&task.reply, &task.run, bytes)).await {
            Ok(stored) => stored,
            // Refused for its size all the same (the stream's limit changed since).
            Err(refused) => {
                let error = TaskError::encoding(format!(
                    "the output's completion was refused as too large: {refused}"
                ));
                match done(Err(error)) {
                    Ok(bytes) => {
                        Box::pin(self.store(&task.reply, &task.run, bytes.into())).await == Ok(true)
                    }
                    Err(_) => false,
                }
            }
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
