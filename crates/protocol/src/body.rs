//! The typed bodies of messages and their byte layouts (binary on the hot path, JSON for
//! control). Every reader checks lengths against the payload before allocating.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};
use crate::kind::MessageKind;

/// Size of a model or result digest (SHA-256).
pub const DIGEST_BYTES: usize = 32;

/// An embedding vector travelling as raw little-endian `f32`.
///
/// Equality compares bit patterns, so a NaN sent is a NaN received and compares equal.
#[derive(Debug, Clone, Default)]
pub struct Encoding(pub Vec<f32>);

impl PartialEq for Encoding {
    fn eq(&self, other: &Encoding) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl From<Vec<f32>> for Encoding {
    fn from(values: Vec<f32>) -> Encoding {
        Encoding(values)
    }
}

impl Encoding {
    /// The values.
    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub(crate) fn write(values: &[f32], out: &mut BytesMut) {
        // The wire is little-endian f32, which is the memory layout on little-endian hosts:
        // one copy instead of a conversion per value.
        #[cfg(target_endian = "little")]
        out.extend_from_slice(bytemuck::cast_slice(values));
        #[cfg(not(target_endian = "little"))]
        {
            out.reserve(values.len() * 4);
            for value in values {
                out.put_f32_le(*value);
            }
        }
    }

    pub(crate) fn read(kind: MessageKind, bytes: &[u8]) -> Result<Encoding, ProtocolError> {
        if !bytes.len().is_multiple_of(4) {
            return Err(ProtocolError::malformed(
                kind,
                format!(
                    "encoding of {} bytes is not a whole number of f32 values",
                    bytes.len()
                ),
            ));
        }
        Ok(Encoding(f32s(bytes)))
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    #[cfg(target_endian = "little")]
    {
        // One copy into an aligned vector (the frame's bytes need not be aligned).
        bytemuck::pod_collect_to_vec(&bytes[..bytes.len() / 4 * 4])
    }
    #[cfg(not(target_endian = "little"))]
    {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// A cursor over a body that turns short reads into [`ProtocolError::Truncated`].
pub(crate) struct Reader<'a> {
    kind: MessageKind,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(kind: MessageKind, bytes: &'a [u8]) -> Reader<'a> {
        Reader { kind, bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.at..end];
                self.at = end;
                Ok(slice)
            }
            None => Err(ProtocolError::Truncated {
                kind: self.kind,
                needed: self.at.saturating_add(n),
                got: self.bytes.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn f32(&mut self) -> Result<f32, ProtocolError> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    /// `count` items of `width` bytes, checked against what is left before allocating.
    fn items(&mut self, count: u32, width: usize) -> Result<&'a [u8], ProtocolError> {
        let len = (count as usize).checked_mul(width).ok_or_else(|| {
            ProtocolError::malformed(self.kind, format!("count {count} overflows"))
        })?;
        self.take(len)
    }

    fn text(&mut self, len: usize) -> Result<String, ProtocolError> {
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| ProtocolError::malformed(self.kind, "text is not valid UTF-8"))
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        self.at = self.bytes.len();
        rest
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(ProtocolError::malformed(
                self.kind,
                format!(
                    "{} trailing bytes after the body",
                    self.bytes.len() - self.at
                ),
            ))
        }
    }
}

fn put_short_text(out: &mut BytesMut, text: &str) {
    // Names are bounded to u16 by the layout; longer ones are cut at a char boundary.
    let mut len = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    out.put_u16_le(len as u16);
    out.put_slice(&text.as_bytes()[..len]);
}

/// The body of an error frame: a numeric code and a human message.
///
/// Layout: `code: u16`, then the message as UTF-8 to the end of the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// What kind of failure.
    pub code: ErrorCode,
    /// What went wrong and what to do about it.
    pub message: String,
}

impl WireError {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u16_le(self.code.as_u16());
        out.put_slice(self.message.as_bytes());
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<WireError, ProtocolError> {
        let mut r = Reader::new(MessageKind::Error, bytes);
        let code = ErrorCode::from_u16(r.u16()?);
        let len = bytes.len() - 2;
        let message = r.text(len)?;
        r.finish()?;
        Ok(WireError { code, message })
    }
}

/// The reasoning for one encoding, as carried by `result` frames.
///
/// Layout (little-endian): `label u32 · confidence f32 · total_spikes u32 · n u32 ·
/// scores i32×n · label_spikes u32×n · model_version u64 · model_digest [32] ·
/// result_digest [32] · compute_ns u64 · engine_len u16 · engine UTF-8`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultBody {
    /// The winning label.
    pub label: u32,
    /// Confidence in `[0, 1]`, derived from the integer scores.
    pub confidence: f32,
    /// Hidden-layer spikes over all time steps.
    pub total_spikes: u32,
    /// Integer readout score per label.
    pub scores: Vec<i32>,
    /// Output-neuron spikes per label.
    pub label_spikes: Vec<u32>,
    /// Version of the model that answered.
    pub model_version: u64,
    /// Digest of the model that answered.
    pub model_digest: [u8; DIGEST_BYTES],
    /// Digest of the integer outputs.
    pub result_digest: [u8; DIGEST_BYTES],
    /// Time the engine spent computing, in nanoseconds.
    pub compute_ns: u64,
    /// Name of the engine that answered (empty when not known yet).
    pub engine: String,
}

impl ResultBody {
    pub(crate) fn write(&self, out: &mut BytesMut) {
        let n = self.scores.len().max(self.label_spikes.len());
        out.reserve(16 + n * 8 + 8 + 2 * DIGEST_BYTES + 8 + 2 + self.engine.len());
        out.put_u32_le(self.label);
        out.put_f32_le(self.confidence);
        out.put_u32_le(self.total_spikes);
        out.put_u32_le(n as u32);
        // Both lists have one entry per label; a shorter one is padded so the layout holds.
        for i in 0..n {
            out.put_i32_le(self.scores.get(i).copied().unwrap_or(0));
        }
        for i in 0..n {
            out.put_u32_le(self.label_spikes.get(i).copied().unwrap_or(0));
        }
        out.put_u64_le(self.model_version);
        out.put_slice(&self.model_digest);
        out.put_slice(&self.result_digest);
        out.put_u64_le(self.compute_ns);
        put_short_text(out, &self.engine);
    }

