//! Feeds arbitrary bytes to the frame decoder in arbitrary chunks: it must never panic,
//! never reserve more than the limit, and every frame it yields must re-encode to the bytes
//! it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qnllm_protocol::{encode_frame, FrameDecoder, HEADER_BYTES};

const LIMIT: u32 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1);
    let mut decoder = FrameDecoder::new(LIMIT);
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.payload.len() <= LIMIT as usize);
                    if let Ok(message) = frame.message() {
                        // JSON bodies may be re-spelt (spacing, key order), so compare the
                        // canonical form: encode → decode → encode must be stable.
                        let (id, deadline) = (frame.header.request_id, frame.header.deadline);
                        let mut once = BytesMut::new();
                        encode_frame(&message, id, deadline, &mut once);
                        let again = FrameDecoder::new(u32::MAX).decode(&mut once.clone());
                        let again = again.expect("re-encoded frame decodes").expect("whole frame");
                        let mut twice = BytesMut::new();
                        let message = again.message().expect("re-encoded body decodes");
                        encode_frame(&message, id, deadline, &mut twice);
                        assert_eq!(once, twice);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
            assert!(buf.capacity() <= HEADER_BYTES + LIMIT as usize + stream.len() + 64);
        }
    }
});
