//! One frame per NATS message: the payload is exactly one protocol frame, nothing more.

use bytes::{Bytes, BytesMut};
use qnllm_protocol::{Frame, FrameDecoder, ProtocolError};

/// Why a NATS payload is not exactly one frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameOfOne {
    /// The header (magic, version, kind, length) is refused.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The payload ends before its frame does.
    #[error("the message holds {got} bytes, less than one whole frame")]
    Truncated {
        /// Bytes received.
        got: usize,
    },
    /// Bytes follow the frame.
    #[error("{extra} bytes follow the frame: a NATS message carries exactly one")]
    Trailing {
        /// Extra bytes.
        extra: usize,
    },
}

/// Decodes a NATS payload that must hold exactly one frame of at most `max_frame_bytes`.
///
/// # Errors
///
/// [`FrameOfOne`].
pub fn decode_one(payload: &Bytes, max_frame_bytes: u32) -> Result<Frame, FrameOfOne> {
    let mut buf = BytesMut::from(payload.as_ref());
    if buf.is_empty() {
        return Err(FrameOfOne::Truncated { got: 0 });
    }
    let frame = FrameDecoder::new(max_frame_bytes)
        .decode(&mut buf)?
        .ok_or(FrameOfOne::Truncated { got: payload.len() })?;
    if !buf.is_empty() {
        return Err(FrameOfOne::Trailing { extra: buf.len() });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use qnllm_protocol::{encode_frame, Deadline, Message, DEFAULT_MAX_FRAME_BYTES};

    fn ping() -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(&Message::Ping, 9, Deadline::NONE, &mut out);
        out
    }

    #[test]
    fn one_whole_frame_decodes() {
        let frame = decode_one(&ping().freeze(), DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(frame.header.request_id, 9);
        assert_eq!(frame.message().unwrap(), Message::Ping);
    }

    #[test]
    fn short_long_and_foreign_payloads_are_refused() {
        let whole = ping();
        let short = Bytes::copy_from_slice(&whole[..10]);
        assert_eq!(
            decode_one(&short, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameOfOne::Truncated { got: 10 })
        );
        let mut two = whole.clone();
        two.extend_from_slice(&whole);
        assert_eq!(
            decode_one(&two.freeze(), DEFAULT_MAX_FRAME_BYTES),
            Err(FrameOfOne::Trailing { extra: whole.len() })
        );
        let foreign = Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n....");
        assert!(matches!(
            decode_one(&foreign, DEFAULT_MAX_FRAME_BYTES),
            Err(FrameOfOne::Protocol(ProtocolError::BadMagic { .. }))
        ));
        assert_eq!(
            decode_one(&Bytes::new(), DEFAULT_MAX_FRAME_BYTES),
            Err(FrameOfOne::Truncated { got: 0 })
        );
    }
}
