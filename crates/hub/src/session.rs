//! One connection on the hub: the handshake (cap, hello, version, token), then the client
//! or worker loop until the peer leaves, breaks the protocol, idles out or the hub stops.

use std::sync::Arc;
use std::time::Duration;

use qnllm_protocol::{
    Deadline, ErrorCode, Frame, Goodbye, Hello, Message, Registered, Welcome, WireError,
    PROTOCOL_VERSION,
};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::cmd::{self, Flow};
use crate::connection::{spawn_writer, Elapsed, FrameReader, FrameSender, ReadError};
use crate::hub::Shared;
use crate::stats::{ConnectionStats, Counters};
use crate::stream::Stream;

type Reader = FrameReader;

/// Runs one connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, io: Stream, peer: String) {
    let (read, write) = io.into_split();
    let (sender, writer) = spawn_writer(write);
    match shared.connections.clone().try_acquire_owned() {
        Ok(_permit) => {
            let mut reader = FrameReader::new(read, shared.config.max_frame_bytes)
                .busy_poll(shared.config.busy_poll());
            if let Some(hello) = handshake(&shared, &mut reader, &sender).await {
                let session = shared
                    .next_session
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(session, %peer, role = %hello.role, name = %hello.name, "session opened");
                let open = shared.open.open(session, &peer, &hello.role, &hello.name);
                let welcome = Welcome {
                    session,
                    server: concat!("qnllm/", env!("CARGO_PKG_VERSION")).into(),
                    max_frame_bytes: shared.config.max_frame_bytes,
                    heartbeat_interval_ms: shared.config.heartbeat_interval_ms,
                };
                sender
                    .send(&Message::Welcome(welcome), 0, Deadline::NONE)
                    .await;
                if hello.role == "worker" {
                    worker_loop(&shared, &mut reader, &sender, &open.stats).await;
                } else {
                    client_loop(&shared, &mut reader, &sender, &open.stats).await;
                }
                tracing::debug!(session, %peer, "session closed");
            }
        }
        Err(_) => {
            Counters::add(&shared.counters.refused, 1);
            tracing::warn!(%peer, max = shared.config.max_connections, "connection refused: at the connection cap");
            let message = format!(
                "the hub is at its cap of {} connections; retry later",
                shared.config.max_connections
            );
            fail(&sender, 0, ErrorCode::TooManyConnections, message).await;
        }
    }
    drop(sender);
    writer.finish().await; // flush what was queued, then the socket closes
}

/// Sends an error frame.
pub(crate) async fn fail(
    sender: &FrameSender,
    request_id: u64,
    code: ErrorCode,
    message: impl Into<String>,
) {
    sender
        .send(
            &Message::Error(WireError::new(code, message)),
            request_id,
            Deadline::NONE,
        )
        .await;
}

/// Answers a broken frame with its error and counts it; the caller then closes.
async fn protocol_error(
    shared: &Shared,
    sender: &FrameSender,
    err: &qnllm_protocol::ProtocolError,
    request_id: u64,
) {
    Counters::add(&shared.counters.protocol_errors, 1);
    tracing::debug!(error = %err, "protocol error; closing the connection");
    fail(
        sender,
        err.request_id().unwrap_or(request_id),
        err.code(),
        err.to_string(),
    )
    .await;
}

