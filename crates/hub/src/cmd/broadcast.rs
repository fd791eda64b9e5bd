//! `broadcast`: deliver a message to every engine, in one order for all.

use std::sync::Mutex;

use qnllm_protocol::{Message, Topic};

use crate::registry::Registry;
use crate::stats::Counters;

/// Queues `topic` on every worker connection without waiting: a worker whose queue is full
/// (stalled, or not reading) misses it and the miss is counted, so one stalled worker never
/// holds up a broadcast, the client that sent it, or anyone else. The lock, held only while
/// queueing (no await), makes concurrent broadcasts reach every worker in the same order,
/// since each connection's queue is first in, first out.
pub(crate) fn apply(registry: &Registry, order: &Mutex<()>, counters: &Counters, topic: Topic) {
    let message = Message::Broadcast(topic);
    let engines = registry.all();
    let _order = order
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for engine in engines {
        if !engine.try_notify(&message) {
            Counters::add(&counters.broadcasts_dropped, 1);
            tracing::warn!(engine = %qnllm_router::Backend::name(&*engine), "broadcast dropped: the worker's queue is full");
        }
    }
}
