//! `metrics_query`: a JSON snapshot of engines, connections and counters.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::shared::Shared;

pub(crate) fn snapshot(shared: &Shared) -> Value {
    let c = &shared.counters;
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    let (in_router, capacity, waiting) = shared.fair.load();
    json!({
        "engines": shared.registry.describe(),
        "connections": {
            "open": shared.open_connections(),
            "total": load(&c.connections_total),
            "refused": load(&c.refused),
            "max": shared.config.max_connections,
            "list": shared.open.describe(),
            "handshaking": shared.handshakes.len(),
            "max_handshakes": shared.config.max_handshakes,
            "handshakes_evicted": load(&c.handshakes_evicted),
        },
        "frames_in": load(&c.frames_in),
        "bytes_in": load(&c.bytes_in),
        "requests": load(&c.requests),
        "errors": load(&c.errors),
        "protocol_errors": load(&c.protocol_errors),
        "engines_joined": load(&c.engines_joined),
        "engines_lost": load(&c.engines_lost),
        "failed_over": load(&c.failed_over),
        "broadcasts_dropped": load(&c.broadcasts_dropped),
        "expired_on_arrival": load(&c.expired_on_arrival),
        "deadlines": c.deadlines.describe(),
        "requests_in_flight": shared.requests.len(),
        "routed": {
            "in_router": in_router,
            "capacity": capacity,
            "waiting": waiting,
        },
        "router": shared.router.metrics(),
    })
}
