//! `broadcast`: deliver a message to every engine, in one order for all.

use qnllm_protocol::{Message, Topic};

use crate::hub::Shared;

/// Queues `topic` on every worker connection. The lock makes concurrent broadcasts reach
/// every worker in the same order, since each connection's queue is first in, first out.
pub(crate) async fn deliver(shared: &Shared, topic: Topic) {
    let _order = shared.broadcast_order.lock().await;
    let message = Message::Broadcast(topic);
    for engine in shared.registry.all() {
        engine.notify(&message).await;
    }
}
