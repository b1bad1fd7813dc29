//! The wire protocol between a [`ProcessExecutionStrategy`](super::ProcessExecutionStrategy)
//! and its workers: length-prefixed frames over two pipes of their own.
//!
//! A frame is a 4-byte little-endian length followed by that many bytes of a postcard-encoded
//! message. The worker speaks first with [`FromWorker::Hello`] (protocol version, registered node
//! names, process id); then the parent sends [`ToWorker::Run`] for each task. The worker queues
//! what it cannot start yet, says [`FromWorker::Started`] as it starts each run (before anything
//! of the node runs, the decoding of its payload included), forwards the events its node
//! broadcasts as [`FromWorker::Event`], and answers each with [`FromWorker::Done`], in any order
//! between runs. [`ToWorker::Cancel`] asks it to drop a run, queued or
//! running; the run is answered either way. Frames larger than the configured maximum are refused
//! before their body is read.
//!
//! The frames travel on two pipes of their own, never on the worker's stdin or stdout: the
//! parent names their descriptors in the worker's environment ([`worker_pipes`](super::worker_pipes)).
//!
//! Public so that it can be fuzzed and so that workers can be written in other ways; most users
//! never touch it.

use serde::{Deserialize, Serialize};
use task_core::TaskError;

/// The protocol version both sides must announce.
pub const PROTOCOL_VERSION: u32 = 4;

/// The default largest frame, in bytes (16 MiB).
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// Bytes in a frame's length prefix.
pub const HEADER_LEN: usize = 4;

/// A message from the parent to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Run the node registered as `name`, encoded in `payload`, and answer with `id`.
    Run {
        /// The parent's id for this run; the answer must carry it.
        id: u64,
        /// The node's registered name.
        name: String,
        /// The encoded node.
        payload: Vec<u8>,
        /// Say [`FromWorker::Started`] when the run starts. The parent leaves it out only when it
        /// takes the run as started on arrival (it knows the worker has a free place and nothing
        /// queued); a worker that queues such a run anyway says `Started` when it starts it.
        /// Always the frame's last byte, so one encoded frame serves whichever worker takes it.
        announce: bool,
    },
    /// Drop run `id`: a queued run never starts, a running one is stopped where it next waits.
    /// Either way it is answered (as cancelled, unless it finished first).
    Cancel {
        /// The run's id.
        id: u64,
    },
}

/// A message from a worker to the parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The first message a worker sends.
    Hello {
        /// The worker's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The node names the worker's registry holds.
        names: Vec<String>,
        /// The worker's process id.
        pid: u32,
    },
    /// The answer to [`ToWorker::Run`] with the same `id`: the encoded output, or the error.
    Done {
        /// The id of the run being answered.
        id: u64,
        /// The encoded output, or why there is none.
        outcome: Result<Vec<u8>, TaskError>,
    },
    /// Run `id` is starting: from here on, a crash of the worker is this run's (and the other
    /// runs started and not answered). A run the worker was given and never said this of did
    /// not start, and goes to another worker if this one dies.
    Started {
        /// The id of the run starting.
        id: u64,
    },
    /// Run `id`'s node [broadcast](task_core::context::broadcast) `event`. A run's events come
    /// in the order sent, before its [`FromWorker::Done`].
    Event {
        /// The id of the run whose node sent it.
        id: u64,
        /// The event.
        event: String,
    },
}

/// Why bytes could not be read as a frame or a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversize {
        /// The announced length.
        len: usize,
        /// The maximum accepted.
        max: usize,
    },
    /// The frame's body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl From<FrameError> for TaskError {
    fn from(e: FrameError) -> Self {
        TaskError::protocol(e.to_string())
    }
}

/// The largest handshake either side accepts, whatever the pool's largest frame: the worker's
/// [`FromWorker::Hello`] names every node it registered, which a small frame limit is not about.
pub(crate) const MAX_HANDSHAKE: usize = 1 << 20;