    pub(crate) fn read(kind: MessageKind, bytes: &[u8]) -> Result<ResultBody, ProtocolError> {
        let mut r = Reader::new(kind, bytes);
        let body = ResultBody::read_from(&mut r)?;
        r.finish()?;
        Ok(body)
    }

    fn read_from(r: &mut Reader<'_>) -> Result<ResultBody, ProtocolError> {
        let label = r.u32()?;
        let confidence = r.f32()?;
        let total_spikes = r.u32()?;
        let n = r.u32()?;
        let scores = r
            .items(n, 4)?
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let label_spikes = r
            .items(n, 4)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let model_version = r.u64()?;
        let model_digest = r.array()?;
        let result_digest = r.array()?;
        let compute_ns = r.u64()?;
        let engine_len = r.u16()?;
        let engine = r.text(usize::from(engine_len))?;
        Ok(ResultBody {
            label,
            confidence,
            total_spikes,
            scores,
            label_spikes,
            model_version,
            model_digest,
            result_digest,
            compute_ns,
            engine,
        })
    }
}

/// Several encodings of one dimension, stored flat.
///
/// Layout: `count u32 · dim u32 · values f32×(count·dim)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    count: u32,
    dim: u32,
    values: Encoding,
}

impl Batch {
    /// A batch of `values.len() / dim` encodings; `None` unless `values` splits evenly
    /// into at most `u32::MAX` encodings of `dim` values (with `dim > 0`).
    pub fn new(dim: u32, values: Vec<f32>) -> Option<Batch> {
        let count = Batch::count_of(dim, values.len())?;
        Some(Batch {
            count,
            dim,
            values: Encoding(values),
        })
    }

    /// How many encodings of `dim` make `len` values, if they split evenly.
    pub(crate) fn count_of(dim: u32, len: usize) -> Option<u32> {
        if dim == 0 || !len.is_multiple_of(dim as usize) {
            return None;
        }
        u32::try_from(len / dim as usize).ok()
    }

    /// Number of encodings.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Values per encoding.
    pub fn dim(&self) -> u32 {
        self.dim
    }

    /// All values, encoding after encoding.
    pub fn values(&self) -> &[f32] {
        &self.values.0
    }

    /// The encodings one by one.
    pub fn encodings(&self) -> impl Iterator<Item = &[f32]> {
        self.values.0.chunks_exact(self.dim.max(1) as usize)
    }

    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u32_le(self.count);
        out.put_u32_le(self.dim);
        Encoding::write(&self.values.0, out);
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<Batch, ProtocolError> {
        let kind = MessageKind::Batch;
        let mut r = Reader::new(kind, bytes);
        let count = r.u32()?;
        let dim = r.u32()?;
        if dim == 0 {
            return Err(ProtocolError::malformed(kind, "batch dimension is 0"));
        }
        let total = u32::try_from(u64::from(count) * u64::from(dim)).map_err(|_| {
            ProtocolError::malformed(kind, format!("{count} × {dim} values overflow"))
        })?;
        let values = f32s(r.items(total, 4)?);
        r.finish()?;
        Ok(Batch {
            count,
            dim,
            values: Encoding(values),
        })
    }
}

