//! What the hub does with each message a client sends: one file per verb, each applied
//! against only the part of the hub it needs.

pub(crate) mod broadcast;
pub(crate) mod call;
pub(crate) mod coordinate;
pub(crate) mod metrics;
pub(crate) mod reason;
pub(crate) mod requests;
pub(crate) mod subscribe;

use qnllm_protocol::{Deadline, ErrorCode, Frame, Message};

use crate::shared::Shared;
use crate::stats::Counters;

use self::call::Calls;
use self::requests::ClientSession;

/// Whether the connection goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Handles one frame from a client: decodes it, refuses what the hub cannot take now, and
/// hands each verb its narrow part of `shared`.
pub(crate) async fn dispatch(
    shared: &Shared,
    calls: &dyn Calls,
    session: &ClientSession,
    frame: Frame,
) -> Flow {
    let id = frame.header.request_id;
    let cost = frame.payload.len();
    let sender = &session.sender;
    let message = match frame.message() {
        Ok(message) => message,
        Err(err) => {
            Counters::add(&shared.counters.protocol_errors, 1);
            sender.fail(id, err.code(), err.to_string()).await;
            return Flow::Close;
        }
    };
    let work = matches!(
        message,
        Message::Reason(_)
            | Message::Batch(_)
            | Message::Coordinate(_)
            | Message::Learn(_)
            | Message::Call(_)
            | Message::Subscribe(_)
            | Message::Broadcast(_)
    );
    if work && shared.shutdown.is_cancelled() {
        let message = "the hub is shutting down and takes no new work; retry on another hub";
        sender.fail(id, ErrorCode::ShuttingDown, message).await;
        return Flow::Continue;
    }
    let deadline = match frame.header.deadline.remaining() {
        // A budget that is already spent when the frame is read.
        Some(budget) if budget < MIN_BUDGET && work => {
            Counters::add(&shared.counters.expired_on_arrival, 1);
            let message =
                format!("the deadline of {budget:?} passed before the hub could route the request");
            sender.fail(id, ErrorCode::DeadlineExceeded, message).await;
            return Flow::Continue;
        }
        Some(budget) => budget,
        None => shared.config.default_deadline(),
    };
    let routing = reason::Routing {
        router: &shared.router,
        fair: &shared.fair,
        alarms: &shared.alarms,
    };
    match message {
        Message::Ping => {
            sender.send(&Message::Pong, id, Deadline::NONE).await;
        }
        Message::Reason(encoding) => {
            let no_cache = frame.header.flags.contains(qnllm_protocol::Flags::NO_CACHE);
            let request = reason::Reason {
                id,
                cost,
                encoding: encoding.0,
                deadline,
                no_cache,
            };
            request.apply(routing, session);
        }
        Message::Batch(batch) => {
            let request = reason::Batch {
                id,
                cost,
                batch,
                deadline,
            };
            request.apply(routing, session);
        }
        Message::Cancel => {
            if session.cancel(id) {
                sender
                    .fail(id, ErrorCode::Cancelled, "cancelled by the client")
                    .await;
            }
        }
        Message::Call(call) => call::apply(calls, sender, id, call).await,
        Message::Coordinate(request) => {
            coordinate::coordinate(&shared.coordinator, session, id, request, deadline);
        }
        Message::Learn(request) => {
            coordinate::learn(&shared.coordinator, session, id, request, deadline);
        }
        Message::Subscribe(subscribe) => {
            let events = subscribe::Events {
                events: &shared.events,
                metrics_subscribers: &shared.metrics_subscribers,
            };
            subscribe::apply(events, session, id, subscribe.topics).await;
        }
        Message::Broadcast(topic) => {
            broadcast::apply(
                &shared.registry,
                &shared.broadcast_order,
                &shared.counters,
                topic,
            );
        }
        Message::MetricsQuery => {
            let snapshot = metrics::snapshot(shared);
            sender
                .send(&Message::Metrics(snapshot), id, Deadline::NONE)
                .await;
        }
        Message::CacheQuery | Message::CacheClear => {
            if matches!(message, Message::CacheClear) {
                shared.router.clear_cache();
            }
            let stats = shared.router.metrics().cache.unwrap_or_default();
            let body = qnllm_protocol::CacheStats {
                entries: stats.entries,
                capacity: stats.capacity,
                hits: stats.hits,
                misses: stats.misses,
                evictions: stats.evictions,
            };
            sender
                .send(&Message::CacheStats(body), id, Deadline::NONE)
                .await;
        }
        Message::Goodbye(_) => return Flow::Close,
        other => {
            // `UnexpectedMessage` is a protocol failure (code < 16 closes, docs/protocol.md).
            Counters::add(&shared.counters.protocol_errors, 1);
            let message = format!(
                "{} is not something a client sends to the hub; closing",
                other.kind()
            );
            sender.fail(id, ErrorCode::UnexpectedMessage, message).await;
            return Flow::Close;
        }
    }
    Flow::Continue
}

/// A deadline budget below this on arrival cannot be met by any engine (a hop to a worker
/// and back alone takes longer): it is answered `DeadlineExceeded` at once, never routed.
const MIN_BUDGET: std::time::Duration = std::time::Duration::from_micros(20);