/// Encodes `message` as one frame (length prefix included).
///
/// # Errors
///
/// [`FrameError::Oversize`] when the encoded message exceeds `max`; [`FrameError::Malformed`] when
/// it cannot be encoded.
pub fn encode_frame<T: Serialize>(message: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let malformed = |e: postcard::Error| FrameError::Malformed(e.to_string());
    // Sized first (a pass that only counts): the frame is allocated once at its final size
    // instead of growing byte by byte, and a message over `max` is refused before it is written.
    let len = postcard::experimental::serialized_size(message).map_err(malformed)?;
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::Oversize { len, max })?;
    let mut frame = vec![0; HEADER_LEN + len];
    frame[..HEADER_LEN].copy_from_slice(&prefix.to_le_bytes());
    postcard::to_slice(message, &mut frame[HEADER_LEN..]).map_err(malformed)?;
    Ok(frame)
}

/// Sets the [`ToWorker::Run::announce`] flag of an encoded run frame: its last byte, as postcard
/// encodes a `bool` (0 or 1) and the flag is the message's last field. Lets a frame be encoded
/// once and handed to whichever worker takes it.
pub(crate) fn set_announce(run_frame: &mut [u8], announce: bool) {
    if let Some(last) = run_frame.last_mut() {
        *last = u8::from(announce);
    }
}

/// Reads the body length from a frame header, refusing lengths above `max`.
///
/// # Errors
///
/// [`FrameError::Oversize`] when the announced length exceeds `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_le_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::Oversize { len, max });
    }
    Ok(len)
}

/// Decodes one message from a frame body.
///
/// # Errors
///
/// [`FrameError::Malformed`] when the body is not exactly one valid `T`.
pub fn decode_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes::<T>(body) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        ))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

/// Splits the first complete frame off `buf` and decodes it.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, and otherwise the message and
/// how many bytes of `buf` it used.
///
/// # Errors
///
/// As [`body_len`] and [`decode_body`].
pub fn decode_frame<T: for<'de> Deserialize<'de>>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = body_len(*header, max)?;
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let run = ToWorker::Run {
            id: 7,
            name: "double".into(),
            payload: vec![1, 2, 3],
            announce: true,
        };
        let frame = encode_frame(&run, DEFAULT_MAX_FRAME).unwrap();
        let (back, used) = decode_frame::<ToWorker>(&frame, DEFAULT_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!(back, run);
        assert_eq!(used, frame.len());
        // A partial frame is not an error, just not ready.
        assert!(
            decode_frame::<ToWorker>(&frame[..frame.len() - 1], DEFAULT_MAX_FRAME)
                .unwrap()
                .is_none()
        );
        assert!(
            decode_frame::<ToWorker>(&frame[..2], DEFAULT_MAX_FRAME)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn the_announce_flag_is_the_run_frames_last_byte() {
        for payload in [vec![], vec![7; 3], vec![1; 200], vec![9; 70_000]] {
            let run = |announce| ToWorker::Run {
                id: u64::MAX - 1,
                name: "double".into(),
                payload: payload.clone(),
                announce,
            };
            let mut patched = encode_frame(&run(true), DEFAULT_MAX_FRAME).unwrap();
            set_announce(&mut patched, false);
            assert_eq!(
                patched,
                encode_frame(&run(false), DEFAULT_MAX_FRAME).unwrap()
            );
        }
    }

    #[test]
    fn oversize_frames_are_refused_on_both_sides() {
        let run = ToWorker::Run {
            id: 1,
            name: "x".into(),
            payload: vec![0; 100],
            announce: true,
        };
        assert!(matches!(
            encode_frame(&run, 50),
            Err(FrameError::Oversize { max: 50, .. })
        ));
        let header = u32::MAX.to_le_bytes();
        assert!(matches!(
            body_len(header, DEFAULT_MAX_FRAME),
            Err(FrameError::Oversize { .. })
        ));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_malformed() {
        let mut frame = encode_frame(&ToWorker::Cancel { id: 1 }, 64).unwrap();
        frame[HEADER_LEN] = 0xff;
        assert!(matches!(
            decode_frame::<ToWorker>(&frame, 64),
            Err(FrameError::Malformed(_))
        ));
        let mut body = postcard::to_allocvec(&ToWorker::Cancel { id: 1 }).unwrap();
        body.push(0);
        assert!(matches!(
            decode_body::<ToWorker>(&body),
            Err(FrameError::Malformed(_))
        ));
    }
}
