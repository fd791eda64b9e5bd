//! `Message`: one typed value per catalog entry, and the dispatch between kinds and bodies.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::body::{
    read_named, write_named, Batch, BatchResult, CacheStats, Call, Coordinate, CoordinationResult,
    Encoding, EngineStatus, Event, Goodbye, Grace, Heartbeat, Hello, Learn, Learned, ModelInfo,
    Register, Registered, ResultBody, Subscribe, Topic, Welcome, WireError,
};
use crate::error::ProtocolError;
use crate::kind::MessageKind;

/// A decoded message: the kind and its typed body.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // each variant is documented by its `MessageKind` twin
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Ping,
    Pong,
    Goodbye(Goodbye),
    Error(WireError),
    Register(Register),
    Registered(Registered),
    Heartbeat(Heartbeat),
    Drain(Grace),
    Unregister(Goodbye),
    Status(EngineStatus),
    Reason(Encoding),
    Result(ResultBody),
    Batch(Batch),
    BatchResult(BatchResult),
    Cancel,
    Coordinate(Coordinate),
    CoordinationResult(CoordinationResult),
    Learn(Learn),
    Learned(Learned),
    ModelQuery,
    ModelInfo(ModelInfo),
    CacheQuery,
    CacheStats(CacheStats),
    CacheClear,
    MetricsQuery,
    Metrics(serde_json::Value),
    Subscribe(Subscribe),
    Event(Event),
    Config(serde_json::Value),
    Shutdown(Grace),
    Call(Call),
    Reply(Vec<u8>),
    Broadcast(Topic),
}

