//! `subscribe`: forward hub events on the chosen topics to this client until it leaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use qnllm_protocol::{Deadline, ErrorCode, Event, Message};
use serde_json::json;
use tokio::sync::broadcast;

use crate::cmd::requests::ClientSession;
use crate::registry;

/// What a subscription needs of the hub: its events, and the count of those who want
/// metrics snapshots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Events<'a> {
    pub(crate) events: &'a broadcast::Sender<registry::Event>,
    pub(crate) metrics_subscribers: &'a Arc<AtomicUsize>,
}

/// Subscribes; `*` means every topic. Confirms with an event on topic `subscribed`.
pub(crate) async fn apply(hub: Events<'_>, session: &ClientSession, id: u64, topics: Vec<String>) {
    let held = session.subscriptions.fetch_add(1, Ordering::AcqRel);
    if held >= session.max_subscriptions {
        session.subscriptions.fetch_sub(1, Ordering::AcqRel);
        let message = format!(
            "this connection already holds {held} subscriptions, the most allowed; \
             subscribe once with several topics (or `*`)"
        );
        session
            .sender
            .fail(id, ErrorCode::Overloaded, message)
            .await;
        return;
    }
    let mut events = hub.events.subscribe();
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
        hub.metrics_subscribers.fetch_add(1, Ordering::Relaxed);
        MetricsSubscriber(hub.metrics_subscribers.clone())
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
struct MetricsSubscriber(Arc<AtomicUsize>);

impl Drop for MetricsSubscriber {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
