//! `subscribe`: forward hub events on the chosen topics to this client until it leaves.

use std::sync::Arc;

use std::sync::atomic::Ordering;

use qnllm_protocol::{Deadline, ErrorCode, Event, Message};
use serde_json::json;

use crate::cmd::ClientSession;
use crate::hub::Shared;
use crate::session::fail;

/// Subscribes; `*` means every topic. Confirms with an event on topic `subscribed`.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    session: &ClientSession,
    id: u64,
    topics: Vec<String>,
) {
    let held = session.subscriptions.fetch_add(1, Ordering::AcqRel);
    if held >= session.max_subscriptions {
        session.subscriptions.fetch_sub(1, Ordering::AcqRel);
        let message = format!(
            "this connection already holds {held} subscriptions, the most allowed; \
             subscribe once with several topics (or `*`)"
        );
        fail(&session.sender, id, ErrorCode::Overloaded, message).await;
        return;
    }
    let mut events = shared.events.subscribe();
    let confirm = Event {
        topic: "subscribed".into(),
        data: json!(topics),
    };
    session
        .sender
        .send(&Message::Event(confirm), id, Deadline::NONE)
        .await;
    let (sender, ended) = (session.sender.clone(), session.ended.clone());
    let metrics = topics.iter().any(|t| t == "*" || t == "metrics").then(|| {
        shared.metrics_subscribers.fetch_add(1, Ordering::Relaxed);
        MetricsSubscriber(shared.clone())
    });
    tokio::spawn(async move {
        let _metrics = metrics; // counted out however the forwarding ends
        loop {
            let (topic, data) = tokio::select! {
                () = ended.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => event,
                    // A slow subscriber misses events rather than slowing the hub.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
            };
            if topics.iter().any(|t| t == "*" || *t == topic)
                && !sender
                    .send(&Message::Event(Event { topic, data }), id, Deadline::NONE)
                    .await
            {
                return;
            }
        }
    });
}

/// One subscription that takes the `metrics` topic, counted while it lasts so the hub makes
/// snapshots only for someone.
struct MetricsSubscriber(Arc<Shared>);

impl Drop for MetricsSubscriber {
    fn drop(&mut self) {
        self.0.metrics_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}
