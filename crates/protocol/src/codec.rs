//! Frames: encoding a message with its header, and the incremental decoder that cuts a
//! byte stream into frames without trusting a single length it reads.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::header::{
    Deadline, Flags, Header, DEFAULT_MAX_FRAME_BYTES, HEADER_BYTES, MAGIC, PROTOCOL_VERSION,
};
use crate::kind::MessageKind;
use crate::message::Message;

/// One whole frame: a checked header and its payload, not yet decoded into a [`Message`].
///
/// The payload stays bytes until [`Frame::message`] is called: a frame can be checked,
/// counted, matched by request id or dropped without parsing its body. (The hub does
/// decode a client's `reason` into f32s, since engines take `&[f32]`, and encodes the
/// worker's frame straight from that slice: one decode and one copy, not a pass-through.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message kind, checked against the catalog.
    pub kind: MessageKind,
    /// The header as received.
    pub header: Header,
    /// The payload, `header.payload_len` bytes.
    pub payload: Bytes,
}

impl Frame {
    /// Decodes the payload into a typed message.
    ///
    /// # Errors
    ///
    /// See [`Message::decode`].
    pub fn message(&self) -> Result<Message, ProtocolError> {
        Message::decode(self.kind, &self.payload)
    }

    /// Appends the frame's header and payload to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(HEADER_BYTES + self.payload.len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.payload);
    }
}

/// Appends `message` as one frame to `out`.
///
/// The body is written straight into `out` and the header's length patched afterwards, so
/// encoding costs no allocation beyond `out`'s growth.
///
/// # Panics
///
/// If the body exceeds 4 GiB, which no header can describe (the receiver's limit is far
/// lower: a sender should split such work into several requests).
pub fn encode_frame(message: &Message, request_id: u64, deadline: Deadline, out: &mut BytesMut) {
    encode_frame_with_flags(message, request_id, deadline, Flags::EMPTY, out);
}

/// [`encode_frame`] with header flags.
///
/// # Panics
///
/// As [`encode_frame`].
pub fn encode_frame_with_flags(
    message: &Message,
    request_id: u64,
    deadline: Deadline,
    flags: Flags,
    out: &mut BytesMut,
) {
    frame_with(message.kind(), request_id, deadline, flags, out, |out| {
        message.encode_body(out)
    });
}

/// A `reason` frame straight from borrowed values: the bytes of
/// `encode_frame(&Message::Reason(values.to_vec().into()), ..)` without that copy, for a
/// hub forwarding an encoding it holds as a slice.
///
/// # Panics
///
/// As [`encode_frame`].
pub fn encode_reason_frame(
    values: &[f32],
    request_id: u64,
    deadline: Deadline,
    out: &mut BytesMut,
) {
    out.reserve(HEADER_BYTES + values.len() * 4);
    frame_with(
        MessageKind::Reason,
        request_id,
        deadline,
        Flags::EMPTY,
        out,
        |out| crate::body::Encoding::write(values, out),
    );
}

/// A `batch` frame of `values.len() / dim` encodings straight from borrowed values, as
/// [`encode_reason_frame`]; `false` (nothing written) unless they split evenly into
/// encodings of `dim` (as [`crate::Batch::new`] requires).
///
/// # Panics
///
/// As [`encode_frame`].
pub fn encode_batch_frame(
    dim: u32,
    values: &[f32],
    request_id: u64,
    deadline: Deadline,
    out: &mut BytesMut,
) -> bool {
    let Some(count) = crate::body::Batch::count_of(dim, values.len()) else {
        return false;
    };
    out.reserve(HEADER_BYTES + 8 + values.len() * 4);
    frame_with(
        MessageKind::Batch,
        request_id,
        deadline,
        Flags::EMPTY,
        out,
        |out| {
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(&dim.to_le_bytes());
            crate::body::Encoding::write(values, out);
        },
    );
    true
}

/// Writes a header for `kind`, then the body `body` writes, then fills in its length.
fn frame_with(
    kind: MessageKind,
    request_id: u64,
    deadline: Deadline,
    flags: Flags,
    out: &mut BytesMut,
    body: impl FnOnce(&mut BytesMut),
) {
    let start = out.len();
    let header = Header {
        kind: kind as u8,
        flags,
        request_id,
        deadline,
        payload_len: 0,
    };
    out.extend_from_slice(&header.to_bytes());
    body(out);
    let body_len = out.len() - start - HEADER_BYTES;
    #[allow(clippy::expect_used)]
    let body_len =
        u32::try_from(body_len).expect("a frame body larger than 4 GiB cannot be framed");
    out[start + 20..start + 24].copy_from_slice(&body_len.to_le_bytes());
}

