//! One connection on the hub, driven to its end: the handshake (budget, cap, and the checks
//! of `accept.rs`), then the client or worker loop until the peer leaves, breaks the
//! protocol, idles out or the hub stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qnllm_protocol::{Deadline, ErrorCode, Frame, Goodbye, Grace, Hello, Message};

use crate::accept::{Accept, Refusal, Step, Terms};
use crate::cmd::call::Calls;
use crate::cmd::requests::ClientSession;
use crate::cmd::{self, Flow};
use crate::config::HubConfig;
use crate::connection::{spawn_writer, Elapsed, FrameReader, FrameSender, ReadError};
use crate::handshakes::HandshakeSlot;
use crate::shared::Shared;
use crate::stats::{ConnectionStats, Counters};
use crate::stream::Stream;

type Reader = FrameReader;

/// Runs one connection to its end.
pub(crate) async fn run(shared: Arc<Shared>, calls: Arc<dyn Calls>, io: Stream, peer: String) {
    let (read, write) = io.into_split();
    let (sender, writer) = spawn_writer(write);
    let mut reader =
        FrameReader::new(read, shared.config.max_frame_bytes).busy_poll(shared.config.busy_poll());
    let (slot, made_room) = shared.handshakes.enter();
    Counters::add(&shared.counters.handshakes_evicted, made_room);
    let mut accept = Accept::new(terms(&shared.config), Instant::now());
    let hello = {
        let handshake = hello(&mut accept, &mut reader, &slot);
        tokio::pin!(handshake);
        let floor = tokio::time::sleep(shared.config.handshake_floor());
        tokio::pin!(floor);
        let mut floored = false;
        loop {
            tokio::select! {
                // A hello that is ready wins over an eviction that is too.
                biased;
                hello = &mut handshake => break hello,
                () = slot.evicted.cancelled() => {
                    tracing::debug!(%peer, "handshake evicted: the handshake budget is full");
                    let message = format!(
                        "more than {} connections are waiting to say hello; this one waited \
                         longest and was closed",
                        shared.config.max_handshakes
                    );
                    sender.fail(0, ErrorCode::HelloTimeout, message).await;
                    break Ok(None);
                }
                () = &mut floor, if !floored => {
                    // Past its floor, this one (or an older one) may have to make room.
                    floored = true;
                    let evicted = shared.handshakes.trim();
                    Counters::add(&shared.counters.handshakes_evicted, evicted);
                }
            }
        }
    };
    drop(slot);
    match hello {
        Ok(Some(hello)) => match admit(&shared, &hello.role) {
            Ok(permit) => {
                let session = shared
                    .next_session
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(session, %peer, role = %hello.role, name = %hello.name, "session opened");
                let open = shared.open.open(session, &peer, &hello.role, &hello.name);
                let welcome = accept.welcome(session, Instant::now());
                sender.send(&welcome, 0, Deadline::NONE).await;
                if accept.is_open() {
                    client_loop(&shared, &*calls, &mut reader, &sender, &open.stats).await;
                } else {
                    worker_loop(&shared, &mut accept, &mut reader, &sender, &open.stats).await;
                }
                tracing::debug!(session, %peer, "session closed");
                drop(open);
                drop(permit); // the slot is free before anyone hears of the close
                let _ = shared.events.send((
                    "connections".into(),
                    serde_json::json!({ "closed": hello.name, "session": session }),
                ));
            }
            Err(message) => {
                Counters::add(&shared.counters.refused, 1);
                tracing::warn!(%peer, role = %hello.role, max = shared.config.max_connections, "connection refused: at the connection cap");
                sender.fail(0, ErrorCode::TooManyConnections, message).await;
            }
        },
        Ok(None) => {}
        Err(refusal) => refuse(&shared, &sender, refusal).await,
    }
    drop(sender);
    writer.finish().await; // flush what was queued, then the socket closes
}

/// A slot under the connection cap for a peer that said hello as `role`: clients may not
/// take the slots kept for workers.
fn admit(shared: &Shared, role: &str) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
    let reserved = if role == "worker" {
        0
    } else {
        shared.config.worker_reserve()
    };
    let full = || {
        format!(
            "the hub is at its cap of {} connections ({} kept for workers); retry later",
            shared.config.max_connections,
            shared.config.worker_reserve()
        )
    };
    if shared.connections.available_permits() <= reserved {
        return Err(full());
    }
    shared
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| full())
}

/// The hub's terms for every hello, from its configuration.
fn terms(config: &HubConfig) -> Terms<'_> {
    Terms {
        hello_timeout: config.hello_timeout(),
        token: config.token.as_deref(),
        max_frame_bytes: config.max_frame_bytes,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
    }
}

/// Sends a refusal, counting it when the peer broke the protocol; the caller then closes.
async fn refuse(shared: &Shared, sender: &FrameSender, refusal: Refusal) {
    if refusal.protocol_error {
        Counters::add(&shared.counters.protocol_errors, 1);
        tracing::debug!(error = %refusal.message, "protocol error; closing the connection");
    }
    sender
        .fail(refusal.request_id, refusal.code, refusal.message)
        .await;
}

