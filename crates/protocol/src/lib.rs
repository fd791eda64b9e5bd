//! The qnllm wire protocol: a fixed 24-byte header, a catalog of message kinds, and a
//! sans-IO codec that turns byte buffers into frames and frames into typed messages.
//!
//! Nothing here touches a socket or a clock: callers feed bytes in with
//! [`FrameDecoder::decode`] and take bytes out with [`encode_frame`]. The specification,
//! byte for byte, is `docs/protocol.md`; golden vectors live in `testdata/protocol/`.
//!
//! # Examples
//!
//! ```
//! use bytes::BytesMut;
//! use qnllm_protocol::{encode_frame, FrameDecoder, Message, Deadline};
//!
//! let mut wire = BytesMut::new();
//! let reason = Message::Reason(vec![0.5_f32; 4].into());
//! encode_frame(&reason, 7, Deadline::NONE, &mut wire);
//!
//! let mut decoder = FrameDecoder::default();
//! let frame = decoder.decode(&mut wire).unwrap().expect("a whole frame was written");
//! assert_eq!(frame.header.request_id, 7);
//! assert_eq!(frame.message().unwrap(), reason);
//! ```

mod body;
mod codec;
mod error;
mod header;
mod kind;
mod message;

pub use body::{
    Batch, BatchResult, CacheStats, Call, Coordinate, CoordinationResult, Encoding, EngineRole,
    EngineStatus, Event, Goodbye, Grace, Heartbeat, Hello, Learn, Learned, ModelInfo, Register,
    Registered, ResultBody, Subscribe, TeacherVote, Topic, Welcome, WireError, DIGEST_BYTES,
};
pub use codec::{
    encode_batch_frame, encode_frame, encode_frame_with_flags, encode_reason_frame, Frame,
    FrameDecoder,
};
pub use error::{ErrorCode, ProtocolError};
pub use header::{
    Deadline, Flags, Header, DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, MAGIC, PROTOCOL_VERSION,
};
pub use kind::{Direction, MessageKind};
pub use message::Message;