/// One result per encoding of a batch, in input order.
///
/// Layout: `count u32`, then per result `len u32 · result body`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchResult {
    /// The results.
    pub results: Vec<ResultBody>,
}

impl BatchResult {
    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u32_le(self.results.len() as u32);
        for result in &self.results {
            let at = out.len();
            out.put_u32_le(0);
            result.write(out);
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<BatchResult, ProtocolError> {
        let kind = MessageKind::BatchResult;
        let mut r = Reader::new(kind, bytes);
        let count = r.u32()?;
        // Each entry needs at least its 4-byte length, which bounds the allocation.
        let mut results = Vec::with_capacity((count as usize).min(bytes.len() / 4));
        for _ in 0..count {
            let len = r.u32()?;
            results.push(ResultBody::read(kind, r.take(len as usize)?)?);
        }
        r.finish()?;
        Ok(BatchResult { results })
    }
}

/// Ask teacher engines about one encoding.
///
/// Layout: `teachers u8 (0 = all) · options u8 (bit 0: learn from the consensus) ·
/// reserved u16 (0) · encoding f32×n`.
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinate {
    /// How many teachers to ask; `0` asks all of them.
    pub teachers: u8,
    /// Whether the student learns from the consensus.
    pub learn: bool,
    /// The encoding.
    pub encoding: Encoding,
}

impl Coordinate {
    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u8(self.teachers);
        out.put_u8(u8::from(self.learn));
        out.put_u16_le(0);
        Encoding::write(&self.encoding.0, out);
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<Coordinate, ProtocolError> {
        let kind = MessageKind::Coordinate;
        let mut r = Reader::new(kind, bytes);
        let teachers = r.u8()?;
        let options = r.u8()?;
        let reserved = r.u16()?;
        if options & !1 != 0 || reserved != 0 {
            return Err(ProtocolError::malformed(
                kind,
                "undefined option or reserved bits are set",
            ));
        }
        let encoding = Encoding::read(kind, r.rest())?;
        Ok(Coordinate {
            teachers,
            learn: options & 1 == 1,
            encoding,
        })
    }
}

/// Apply the learning update for `(encoding, label)` to a model at `base_version`.
///
/// Layout: `label u32 · base_version u64 · encoding f32×n`.
#[derive(Debug, Clone, PartialEq)]
pub struct Learn {
    /// The label to learn.
    pub label: u32,
    /// The model version the update applies to; a replica at another version refuses it,
    /// which keeps replicas that apply one ordered stream identical.
    pub base_version: u64,
    /// The encoding.
    pub encoding: Encoding,
}

impl Learn {
    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u32_le(self.label);
        out.put_u64_le(self.base_version);
        Encoding::write(&self.encoding.0, out);
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<Learn, ProtocolError> {
        let kind = MessageKind::Learn;
        let mut r = Reader::new(kind, bytes);
        let label = r.u32()?;
        let base_version = r.u64()?;
        let encoding = Encoding::read(kind, r.rest())?;
        Ok(Learn {
            label,
            base_version,
            encoding,
        })
    }
}

/// A learning update was applied.
///
/// Layout: `model_version u64 · model_digest [32]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// The model's version after the update.
    pub model_version: u64,
    /// The model's digest after the update.
    pub model_digest: [u8; DIGEST_BYTES],
}

impl Learned {
    pub(crate) fn write(&self, out: &mut BytesMut) {
        out.put_u64_le(self.model_version);
        out.put_slice(&self.model_digest);
    }

    pub(crate) fn read(bytes: &[u8]) -> Result<Learned, ProtocolError> {
        let mut r = Reader::new(MessageKind::Learned, bytes);
        let learned = Learned {
            model_version: r.u64()?,
            model_digest: r.array()?,
        };
        r.finish()?;
        Ok(learned)
    }
}

/// Invoke a named handler on the hub.
///
/// Layout: `name_len u16 · name UTF-8 · payload bytes to the end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// Handler name.
    pub handler: String,
    /// Opaque argument bytes.
    pub payload: Vec<u8>,
}