/// Answers a broken frame with its error and counts it; the caller then closes.
async fn protocol_error(
    shared: &Shared,
    sender: &FrameSender,
    err: &qnllm_protocol::ProtocolError,
    request_id: u64,
) {
    refuse(shared, sender, Refusal::protocol(err, request_id)).await;
}

/// Reads the frame `accept` waits for, within its deadline, and hands it over: the step
/// it makes, `Ok(None)` when the peer left, or the refusal to send. `on_read` runs as soon
/// as the read ends, however it ends.
async fn next_step(
    accept: &mut Accept<'_>,
    reader: &mut Reader,
    on_read: impl Fn(),
) -> Result<Option<Step>, Refusal> {
    while let Some(deadline) = accept.deadline() {
        let read = reader
            .read_frame_within(deadline.saturating_duration_since(Instant::now()))
            .await;
        on_read();
        let now = Instant::now();
        match read {
            Err(Elapsed) => match accept.handle_timeout(now) {
                Some(late) => return Err(late),
                None => continue, // woken before the deadline: wait the rest
            },
            Ok(Err(ReadError::Protocol(err))) => return Err(accept.handle_broken(&err)),
            Ok(Err(_) | Ok(None)) => return Ok(None),
            Ok(Ok(Some(frame))) => return accept.handle_frame(now, &frame).map(Some),
        }
    }
    Ok(None)
}

/// The peer's hello, checked; `Ok(None)` when it left first.
async fn hello(
    accept: &mut Accept<'_>,
    reader: &mut Reader,
    slot: &HandshakeSlot<'_>,
) -> Result<Option<Hello>, Refusal> {
    // Whatever it sends, the peer has spoken: it is judged by what it said, never evicted.
    match next_step(accept, reader, || slot.greeted()).await? {
        Some(Step::Hello(hello)) => Ok(Some(hello)),
        Some(Step::Register(_)) | None => Ok(None),
    }
}

/// While the hub drains, a client connection with nothing in flight is closed after this
/// long without a frame; a client that closes its side first ends it at once.
const DRAIN_LINGER: Duration = Duration::from_millis(250);