async fn handshake(shared: &Shared, reader: &mut Reader, sender: &FrameSender) -> Option<Hello> {
    let frame = match reader
        .read_frame_within(shared.config.hello_timeout())
        .await
    {
        Err(Elapsed) => {
            let limit = shared.config.hello_timeout();
            fail(
                sender,
                0,
                ErrorCode::HelloTimeout,
                format!("no hello within {limit:?}"),
            )
            .await;
            return None;
        }
        Ok(Err(ReadError::Protocol(err))) => {
            protocol_error(shared, sender, &err, 0).await;
            return None;
        }
        Ok(Err(_) | Ok(None)) => return None,
        Ok(Ok(Some(frame))) => frame,
    };
    let id = frame.header.request_id;
    let hello = match frame.message() {
        Ok(Message::Hello(hello)) => hello,
        Ok(other) => {
            fail(
                sender,
                id,
                ErrorCode::UnexpectedMessage,
                format!("expected hello first, got {}", other.kind()),
            )
            .await;
            return None;
        }
        Err(err) => {
            protocol_error(shared, sender, &err, id).await;
            return None;
        }
    };
    if hello.protocol != PROTOCOL_VERSION {
        let message = format!(
            "hello speaks protocol {}, this hub speaks {PROTOCOL_VERSION}",
            hello.protocol
        );
        fail(sender, id, ErrorCode::UnsupportedVersion, message).await;
        return None;
    }
    if let Some(expected) = shared.config.token.as_deref().filter(|t| !t.is_empty()) {
        // Compare digests in constant time: neither content nor length leaks through timing.
        let given = Sha256::digest(hello.token.as_deref().unwrap_or("").as_bytes());
        if !bool::from(given.ct_eq(&Sha256::digest(expected.as_bytes()))) {
            tracing::warn!(name = %hello.name, "hello refused: wrong or missing token");
            fail(
                sender,
                id,
                ErrorCode::Unauthorized,
                "wrong or missing auth token",
            )
            .await;
            return None;
        }
    }
    if hello.role != "client" && hello.role != "worker" {
        let message = format!("role `{}` is unknown: use `client` or `worker`", hello.role);
        fail(sender, id, ErrorCode::UnexpectedMessage, message).await;
        return None;
    }
    Some(hello)
}

async fn client_loop(
    shared: &Arc<Shared>,
    reader: &mut Reader,
    sender: &FrameSender,
    stats: &Arc<ConnectionStats>,
) {
    let session = cmd::ClientSession::new(sender.clone(), stats.clone());
    loop {
        let frame = tokio::select! {
            () = shared.shutdown.cancelled() => {
                let goodbye = Message::Goodbye(Goodbye { reason: "hub shutting down".into() });
                sender.send(&goodbye, 0, Deadline::NONE).await;
                break;
            }
            read = reader.read_frame_within(shared.config.idle_timeout()) => match read {
                Err(Elapsed) => {
                    let message = format!("idle for {:?}; closing", shared.config.idle_timeout());
                    fail(sender, 0, ErrorCode::IdleTimeout, message).await;
                    break;
                }
                Ok(Ok(Some(frame))) => frame,
                Ok(Ok(None)) => break,
                Ok(Err(ReadError::Protocol(err))) => {
                    protocol_error(shared, sender, &err, 0).await;
                    break;
                }
                Ok(Err(_)) => break,
            },
        };
        count_in(shared, stats, &frame);
        if let Flow::Close = cmd::dispatch(shared, &session, frame).await {
            break;
        }
    }
    session.end(shared.config.grace()).await;
}

fn count_in(shared: &Shared, stats: &ConnectionStats, frame: &Frame) {
    let bytes = (qnllm_protocol::HEADER_BYTES + frame.payload.len()) as u64;
    Counters::add(&shared.counters.frames_in, 1);
    Counters::add(&shared.counters.bytes_in, bytes);
    Counters::add(&stats.frames_in, 1);
    Counters::add(&stats.bytes_in, bytes);
}

