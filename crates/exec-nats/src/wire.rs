//! What travels through NATS: a task going to a worker and its completion coming back, both
//! encoded with postcard (the format the process strategy uses, through `task-core`).

use serde::{Deserialize, Serialize};
use task_core::TaskError;

/// Version of the messages below; a worker answers a task of another version with a protocol
/// error instead of guessing.
pub const PROTOCOL_VERSION: u16 = 3;

/// The header of a task message naming its run ([`TaskMessage::run`]), so that a worker that
/// cannot decode the message can still answer it.
pub const RUN_HEADER: &str = "Exec-Run";

/// The header of a task message naming where its completion goes ([`TaskMessage::reply`]).
pub const REPLY_HEADER: &str = "Exec-Reply";

/// The header of a task message naming where a worker may hand the completion of a run whose
/// node sent no events: by request, to the submitting side itself, which confirms it with the
/// run id. A completion nobody confirms (the side is away, or an older one) goes to
/// [`TaskMessage::reply`], stored. Absent, every completion is stored.
pub const ANSWER_HEADER: &str = "Exec-Answer";

/// A task, as published to the work-queue stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// Unique per attempt: the correlation id of the completion, and the stream's
    /// de-duplication id.
    pub run: String,
    /// The coordinator's request id, for logs.
    pub request_id: String,
    /// The registered name of the node.
    pub name: String,
    /// The encoded node.
    pub payload: Vec<u8>,
    /// Where the completion goes (the submitting strategy's inbox).
    pub reply: String,
}

/// The outcome of one run, published to the task's `reply` subject.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Completion {
    /// The [`TaskMessage::run`] it answers.
    pub run: String,
    /// The encoded output, or why there is none.
    pub outcome: Result<Vec<u8>, TaskError>,
    /// Which worker ran it (for logs and tests).
    pub worker: String,
}

/// What a worker publishes to a task's `reply` subject: the events its node broadcasts, in the
/// order sent, then its completion.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Reply {
    /// An event the run's node [broadcast](task_core::context::broadcast).
    Event(RunEvent),
    /// The run's outcome.
    Done(Completion),
}

/// One event of a running node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// The [`TaskMessage::run`] whose node sent it.
    pub run: String,
    /// The event.
    pub event: String,
}

/// What a missed-events event says before its count.
const MISSED_PREFIX: &str = "exec-nats: ";

/// What it says after its count.
const MISSED_SUFFIX: &str = " events missed";

/// The event a worker sends in place of `count` events of a run that it could not send: its
/// node broadcast them faster than they could be published (a worker keeps a bounded number
/// waiting per run and drops the oldest), or their publish failed. It comes at their place, in
/// order: `exec-nats: 998975 events missed`. [`missed_count`] reads it back.
pub fn missed_event(count: u64) -> String {
    format!("{MISSED_PREFIX}{count}{MISSED_SUFFIX}")
}

/// How many events a [`missed_event`] says were missed; `None` for any other event.
pub fn missed_count(event: &str) -> Option<u64> {
    let count = event
        .strip_prefix(MISSED_PREFIX)?
        .strip_suffix(MISSED_SUFFIX)?;
    if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    count.parse().ok()
}

/// Encodes a message.
///
/// # Errors
///
/// [`TaskError::is_encoding_error`] when it cannot be encoded.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, TaskError> {
    task_core::encode(message)
}

/// Decodes a message.
///
/// # Errors
///
/// [`TaskError::is_encoding_error`] when the bytes are not a `T`.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, TaskError> {
    task_core::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_an_error() {
        let task = TaskMessage {
            version: PROTOCOL_VERSION,
            run: "c.1".into(),
            request_id: "r".into(),
            name: "echo".into(),
            payload: vec![1, 2, 3],
            reply: "_INBOX.x".into(),
        };
        assert_eq!(
            decode::<TaskMessage>(&encode(&task).unwrap()).unwrap(),
            task
        );
        let done = Completion {
            run: "c.1".into(),
            outcome: Err(TaskError::not_registered("echo")),
            worker: "w".into(),
        };
        let back: Completion = decode(&encode(&done).unwrap()).unwrap();
        assert!(back.outcome.unwrap_err().is_not_registered());
        let event = RunEvent {
            run: "c.1".into(),
            event: "50%".into(),
        };
        match decode::<Reply>(&encode(&Reply::Event(event.clone())).unwrap()).unwrap() {
            Reply::Event(back) => assert_eq!(back, event),
            Reply::Done(_) => panic!("an event decoded as a completion"),
        }
        assert_eq!(missed_count(&missed_event(7)), Some(7));
        for other in [
            "7",
            "exec-nats: +7 events missed",
            "exec-nats:  events missed",
            "50%",
        ] {
            assert_eq!(missed_count(other), None, "{other}");
        }
        assert!(
            decode::<TaskMessage>(&[0xff; 3])
                .unwrap_err()
                .is_encoding_error()
        );
    }
}
