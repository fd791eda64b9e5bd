//! The live dashboard: one page embedded in the binary at `/`, fed by Server-Sent Events
//! from a sampler that snapshots the engine's figures and turns counter changes (ejections,
//! disagreements) and hub events (joins, losses) into the recent-events list.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State as Extract;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::state::State;

const PAGE: &str = include_str!("../assets/dashboard.html");

pub(crate) fn routes() -> Router<Arc<State>> {
    Router::new()
        .route("/", get(page))
        .route("/api/snapshot", get(snapshot))
        .route("/api/stream", get(stream))
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

async fn snapshot(Extract(state): Extract<Arc<State>>) -> Json<Value> {
    Json(build(&state))
}

async fn stream(
    Extract(state): Extract<Arc<State>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = build(&state).to_string();
    let updates = tokio_stream::wrappers::WatchStream::from_changes(state.dashboard.subscribe());
    let closing = state.closing.clone();
    let events = futures::stream::once(async move { first })
        .chain(updates.map(|s: Arc<String>| s.as_str().to_owned()))
        .take_until(closing.cancelled_owned())
        .map(|data| Ok(Event::default().data(data)));
    Sse::new(events).keep_alive(KeepAlive::default())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One snapshot of everything the page shows.
pub(crate) fn build(state: &State) -> Value {
    let m = state.engine.metrics();
    let r = &m.router;
    let t = &state.metrics.totals;
    let engines: Vec<Value> = r
        .engines
        .iter()
        .map(|e| {
            json!({
                "name": e.info.name,
                "kind": e.info.kind,
                "model_version": e.info.model_version,
                "model_digest": e.info.model_digest.short(),
                "state": if e.health.ejected { "ejected" } else { "serving" },
                "requests": e.health.requests,
                "errors": e.health.errors,
                "in_flight": e.health.in_flight,
                "p50_us": e.health.p50_us,
                "p99_us": e.health.p99_us,
                "ewma_us": e.health.ewma_us,
                "ejections": e.health.ejections,
            })
        })
        .collect();
    json!({
        "at_ms": now_ms(),
        "ready": state.ready(),
        "model": state.config.model_name,
        "strategy": r.strategy,
        "mode": r.mode,
        "front": {
            "requests": t.requests.load(Ordering::Relaxed),
            "ok": t.ok.load(Ordering::Relaxed),
            "encodings": t.encodings.load(Ordering::Relaxed),
            "inferences": t.inferences.load(Ordering::Relaxed),
            "executions": t.executions.load(Ordering::Relaxed),
            "latency_us": t.latency_us.load(Ordering::Relaxed),
        },
        "router": {
            "requests": r.requests, "retries": r.retries, "hedges": r.hedges,
            "ejections": r.ejections, "disagreements": r.disagreements,
            "batches": r.batches, "batch_items": r.batch_items,
        },
        "cache": r.cache.clone().unwrap_or_default(),
        "hub": {
            "connections_open": m.hub["connections"]["open"],
            "engines_joined": m.hub["engines_joined"],
            "engines_lost": m.hub["engines_lost"],
            "frames_in": m.hub["frames_in"],
        },
        "engines": engines,
        "events": state.events.snapshot(),
    })
}

/// Turns changes in the router's counters into events, remembering what it saw last.
#[derive(Debug, Default)]
struct Watcher {
    ejections: HashMap<String, u32>,
    disagreements: u64,
}

impl Watcher {
    fn observe(&mut self, state: &State) {
        let r = state.engine.router().metrics();
        for e in &r.engines {
            let before = self
                .ejections
                .insert(e.info.name.clone(), e.health.ejections);
            if e.health.ejections > before.unwrap_or(0) {
                state
                    .events
                    .push("ejected", format!("engine {} ejected", e.info.name));
            }
        }
        if r.disagreements > self.disagreements {
            state.events.push(
                "disagreement",
                format!(
                    "{} redundant answer(s) outvoted",
                    r.disagreements - self.disagreements
                ),
            );
        }
        self.disagreements = r.disagreements;
    }
}

/// Publishes a snapshot every `dashboard_interval` and records hub events as they come.
pub(crate) fn spawn_sampler(state: Arc<State>, closing: CancellationToken) -> JoinHandle<()> {
    let mut hub_events = state.engine.events();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(state.config.dashboard_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut watcher = Watcher::default();
        loop {
            tokio::select! {
                () = closing.cancelled() => return,
                event = hub_events.recv() => match event {
                    Ok((topic, data)) => state.events.push_hub(&topic, &data),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => hub_events = state.engine.events(),
                },
                _ = tick.tick() => {
                    watcher.observe(&state);
                    // Only build a snapshot someone is watching.
                    if state.dashboard.receiver_count() > 0 {
                        let _ = state.dashboard.send(Arc::new(build(&state).to_string()));
                    }
                }
            }
        }
    })
}

/// The channel the sampler publishes on.
pub(crate) fn channel() -> watch::Sender<Arc<String>> {
    watch::Sender::new(Arc::new(String::new()))
}
