//! What can go wrong reading the wire, and the numeric error codes carried by error frames.

use crate::kind::MessageKind;

/// Why bytes from a peer could not be turned into a frame or a message.
///
/// Each variant is a distinct failure with its own [`ErrorCode`]; every one of them ends
/// the connection it came from (after an error frame where the header allowed one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The first four bytes were not `QNLM`: the peer does not speak this protocol.
    #[error("bad magic 0x{found:08x}: the peer does not speak the qnllm protocol")]
    BadMagic {
        /// The four bytes read, as a little-endian `u32`.
        found: u32,
    },
    /// The header names a protocol version this build does not implement.
    #[error("unsupported protocol version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        /// The version the peer sent.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// The header names a message kind outside the catalog.
    #[error("unknown message kind 0x{kind:02x} in request {request_id}")]
    UnknownKind {
        /// The kind byte.
        kind: u8,
        /// The request id from the header, so the error can be answered.
        request_id: u64,
    },
    /// The header announces a payload above the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes (request {request_id})")]
    FrameTooLarge {
        /// Announced payload length.
        len: u32,
        /// The limit in force.
        max: u32,
        /// The request id from the header.
        request_id: u64,
    },
    /// The payload is shorter than the kind's layout requires.
    #[error("{kind} body truncated: needs at least {needed} bytes, has {got}")]
    Truncated {
        /// The kind whose body was short.
        kind: MessageKind,
        /// Bytes the layout requires.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The payload has the wrong shape: bad JSON, trailing bytes, invalid UTF-8, bad counts.
    #[error("{kind} body malformed: {reason}")]
    Malformed {
        /// The kind whose body was malformed.
        kind: MessageKind,
        /// What was wrong, for the error frame and the log.
        reason: String,
    },
}

impl ProtocolError {
    /// The code to send in an error frame for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::BadMagic { .. } => ErrorCode::BadMagic,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtocolError::UnknownKind { .. } => ErrorCode::UnknownKind,
            ProtocolError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            ProtocolError::Truncated { .. } => ErrorCode::TruncatedBody,
            ProtocolError::Malformed { .. } => ErrorCode::MalformedBody,
        }
    }

    /// The request id the failure belongs to, where the header could be read.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            ProtocolError::UnknownKind { request_id, .. }
            | ProtocolError::FrameTooLarge { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }

    pub(crate) fn malformed(kind: MessageKind, reason: impl Into<String>) -> ProtocolError {
        ProtocolError::Malformed {
            kind,
            reason: reason.into(),
        }
    }
}

macro_rules! error_codes {
    ($( $variant:ident = $code:literal, $meaning:literal; )*) => {
        /// The numeric code in an error frame. Codes below 16 are protocol failures that
        /// close the connection; the others fail one request and the connection goes on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( #[doc = $meaning] $variant, )*
            /// A code this build does not know; kept so it can be relayed unchanged.
            Other(u16),
        }

        impl ErrorCode {
            /// Every named code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The code's wire value.
            pub fn as_u16(self) -> u16 {
                match self {
                    $( ErrorCode::$variant => $code, )*
                    ErrorCode::Other(code) => code,
                }
            }

            /// The code for a wire value; unknown values become [`ErrorCode::Other`].
            pub fn from_u16(code: u16) -> ErrorCode {
                match code {
                    $( $code => ErrorCode::$variant, )*
                    other => ErrorCode::Other(other),
                }
            }

            /// One line on what the code means.
            pub fn meaning(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $meaning, )*
                    ErrorCode::Other(_) => "an error code this build does not know",
                }
            }
        }
    };
}

error_codes! {
    BadMagic = 1, "The frame did not start with the QNLM magic.";
    UnsupportedVersion = 2, "The frame's protocol version is not supported.";
    UnknownKind = 3, "The frame's message kind is not in the catalog.";
    FrameTooLarge = 4, "The frame's payload exceeds the maximum frame size.";
    TruncatedBody = 5, "The body is shorter than its layout requires.";
    MalformedBody = 6, "The body does not follow its layout.";
    UnexpectedMessage = 7, "The message is valid but not allowed here (e.g. before hello).";
    Unauthorized = 16, "The hello carried no token or a wrong one.";
    HelloTimeout = 17, "No hello arrived within the hello timeout.";
    TooManyConnections = 18, "The server is at its connection cap.";
    IdleTimeout = 19, "The connection was idle for longer than the idle timeout.";
    InvalidInput = 32, "The encoding was rejected: wrong length or a non-finite value.";
    DeadlineExceeded = 33, "The request's deadline passed before an answer.";
    NoEngineAvailable = 34, "No engine could take the request; start a worker or a local engine.";
    EngineFailed = 35, "The engine failed while handling the request.";
    Cancelled = 36, "The requester cancelled the request.";
    Overloaded = 37, "Queues are full; retry later.";
    UnknownHandler = 38, "No handler is registered under the called name.";
    ShuttingDown = 39, "The server is shutting down and takes no new work.";
    VersionConflict = 40, "A learn update named a model version other than the engine's.";
    Disagreement = 41, "Redundant engines returned different results.";
    DuplicateRequestId = 42, "The request id is already in flight on this connection.";
    Internal = 255, "A bug on the answering side; the message says more.";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Other(code) => write!(f, "error {code}"),
            named => write!(f, "{named:?} ({})", named.as_u16()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), code);
            assert!(seen.insert(code.as_u16()));
        }
        assert_eq!(ErrorCode::from_u16(9_999), ErrorCode::Other(9_999));
        assert_eq!(ErrorCode::Other(9_999).as_u16(), 9_999);
    }

    #[test]
    fn each_protocol_error_has_its_own_code() {
        let kind = MessageKind::Reason;
        let errors = [
            ProtocolError::BadMagic { found: 0 },
            ProtocolError::UnsupportedVersion {
                found: 9,
                supported: 1,
            },
            ProtocolError::UnknownKind {
                kind: 0xee,
                request_id: 1,
            },
            ProtocolError::FrameTooLarge {
                len: 1,
                max: 0,
                request_id: 1,
            },
            ProtocolError::Truncated {
                kind,
                needed: 4,
                got: 1,
            },
            ProtocolError::malformed(kind, "x"),
        ];
        let codes: std::collections::HashSet<_> = errors.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), errors.len());
    }
}