impl Message {
    /// The catalog entry of this message.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Welcome(_) => MessageKind::Welcome,
            Message::Ping => MessageKind::Ping,
            Message::Pong => MessageKind::Pong,
            Message::Goodbye(_) => MessageKind::Goodbye,
            Message::Error(_) => MessageKind::Error,
            Message::Register(_) => MessageKind::Register,
            Message::Registered(_) => MessageKind::Registered,
            Message::Heartbeat(_) => MessageKind::Heartbeat,
            Message::Drain(_) => MessageKind::Drain,
            Message::Unregister(_) => MessageKind::Unregister,
            Message::Status(_) => MessageKind::Status,
            Message::Reason(_) => MessageKind::Reason,
            Message::Result(_) => MessageKind::Result,
            Message::Batch(_) => MessageKind::Batch,
            Message::BatchResult(_) => MessageKind::BatchResult,
            Message::Cancel => MessageKind::Cancel,
            Message::Coordinate(_) => MessageKind::Coordinate,
            Message::CoordinationResult(_) => MessageKind::CoordinationResult,
            Message::Learn(_) => MessageKind::Learn,
            Message::Learned(_) => MessageKind::Learned,
            Message::ModelQuery => MessageKind::ModelQuery,
            Message::ModelInfo(_) => MessageKind::ModelInfo,
            Message::CacheQuery => MessageKind::CacheQuery,
            Message::CacheStats(_) => MessageKind::CacheStats,
            Message::CacheClear => MessageKind::CacheClear,
            Message::MetricsQuery => MessageKind::MetricsQuery,
            Message::Metrics(_) => MessageKind::Metrics,
            Message::Subscribe(_) => MessageKind::Subscribe,
            Message::Event(_) => MessageKind::Event,
            Message::Config(_) => MessageKind::Config,
            Message::Shutdown(_) => MessageKind::Shutdown,
            Message::Call(_) => MessageKind::Call,
            Message::Reply(_) => MessageKind::Reply,
            Message::Broadcast(_) => MessageKind::Broadcast,
        }
    }

    /// Appends this message's body (not the header) to `out`.
    pub fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Message::Ping
            | Message::Pong
            | Message::Cancel
            | Message::ModelQuery
            | Message::CacheQuery
            | Message::CacheClear
            | Message::MetricsQuery => {}
            Message::Hello(body) => json(body, out),
            Message::Welcome(body) => json(body, out),
            Message::Goodbye(body) | Message::Unregister(body) => json(body, out),
            Message::Error(body) => body.write(out),
            Message::Register(body) => json(body, out),
            Message::Registered(body) => json(body, out),
            Message::Heartbeat(body) => json(body, out),
            Message::Drain(body) | Message::Shutdown(body) => json(body, out),
            Message::Status(body) => json(body, out),
            Message::Reason(encoding) => Encoding::write(&encoding.0, out),
            Message::Result(body) => body.write(out),
            Message::Batch(body) => body.write(out),
            Message::BatchResult(body) => body.write(out),
            Message::Coordinate(body) => body.write(out),
            Message::CoordinationResult(body) => json(body, out),
            Message::Learn(body) => body.write(out),
            Message::Learned(body) => body.write(out),
            Message::ModelInfo(body) => json(body, out),
            Message::CacheStats(body) => json(body, out),
            Message::Metrics(body) | Message::Config(body) => json(body, out),
            Message::Subscribe(body) => json(body, out),
            Message::Event(body) => json(body, out),
            Message::Call(call) => write_named(&call.handler, &call.payload, out),
            Message::Reply(bytes) => out.extend_from_slice(bytes),
            Message::Broadcast(topic) => write_named(&topic.topic, &topic.payload, out),
        }
    }

    /// Decodes the body of a `kind` message.
    ///
    /// # Errors
    ///
    /// [`ProtocolError::Truncated`] when the body is shorter than its layout, and
    /// [`ProtocolError::Malformed`] when it does not follow it.
    pub fn decode(kind: MessageKind, body: &[u8]) -> Result<Message, ProtocolError> {
        let message = match kind {
            MessageKind::Ping => empty(kind, body, Message::Ping)?,
            MessageKind::Pong => empty(kind, body, Message::Pong)?,
            MessageKind::Cancel => empty(kind, body, Message::Cancel)?,
            MessageKind::ModelQuery => empty(kind, body, Message::ModelQuery)?,
            MessageKind::CacheQuery => empty(kind, body, Message::CacheQuery)?,
            MessageKind::CacheClear => empty(kind, body, Message::CacheClear)?,
            MessageKind::MetricsQuery => empty(kind, body, Message::MetricsQuery)?,
            MessageKind::Hello => Message::Hello(from_json(kind, body)?),
            MessageKind::Welcome => Message::Welcome(from_json(kind, body)?),
            MessageKind::Goodbye => Message::Goodbye(from_json(kind, body)?),
            MessageKind::Error => Message::Error(WireError::read(body)?),
            MessageKind::Register => Message::Register(from_json(kind, body)?),
            MessageKind::Registered => Message::Registered(from_json(kind, body)?),
            MessageKind::Heartbeat => Message::Heartbeat(from_json(kind, body)?),
            MessageKind::Drain => Message::Drain(from_json(kind, body)?),
            MessageKind::Unregister => Message::Unregister(from_json(kind, body)?),
            MessageKind::Status => Message::Status(from_json(kind, body)?),
            MessageKind::Reason => Message::Reason(Encoding::read(kind, body)?),
            MessageKind::Result => Message::Result(ResultBody::read(kind, body)?),
            MessageKind::Batch => Message::Batch(Batch::read(body)?),
            MessageKind::BatchResult => Message::BatchResult(BatchResult::read(body)?),
            MessageKind::Coordinate => Message::Coordinate(Coordinate::read(body)?),
            MessageKind::CoordinationResult => Message::CoordinationResult(from_json(kind, body)?),
            MessageKind::Learn => Message::Learn(Learn::read(body)?),
            MessageKind::Learned => Message::Learned(Learned::read(body)?),
            MessageKind::ModelInfo => Message::ModelInfo(from_json(kind, body)?),
            MessageKind::CacheStats => Message::CacheStats(from_json(kind, body)?),
            MessageKind::Metrics => Message::Metrics(from_json(kind, body)?),
            MessageKind::Subscribe => Message::Subscribe(from_json(kind, body)?),
            MessageKind::Event => Message::Event(from_json(kind, body)?),
            MessageKind::Config => Message::Config(from_json(kind, body)?),
            MessageKind::Shutdown => Message::Shutdown(from_json(kind, body)?),
            MessageKind::Call => {
                let (handler, payload) = read_named(kind, body)?;
                Message::Call(Call { handler, payload })
            }
            MessageKind::Reply => Message::Reply(body.to_vec()),
            MessageKind::Broadcast => {
                let (topic, payload) = read_named(kind, body)?;
                Message::Broadcast(Topic { topic, payload })
            }
        };
        Ok(message)
    }
}

fn json<T: Serialize>(body: &T, out: &mut BytesMut) {
    // Serialising these plain structs and JSON values into memory cannot fail: every map
    // key is a string and the writer is a growable buffer.
    #[allow(clippy::unwrap_used)]
    serde_json::to_writer(bytes::BufMut::writer(out), body).unwrap();
}

fn from_json<T: DeserializeOwned>(kind: MessageKind, body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body)
        .map_err(|e| ProtocolError::malformed(kind, format!("invalid JSON: {e}")))
}

fn empty(kind: MessageKind, body: &[u8], message: Message) -> Result<Message, ProtocolError> {
    if body.is_empty() {
        Ok(message)
    } else {
        Err(ProtocolError::malformed(
            kind,
            format!("expects an empty body, got {} bytes", body.len()),
        ))
    }
}
