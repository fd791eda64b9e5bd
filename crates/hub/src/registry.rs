//! `Registry`: the live engines that workers offer, kept in step with the router.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use qnllm_protocol::Register;
use qnllm_router::{Backend, DynamicBatcher, Router, SharedBatchPolicy};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::connection::FrameSender;
use crate::remote::{Remote, RemoteEngine};

/// Something subscribers hear about: a topic and a JSON body.
pub(crate) type Event = (String, Value);

/// Live engines by id.
#[derive(Debug)]
pub(crate) struct Registry {
    engines: Mutex<BTreeMap<u64, Remote>>,
    next_id: AtomicU64,
    router: Arc<Router>,
    events: broadcast::Sender<Event>,
    batching: SharedBatchPolicy,
}

impl Registry {
    pub(crate) fn new(
        router: Arc<Router>,
        events: broadcast::Sender<Event>,
        batching: SharedBatchPolicy,
    ) -> Registry {
        Registry {
            engines: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            router,
            events,
            batching,
        }
    }

    fn engines(&self) -> MutexGuard<'_, BTreeMap<u64, Remote>> {
        // Single inserts and removes only: a poisoned map is still consistent.
        self.engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a worker's engine under a name unique on this hub, not yet routable: the
    /// session first writes `registered`, then calls [`Registry::route`], so no request can
    /// reach the worker before its `registered`.
    pub(crate) fn register(&self, register: &Register, sender: FrameSender) -> Remote {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let taken = self
            .router
            .backends()
            .iter()
            .any(|b| b.name() == register.name);
        let name = if taken || register.name.is_empty() {
            format!("{}#{id}", register.name)
        } else {
            register.name.clone()
        };
        let engine = Arc::new(RemoteEngine::new(id, name.clone(), register, sender));
        self.engines().insert(id, engine.clone());
        tracing::info!(engine = %name, id, digest = %register.model_digest, "engine joined");
        engine
    }

    /// Starts routing to a registered engine (after its `registered` was written).
    pub(crate) fn route(&self, engine: &Remote) {
        // Single requests to the worker go through a batcher, which passes them straight on
        // unless dynamic batching is switched on.
        self.router.add(Arc::new(DynamicBatcher::new(
            engine.clone(),
            self.batching.clone(),
        )));
        let _ = self.events.send((
            "engines".into(),
            json!({ "joined": engine.name(), "id": engine.id }),
        ));
    }

    /// Stops routing new requests to an engine that is leaving; what it holds may finish.
    pub(crate) fn withdraw(&self, engine: &RemoteEngine) {
        engine.drain();
        self.router.remove(engine.name());
        tracing::info!(engine = %engine.name(), "engine withdrawn; finishing its in-flight requests");
    }

    /// Stops routing to an engine and fails what it held (the router retries those
    /// elsewhere); returns how many that was. Idempotent.
    pub(crate) fn remove(&self, engine: &RemoteEngine, reason: &str) -> usize {
        if self.engines().remove(&engine.id).is_none() {
            return 0;
        }
        self.router.remove(engine.name());
        let failed = engine.close(reason);
        tracing::info!(engine = %engine.name(), id = engine.id, failed_over = failed, reason, "engine left");
        let _ = self.events.send((
            "engines".into(),
            json!({ "left": engine.name(), "id": engine.id, "reason": reason }),
        ));
        failed
    }

    /// Every live remote engine.
    pub(crate) fn all(&self) -> Vec<Remote> {
        self.engines().values().cloned().collect()
    }

    /// A JSON description of every engine the router uses, local and remote.
    pub(crate) fn describe(&self) -> Value {
        let remotes = self.engines();
        let list: Vec<Value> = self
            .router
            .backends()
            .iter()
            .map(|b| {
                let info = b.describe();
                let remote = remotes.values().find(|r| r.name() == info.name);
                json!({
                    "name": info.name,
                    "kind": info.kind,
                    "input_size": info.input_size,
                    "labels": info.labels,
                    "model_version": info.model_version,
                    "model_digest": info.model_digest,
                    "in_flight": remote.map(|r| r.in_flight()),
                    "served": remote.map(|r| r.served.load(Ordering::Relaxed)),
                    "last_heard_ms": remote.map(|r| r.silence().as_millis() as u64),
                })
            })
            .collect();
        Value::Array(list)
    }
}