/// Opaque bytes for every engine on a topic. Same layout as [`Call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Topic name.
    pub topic: String,
    /// Opaque bytes.
    pub payload: Vec<u8>,
}

pub(crate) fn write_named(name: &str, payload: &[u8], out: &mut BytesMut) {
    put_short_text(out, name);
    out.put_slice(payload);
}

pub(crate) fn read_named(
    kind: MessageKind,
    bytes: &[u8],
) -> Result<(String, Vec<u8>), ProtocolError> {
    let mut r = Reader::new(kind, bytes);
    let len = r.u16()?;
    let name = r.text(usize::from(len))?;
    Ok((name, r.rest().to_vec()))
}

/// Opens a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the peer speaks.
    pub protocol: u8,
    /// `client` or `worker`.
    pub role: String,
    /// A name for logs and metrics.
    pub name: String,
    /// The shared auth token, when the hub requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// Accepts a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Id of this session on the hub.
    pub session: u64,
    /// The hub's software name and version.
    pub server: String,
    /// Largest payload the hub accepts.
    pub max_frame_bytes: u32,
    /// How often workers should send heartbeats.
    pub heartbeat_interval_ms: u64,
}

/// An orderly close or withdrawal, with a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    /// Why.
    pub reason: String,
}

/// A grace period for drain and shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grace {
    /// How long in-flight work may take to finish, in milliseconds.
    pub grace_ms: u64,
}

/// A worker offers an engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Engine name, unique per hub.
    pub name: String,
    /// Model digest, lowercase hex.
    pub model_digest: String,
    /// Model version.
    pub model_version: u64,
    /// Values per encoding.
    pub input_size: u32,
    /// Number of labels.
    pub labels: u32,
    /// Requests the worker takes at once.
    pub max_in_flight: u32,
    /// What the hub uses the engine for. Absent on the wire means [`EngineRole::Engine`],
    /// so workers that predate the field register as they always did; it is written only
    /// when it is not the default, so their bytes do not change either.
    #[serde(default, skip_serializing_if = "EngineRole::is_engine")]
    pub role: EngineRole,
}

/// What a registered engine is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum EngineRole {
    /// Serves `reason`, `batch` and learns as a student replica: the router's rotation.
    #[default]
    Engine,
    /// Answers the coordinator as a teacher; never in the rotation, never a student.
    Teacher,
}

impl EngineRole {
    /// Whether this is the default role (a serving engine).
    pub fn is_engine(&self) -> bool {
        *self == EngineRole::Engine
    }

    /// The role's name on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            EngineRole::Engine => "engine",
            EngineRole::Teacher => "teacher",
        }
    }
}

/// The hub accepted a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The engine's id on this hub.
    pub engine_id: u64,
    /// How often to send heartbeats.
    pub heartbeat_interval_ms: u64,
}

/// A worker's proof of life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Requests being handled now.
    pub in_flight: u32,
    /// Requests answered since start.
    pub served: u64,
}

/// A worker's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    /// `serving`, `draining` or `stopped`.
    pub state: String,
    /// Requests being handled now.
    pub in_flight: u32,
    /// Requests answered since start.
    pub served: u64,
    /// Model version.
    pub model_version: u64,
}

/// One teacher's answer in a coordination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherVote {
    /// Engine name.
    pub engine: String,
    /// Its label.
    pub label: u32,
    /// Its confidence.
    pub confidence: f64,
    /// How often it has agreed with the consensus so far, in `[0, 1]`.
    pub reliability: f64,
}

/// The outcome of a coordination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinationResult {
    /// The consensus label.
    pub consensus: u32,
    /// Share of the vote weight behind the consensus, in `[0, 1]`.
    pub agreement: f64,
    /// Whether the student learned from it.
    pub learned: bool,
    /// Every teacher's answer.
    pub teachers: Vec<TeacherVote>,
}

/// A model's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Engine or model name.
    pub name: String,
    /// Values per encoding.
    pub input_size: u32,
    /// Hidden neurons.
    pub hidden: u32,
    /// Time steps.
    pub steps: u32,
    /// Labels.
    pub labels: u32,
    /// Version (learning steps applied).
    pub model_version: u64,
    /// Digest, lowercase hex.
    pub model_digest: String,
}

/// Result-cache statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Entries held.
    pub entries: u64,
    /// Most entries held.
    pub capacity: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
}

/// Topics to receive events on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Topic names, e.g. `engines`, `metrics`.
    pub topics: Vec<String>,
}

/// Something happened on a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The topic.
    pub topic: String,
    /// What happened.
    pub data: serde_json::Value,
}
