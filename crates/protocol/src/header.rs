//! The fixed 24-byte little-endian frame header and the limits checked against it.

use std::time::Duration;

/// Size of the fixed header that starts every frame.
pub const HEADER_BYTES: usize = 24;

/// The four bytes `Q N L M` read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"QNLM");

/// The protocol version this crate speaks. A peer that sends another version is refused.
pub const PROTOCOL_VERSION: u8 = 1;

/// Default upper bound on a frame's payload, checked before any buffer is reserved.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 * 1024 * 1024;

/// Header flag bits. Senders set only the bits defined here; receivers ignore the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u16);

impl Flags {
    /// No flag set.
    pub const EMPTY: Flags = Flags(0);
    /// The answer must be computed, not served from a cache.
    pub const NO_CACHE: Flags = Flags(1 << 0);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The time a request has left, as carried on the wire: whole microseconds, `0` for none.
///
/// The sender writes what remains of its own deadline when it sends, so the receiver
/// never needs a clock shared with the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Deadline(u32);

impl Deadline {
    /// No deadline: the receiver applies its own default.
    pub const NONE: Deadline = Deadline(0);

    /// A budget of `remaining`, rounded up to a whole microsecond and saturated at
    /// `u32::MAX` µs (about 71 minutes). A zero budget becomes one microsecond so that it
    /// still reads as "already expired" rather than "none".
    pub fn from_remaining(remaining: Duration) -> Deadline {
        let micros = remaining.as_nanos().div_ceil(1_000).max(1);
        Deadline(u32::try_from(micros).unwrap_or(u32::MAX))
    }

    /// The raw wire value in microseconds (`0` = none).
    pub fn from_micros(micros: u32) -> Deadline {
        Deadline(micros)
    }

    /// The raw wire value in microseconds (`0` = none).
    pub fn as_micros(self) -> u32 {
        self.0
    }

    /// The remaining budget, or `None` when the sender set no deadline.
    pub fn remaining(self) -> Option<Duration> {
        (self.0 != 0).then(|| Duration::from_micros(u64::from(self.0)))
    }
}

/// A decoded frame header.
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | magic `QNLM` |
/// | 4 | 1 | protocol version |
/// | 5 | 1 | message kind |
/// | 6 | 2 | flags |
/// | 8 | 8 | request id |
/// | 16 | 4 | deadline budget, µs (0 = none) |
/// | 20 | 4 | payload length in bytes |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The message kind's wire id (validated by the decoder against the catalog).
    pub kind: u8,
    /// Flag bits; see [`Flags`].
    pub flags: Flags,
    /// Chosen by the requester; a reply carries the id of the request it answers.
    pub request_id: u64,
    /// What is left of the request's time budget.
    pub deadline: Deadline,
    /// Length of the payload that follows the header.
    pub payload_len: u32,
}

impl Header {
    /// Writes the header's 24 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4] = PROTOCOL_VERSION;
        out[5] = self.kind;
        out[6..8].copy_from_slice(&self.flags.0.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.deadline.as_micros().to_le_bytes());
        out[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        out
    }

    /// Reads the fields after magic and version without judging them; the decoder checks
    /// magic and version on the raw bytes before it calls this.
    pub(crate) fn read(bytes: &[u8; HEADER_BYTES]) -> Header {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        Header {
            kind: bytes[5],
            flags: Flags(u16::from_le_bytes([bytes[6], bytes[7]])),
            request_id: u64::from_le_bytes(id),
            deadline: Deadline(u32_at(16)),
            payload_len: u32_at(20),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_through_its_bytes() {
        let header = Header {
            kind: 0x20,
            flags: Flags::NO_CACHE,
            request_id: 0x0102_0304_0506_0708,
            deadline: Deadline::from_micros(2_500),
            payload_len: 3_072,
        };
        let bytes = header.to_bytes();
        assert_eq!(&bytes[0..4], b"QNLM");
        assert_eq!(bytes[4], PROTOCOL_VERSION);
        assert_eq!(Header::read(&bytes), header);
    }

    #[test]
    fn deadline_rounds_up_and_never_collapses_to_none() {
        assert_eq!(
            Deadline::from_remaining(Duration::from_nanos(1)).as_micros(),
            1
        );
        assert_eq!(Deadline::from_remaining(Duration::ZERO).as_micros(), 1);
        assert_eq!(
            Deadline::from_remaining(Duration::from_nanos(1_001)).as_micros(),
            2
        );
        assert_eq!(
            Deadline::from_remaining(Duration::from_secs(1 << 40)).as_micros(),
            u32::MAX
        );
        assert_eq!(Deadline::NONE.remaining(), None);
        assert_eq!(
            Deadline::from_micros(5).remaining(),
            Some(Duration::from_micros(5))
        );
    }
}