async fn client_loop(
    shared: &Shared,
    calls: &dyn Calls,
    reader: &mut Reader,
    sender: &FrameSender,
    stats: &Arc<ConnectionStats>,
) {
    let session = ClientSession::new(
        sender.clone(),
        stats.clone(),
        &shared.config,
        shared.requests.clone(),
        shared.counters.clone(),
    );
    let paused = || {
        let _ = shared.events.send((
            "connections".into(),
            serde_json::json!({ "paused": stats.name(), "session": stats.session }),
        ));
    };
    let mut draining = false;
    loop {
        if !draining {
            // Back-pressure: at its budget of requests or bytes in flight, the connection
            // is not read until replies drain, so a peer that never reads cannot grow the hub.
            tokio::select! {
                biased;
                () = session.room(&paused) => {}
                () = shared.shutdown.cancelled() => {}
            }
        }
        if !draining && shared.shutdown.is_cancelled() {
            // Not ready: say so, then keep reading so every request already sent gets its
            // result or `ShuttingDown`, until the client closes its side or falls silent.
            draining = true;
            let goodbye = Message::Goodbye(Goodbye {
                reason: "hub shutting down".into(),
            });
            sender.send(&goodbye, 0, Deadline::NONE).await;
        }
        let limit = if draining {
            DRAIN_LINGER
        } else {
            shared.config.idle_timeout()
        };
        let read = tokio::select! {
            biased;
            () = shared.shutdown.cancelled(), if !draining => continue,
            read = reader.read_frame_within(limit) => read,
        };
        if draining && shared.past_grace() {
            break;
        }
        let frame = match read {
            Err(Elapsed) if draining => {
                if session.idle() || shared.past_grace() {
                    break;
                }
                continue;
            }
            Err(Elapsed) => {
                let message = format!("idle for {:?}; closing", shared.config.idle_timeout());
                sender.fail(0, ErrorCode::IdleTimeout, message).await;
                break;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => break,
            Ok(Err(ReadError::Protocol(err))) => {
                protocol_error(shared, sender, &err, 0).await;
                break;
            }
            Ok(Err(_)) => break,
        };
        count_in(shared, stats, &frame);
        if let Flow::Close = cmd::dispatch(shared, calls, &session, frame).await {
            break;
        }
    }
    session.end(shared.grace_deadline()).await;
}

fn count_in(shared: &Shared, stats: &ConnectionStats, frame: &Frame) {
    let bytes = (qnllm_protocol::HEADER_BYTES + frame.payload.len()) as u64;
    Counters::add(&shared.counters.frames_in, 1);
    Counters::add(&shared.counters.bytes_in, bytes);
    Counters::add(&stats.frames_in, 1);
    Counters::add(&stats.bytes_in, bytes);
}

async fn worker_loop(
    shared: &Shared,
    accept: &mut Accept<'_>,
    reader: &mut Reader,
    sender: &FrameSender,
    stats: &ConnectionStats,
) {
    let peer = stats.peer();
    let register = match next_step(accept, reader, || {}).await {
        Ok(Some(Step::Register(register))) => register,
        Ok(Some(Step::Hello(_)) | None) => return,
        Err(refusal) => return refuse(shared, sender, refusal).await,
    };
    let engine = match shared.registry.register(&register, sender.clone()) {
        Ok(engine) => engine,
        Err(why) => {
            tracing::warn!(%peer, %why, "registration refused");
            return refuse(shared, sender, accept.unregistered(why)).await;
        }
    };
    Counters::add(&shared.counters.engines_joined, 1);
    // `registered` is queued before the engine becomes routable: the connection's queue is
    // first in, first out, so no request can overtake it.
    let registered = accept.registered(engine.id);
    sender.send(&registered, 0, Deadline::NONE).await;
    shared.registry.route(&engine);

    let timeout = shared.config.heartbeat_timeout();
    let mut check = tokio::time::interval(
        shared
            .config
            .heartbeat_interval()
            .min(timeout / 3)
            .max(Duration::from_millis(10)),
    );
    let mut hub_draining = false;
    // The worker asked to leave (`status: draining`): once it holds nothing, the hub says
    // goodbye, and the worker leaves with nothing to fail over.
    let mut released = false;
    let mut asked_to_drain = false;
    let reason = loop {
        if asked_to_drain && !released && engine.drained() {
            released = true;
            let goodbye = Message::Goodbye(Goodbye {
                reason: "drained: no requests left for this worker".into(),
            });
            sender.send(&goodbye, 0, Deadline::NONE).await;
        }
        tokio::select! {
            () = shared.shutdown.cancelled(), if !hub_draining => {
                hub_draining = true;
                // No new work comes from new requests; what is in flight may still reach
                // the worker, and the goodbye follows when it is done.
                let drain = Message::Drain(Grace { grace_ms: shared.config.grace_ms });
                sender.send(&drain, 0, Deadline::NONE).await;
            }
            () = shared.requests.wait(), if hub_draining => {
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
                    if let Some(reason) = worker_frame(shared, sender, &engine, frame, &mut asked_to_drain).await {
                        break reason;
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

/// Handles one frame from a worker; `Some(reason)` ends the session. Replies go to the
/// request waiting for them; control frames are decoded and checked here, and a frame that
/// does not decode, or that a worker may not send, closes the connection.
async fn worker_frame(
    shared: &Shared,
    sender: &FrameSender,
    engine: &crate::remote::RemoteBackend,
    frame: Frame,
    asked_to_drain: &mut bool,
) -> Option<String> {
    use qnllm_protocol::MessageKind;
    let id = frame.header.request_id;
    match frame.kind {
        MessageKind::Result
        | MessageKind::BatchResult
        | MessageKind::Learned
        | MessageKind::ModelInfo
        | MessageKind::Error
            if id != 0 =>
        {
            // Checked before it is handed on: a reply that does not decode is a broken
            // worker, closed like any other broken frame; its requests then fail with the
            // reason and go to another engine instead of each failing on its own.
            if let Err(err) = qnllm_protocol::Message::decode(frame.kind, &frame.payload) {
                protocol_error(shared, sender, &err, id).await;
                return Some(format!("undecodable {} from the worker: {err}", frame.kind));
            }
            engine.complete(frame);
            return None;
        }
        _ => {}
    }
    let message = match frame.message() {
        Ok(message) => message,
        Err(err) => {
            protocol_error(shared, sender, &err, id).await;
            return Some(format!("undecodable {} from the worker: {err}", frame.kind));
        }
    };
    match message {
        Message::Heartbeat(_) | Message::Pong => {}
        Message::Status(status) => {
            tracing::debug!(engine = %qnllm_router::Backend::name(engine), state = %status.state, "worker status");
            if status.state == "draining" || status.state == "stopped" {
                // The worker waits for the hub's goodbye, sent once it holds nothing.
                *asked_to_drain = true;
                shared.registry.withdraw(engine);
            }
        }
        Message::Ping => {
            sender.send(&Message::Pong, id, Deadline::NONE).await;
        }
        Message::Unregister(_) => shared.registry.withdraw(engine),
        Message::Goodbye(_) => return Some("worker said goodbye".to_string()),
        Message::Error(error) => {
            tracing::warn!(engine = %qnllm_router::Backend::name(engine), code = %error.code, message = %error.message, "worker reported an error");
        }
        other => {
            let message = format!(
                "{} is not something a worker sends to the hub",
                other.kind()
            );
            sender.fail(id, ErrorCode::UnexpectedMessage, message).await;
            return Some(format!("unexpected {} from the worker", other.kind()));
        }
    }
    None
}