/// Cuts frames out of a growing buffer.
///
/// Feed it whatever arrived; it returns `Ok(None)` until a whole frame is there. The header
/// is checked as soon as its bytes arrive, so a bad magic, version or kind, or a length above
/// the limit, is refused before any buffer is reserved for the payload.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that refuses payloads above `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> FrameDecoder {
        FrameDecoder { max_frame_bytes }
    }

    /// The payload limit in force.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Takes the next whole frame off the front of `src`, or `Ok(None)` if more bytes are
    /// needed (having reserved room for the rest of the frame).
    ///
    /// # Errors
    ///
    /// [`ProtocolError::BadMagic`], [`ProtocolError::UnsupportedVersion`],
    /// [`ProtocolError::UnknownKind`] and [`ProtocolError::FrameTooLarge`]. After an error the
    /// stream cannot be resynchronised: the caller answers with an error frame and closes.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        // Refuse a stranger on its first bytes rather than after 24 of them.
        let prefix = src.len().min(4);
        if src[..prefix] != MAGIC.to_le_bytes()[..prefix] {
            let mut found = [0u8; 4];
            found[..prefix].copy_from_slice(&src[..prefix]);
            return Err(ProtocolError::BadMagic {
                found: u32::from_le_bytes(found),
            });
        }
        if src.len() > 4 && src[4] != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                found: src[4],
                supported: PROTOCOL_VERSION,
            });
        }
        let Some(bytes) = src.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        let mut fixed = [0u8; HEADER_BYTES];
        fixed.copy_from_slice(bytes);
        let header = Header::read(&fixed);
        let Some(kind) = MessageKind::from_u8(header.kind) else {
            return Err(ProtocolError::UnknownKind {
                kind: header.kind,
                request_id: header.request_id,
            });
        };
        if header.payload_len > self.max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge {
                len: header.payload_len,
                max: self.max_frame_bytes,
                request_id: header.request_id,
            });
        }
        let frame_len = HEADER_BYTES + header.payload_len as usize;
        if src.len() < frame_len {
            src.reserve(frame_len - src.len());
            return Ok(None);
        }
        src.advance(HEADER_BYTES);
        let payload = src.split_to(header.payload_len as usize).freeze();
        Ok(Some(Frame {
            kind,
            header,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_from_borrowed_values_are_the_bytes_of_the_owned_messages() {
        let values: Vec<f32> = (0..768 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        let deadline = Deadline::from_micros(1_234);
        let (mut owned, mut borrowed) = (BytesMut::new(), BytesMut::new());
        encode_frame(
            &Message::Reason(values.clone().into()),
            7,
            deadline,
            &mut owned,
        );
        encode_reason_frame(&values, 7, deadline, &mut borrowed);
        assert_eq!(owned, borrowed);

        let (mut owned, mut borrowed) = (BytesMut::new(), BytesMut::new());
        let batch = crate::Batch::new(768, values.clone()).unwrap();
        encode_frame(&Message::Batch(batch), 8, deadline, &mut owned);
        assert!(encode_batch_frame(768, &values, 8, deadline, &mut borrowed));
        assert_eq!(owned, borrowed);

        let mut refused = BytesMut::new();
        assert!(!encode_batch_frame(767, &values, 9, deadline, &mut refused));
        assert!(!encode_batch_frame(0, &values, 9, deadline, &mut refused));
        assert!(
            refused.is_empty(),
            "nothing written for a batch that does not split"
        );
    }
    use crate::body::WireError;
    use crate::error::ErrorCode;

    fn frame_bytes(message: &Message) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(message, 42, Deadline::from_micros(1_000), &mut out);
        out
    }

    #[test]
    fn partial_input_asks_for_more_at_every_split() {
        let whole = frame_bytes(&Message::Reason(vec![1.0, -2.0, 3.5].into()));
        for cut in 0..whole.len() {
            let mut decoder = FrameDecoder::default();
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(decoder.decode(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            let frame = decoder.decode(&mut buf).unwrap().unwrap();
            assert_eq!(frame.header.request_id, 42);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn two_frames_in_one_read_come_out_one_by_one() {
        let mut buf = frame_bytes(&Message::Ping);
        buf.extend_from_slice(&frame_bytes(&Message::Pong));
        let mut decoder = FrameDecoder::default();
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().kind,
            MessageKind::Ping
        );
        assert_eq!(
            decoder.decode(&mut buf).unwrap().unwrap().kind,
            MessageKind::Pong
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn bad_magic_is_refused_on_the_first_byte() {
        let mut buf = BytesMut::from(&b"G"[..]);
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert!(matches!(err, ProtocolError::BadMagic { .. }), "{err}");
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
        let err = FrameDecoder::default().decode(&mut http).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::BadMagic {
                found: u32::from_le_bytes(*b"GET ")
            }
        );
    }

    #[test]
    fn wrong_version_and_unknown_kind_are_distinct_errors() {
        let mut buf = frame_bytes(&Message::Ping);
        buf[4] = 9;
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::UnsupportedVersion {
                found: 9,
                supported: 1
            }
        );

        let mut buf = frame_bytes(&Message::Ping);
        buf[5] = 0xee;
        let err = FrameDecoder::default().decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::UnknownKind {
                kind: 0xee,
                request_id: 42
            }
        );
        assert_eq!(err.code(), ErrorCode::UnknownKind);
    }

    #[test]
    fn a_header_claiming_4_gib_is_refused_without_reserving_it() {
        let mut buf = frame_bytes(&Message::Ping);
        buf[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        let capacity_before = buf.capacity();
        let err = FrameDecoder::new(1 << 20).decode(&mut buf).unwrap_err();
        assert_eq!(
            err,
            ProtocolError::FrameTooLarge {
                len: u32::MAX,
                max: 1 << 20,
                request_id: 42
            }
        );
        assert_eq!(buf.capacity(), capacity_before);
    }

    #[test]
    fn the_limit_is_inclusive() {
        let body = Message::Reply(vec![7; 64]);
        let mut buf = frame_bytes(&body);
        assert!(FrameDecoder::new(64).decode(&mut buf).unwrap().is_some());
        let mut buf = frame_bytes(&body);
        assert!(matches!(
            FrameDecoder::new(63).decode(&mut buf),
            Err(ProtocolError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn error_frames_carry_code_and_message() {
        let error = Message::Error(WireError::new(ErrorCode::InvalidInput, "value 3 is NaN"));
        let mut buf = frame_bytes(&error);
        let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(frame.message().unwrap(), error);
    }
}
