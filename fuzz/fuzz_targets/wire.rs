//! Any bytes a worker or a parent may send: the frame decoder and message decoding must answer
//! with a value or a `FrameError`, never panic, hang or allocate beyond the frame limit.

#![no_main]

use exec_strategies::process::wire::{self, FromWorker, ToWorker};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // A stream of frames, decoded as the reader does: frame after frame until one is incomplete
    // or bad.
    let mut rest = data;
    while let Ok(Some((message, used))) = wire::decode_frame::<FromWorker>(rest, MAX) {
        // Whatever decodes must encode back to a frame that decodes to the same message.
        let again = wire::encode_frame(&message, usize::MAX).expect("a decoded message encodes");
        let (round, _) = wire::decode_frame::<FromWorker>(&again, usize::MAX)
            .expect("re-encoded frame decodes")
            .expect("re-encoded frame is whole");
        assert_eq!(format!("{round:?}"), format!("{message:?}"));
        rest = &rest[used..];
    }
    let _ = wire::decode_frame::<ToWorker>(data, MAX);
    // Message bodies on their own, and the task payload codec.
    let _ = wire::decode_body::<ToWorker>(data);
    let _ = wire::decode_body::<FromWorker>(data);
    let _ = task_core::decode::<(u64, String, Vec<u8>)>(data);
    if let Some(header) = data.first_chunk::<{ wire::HEADER_LEN }>() {
        if let Ok(len) = wire::body_len(*header, MAX) {
            assert!(len <= MAX);
        }
    }
});