async fn worker_loop(
    shared: &Arc<Shared>,
    reader: &mut Reader,
    sender: &FrameSender,
    stats: &ConnectionStats,
) {
    let peer = stats.peer();
    let register = match reader
        .read_frame_within(shared.config.hello_timeout())
        .await
    {
        Ok(Ok(Some(frame))) => match frame.message() {
            Ok(Message::Register(register)) => register,
            Ok(other) => {
                let message = format!("a worker registers first, got {}", other.kind());
                fail(
                    sender,
                    frame.header.request_id,
                    ErrorCode::UnexpectedMessage,
                    message,
                )
                .await;
                return;
            }
            Err(err) => return protocol_error(shared, sender, &err, frame.header.request_id).await,
        },
        Ok(Err(ReadError::Protocol(err))) => return protocol_error(shared, sender, &err, 0).await,
        Err(Elapsed) => {
            return fail(
                sender,
                0,
                ErrorCode::HelloTimeout,
                "no register after hello",
            )
            .await
        }
        Ok(_) => return,
    };
    let engine = match shared.registry.register(&register, sender.clone()) {
        Ok((engine, _)) => engine,
        Err(why) => {
            tracing::warn!(%peer, %why, "registration refused");
            let message = format!("registration refused: {why}");
            return fail(sender, 0, ErrorCode::MalformedBody, message).await;
        }
    };
    Counters::add(&shared.counters.engines_joined, 1);
    let registered = Registered {
        engine_id: engine.id,
        heartbeat_interval_ms: shared.config.heartbeat_interval_ms,
    };
    sender
        .send(&Message::Registered(registered), 0, Deadline::NONE)
        .await;

    let timeout = shared.config.heartbeat_timeout();
    let mut check = tokio::time::interval(
        shared
            .config
            .heartbeat_interval()
            .min(timeout / 3)
            .max(Duration::from_millis(10)),
    );
    let mut draining = false;
    let reason = loop {
        tokio::select! {
            () = shared.shutdown.cancelled(), if !draining => draining = true,
            () = shared.requests.wait(), if draining => {
                let goodbye = Message::Goodbye(Goodbye { reason: "hub shutting down".into() });
                sender.send(&goodbye, 0, Deadline::NONE).await;
                break "hub shutting down".to_string();
            }
            _ = check.tick() => {
                let silence = engine.silence();
                if silence > timeout {
                    break format!("missed heartbeats: silent for {} ms (timeout {} ms)", silence.as_millis(), timeout.as_millis());
                }
            }
            read = reader.read_frame() => match read {
                Ok(Some(frame)) => {
                    count_in(shared, stats, &frame);
                    engine.heard();
                    match frame.kind {
                        qnllm_protocol::MessageKind::Result
                        | qnllm_protocol::MessageKind::BatchResult
                        | qnllm_protocol::MessageKind::Learned
                        | qnllm_protocol::MessageKind::ModelInfo
                        | qnllm_protocol::MessageKind::Error if frame.header.request_id != 0 => engine.complete(frame),
                        qnllm_protocol::MessageKind::Heartbeat
                        | qnllm_protocol::MessageKind::Pong
                        | qnllm_protocol::MessageKind::Status => {}
                        qnllm_protocol::MessageKind::Ping => {
                            sender.send(&Message::Pong, frame.header.request_id, Deadline::NONE).await;
                        }
                        qnllm_protocol::MessageKind::Unregister => shared.registry.withdraw(&engine),
                        qnllm_protocol::MessageKind::Goodbye => break "worker said goodbye".to_string(),
                        qnllm_protocol::MessageKind::Error => {
                            tracing::warn!(engine = %qnllm_router::Backend::name(&*engine), message = ?frame.message(), "worker reported an error");
                        }
                        other => {
                            let message = format!("{other} is not something a worker sends to the hub");
                            fail(sender, frame.header.request_id, ErrorCode::UnexpectedMessage, message).await;
                        }
                    }
                }
                Ok(None) => break "connection closed".to_string(),
                Err(ReadError::Protocol(err)) => {
                    protocol_error(shared, sender, &err, 0).await;
                    break format!("protocol error: {err}");
                }
                Err(err) => break err.to_string(),
            },
        }
    };
    tracing::debug!(%peer, %reason, "worker session ending");
    let failed_over = shared.registry.remove(&engine, &reason);
    Counters::add(&shared.counters.engines_lost, 1);
    Counters::add(&shared.counters.failed_over, failed_over as u64);
}
