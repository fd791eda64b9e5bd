//! The `metrics` topic against a real hub on 127.0.0.1:0: a subscriber gets a snapshot every
//! `metrics_interval_ms`, the same one `metrics_query` answers; others get none.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use qnllm_hub::{Client, HubConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_subscriber_gets_snapshots_and_an_engines_subscriber_gets_none() {
    let (running, stop) = start(HubConfig {
        metrics_interval_ms: 20,
        ..config()
    })
    .await;
    let watcher = Client::connect(&tcp(&running), "watcher", None)
        .await
        .unwrap();
    let other = Client::connect(&tcp(&running), "other", None)
        .await
        .unwrap();
    let mut engines = other.subscribe(&["engines"], WAIT).await.unwrap();
    let mut metrics = watcher.subscribe(&["metrics"], WAIT).await.unwrap();
    let w = worker(tcp(&running), "w", None);
    // Snapshots keep coming, and they follow the hub: the worker shows up in one.
    let mut snapshots = 0;
    loop {
        let event = tokio::time::timeout(WAIT, metrics.recv())
            .await
            .expect("no metrics event")
            .expect("the hub closed the connection");
        assert_eq!(event.topic, "metrics", "{event:?}");
        snapshots += 1;
        let data = &event.data;
        assert!(data["connections"]["open"].as_u64().unwrap() >= 2, "{data}");
        let listed = data["engines"].as_array().unwrap();
        if listed.len() == 1 && snapshots >= 2 {
            assert_eq!(listed[0]["name"], "w", "{data}");
            break;
        }
    }
    // The `engines` subscriber heard the join, and nothing of the snapshots sent meanwhile.
    let event = tokio::time::timeout(WAIT, engines.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.topic, "engines", "{event:?}");
    assert_eq!(event.data["joined"], "w", "{event:?}");
    w.cancel();
    stop.cancel();
}
