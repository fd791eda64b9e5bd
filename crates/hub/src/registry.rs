//! `Registry`: the live engines that workers offer, kept in step with the router (serving
//! engines) and the coordinator (teachers).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use qnllm_protocol::{EngineRole, Register};
use qnllm_router::{
    Activity, Admission, Backend, Coordinator, DynamicBatcher, EngineId, Pool, Router,
    SharedBatchPolicy,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::connection::FrameSender;
use crate::fair::Fair;
use crate::remote::{Remote, RemoteBackend};

/// Something subscribers hear about: a topic and a JSON body.
pub(crate) type Event = (String, Value);

/// A worker's engine, its role, and its id in the router once routed (a teacher never is).
#[derive(Debug, Clone)]
struct Entry {
    remote: Remote,
    role: EngineRole,
    route: Option<EngineId>,
}

/// Live engines by id.
#[derive(Debug)]
pub(crate) struct Registry {
    engines: Mutex<BTreeMap<u64, Entry>>,
    next_id: AtomicU64,
    router: Arc<Router>,
    /// Where teacher workers go: asked by `coordinate`, never in the router's rotation.
    coordinator: Arc<Coordinator>,
    events: broadcast::Sender<Event>,
    batching: SharedBatchPolicy,
    fair: Arc<Fair>,
    /// `max_routed_requests` as configured; 0 follows the engines.
    routed: usize,
}

/// Requests in the router at once for an engine that names no `max_in_flight` (local ones).
const UNDECLARED: usize = 64;
/// Fewest requests in the router at once when it follows the engines: engines added to the
/// router directly, which the registry does not see, still get work in parallel.
pub(crate) const MIN_ROUTED: usize = 64;

impl Registry {
    pub(crate) fn new(
        router: Arc<Router>,
        coordinator: Arc<Coordinator>,
        events: broadcast::Sender<Event>,
        batching: SharedBatchPolicy,
        fair: Arc<Fair>,
        routed: usize,
    ) -> Registry {
        let registry = Registry {
            engines: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            router,
            coordinator,
            events,
            batching,
            fair,
            routed,
        };
        registry.resize();
        registry
    }

    /// Sets how many client requests the router takes at once: as configured, or what the
    /// engines take at once (called whenever one joins or leaves).
    pub(crate) fn resize(&self) {
        if self.routed > 0 {
            self.fair.set_capacity(self.routed);
            return;
        }
        let remote: usize = self
            .engines()
            .values()
            .filter(|e| e.route.is_some())
            .map(|e| e.remote.max_in_flight().map_or(UNDECLARED, |n| n as usize))
            .sum();
        let local = self
            .router
            .engines()
            .iter()
            .filter(|(_, _, info)| info.kind == "local")
            .count();
        self.fair
            .set_capacity((remote + local * UNDECLARED).max(MIN_ROUTED));
    }

    fn engines(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        // Single inserts and removes only: a poisoned map is still consistent.
        self.engines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a worker's engine under a name unique on this hub, not yet routable: the
    /// session first writes `registered`, then calls [`Registry::route`], so no request can
    /// reach the worker before its `registered`. The name is chosen and the engine added
    /// under one lock, so two workers registering one name at once get two names.
    ///
    /// # Errors
    ///
    /// What is wrong with the registration (e.g. a malformed model digest).
    pub(crate) fn register(
        &self,
        register: &Register,
        sender: FrameSender,
    ) -> Result<Remote, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut engines = self.engines();
        let taken = register.name.is_empty()
            || engines.values().any(|e| e.remote.name() == register.name)
            || self
                .router
                .engines()
                .iter()
                .any(|(_, _, info)| info.name == register.name)
            || self.coordinator.has_teacher(&register.name);
        let name = if taken {
            format!("{}#{id}", register.name)
        } else {
            register.name.clone()
        };
        let engine = Arc::new(RemoteBackend::new(id, name, register, sender)?);
        engines.insert(
            id,
            Entry {
                remote: engine.clone(),
                role: register.role,
                route: None,
            },
        );
        Ok(engine)
    }

    /// Hands a registered engine to the router (after its `registered` was written), which
    /// routes to it if it serves the hub's model lineage and keeps it in its foreign pool
    /// (listed, never routed) if not. A teacher goes to the coordinator instead: it is
    /// asked by every `coordinate` from now on, and never routed to (`None`).
    pub(crate) fn route(&self, engine: &Remote) -> Option<Admission> {
        let mut engines = self.engines();
        // The worker may have left between `registered` and now.
        let entry = engines.get_mut(&engine.id)?;
        if entry.role == EngineRole::Teacher {
            // Added under the registry's lock, so a `remove` that follows finds it there.
            self.coordinator.add_teacher(engine.clone());
            drop(engines);
            tracing::info!(engine = %engine.name(), id = engine.id, digest = %engine.model_digest(), "teacher joined");
            let _ = self.events.send((
                "engines".into(),
                json!({ "joined": engine.name(), "id": engine.id, "pool": "teacher" }),
            ));
            return None;
        }
        // Single requests to the worker go through a batcher, which passes them straight on
        // unless dynamic batching is switched on.
        let admission = self.router.add(Arc::new(DynamicBatcher::new(
            engine.clone(),
            self.batching.clone(),
        )));
        entry.route = Some(admission.id);
        drop(engines);
        self.resize();
        let (name, id) = (engine.name(), engine.id);
        let pool = pool_name(admission.pool);
        if admission.pool == Pool::Foreign {
            tracing::warn!(engine = %name, id, digest = %engine.model_digest(), serving = %admission.lineage.to_hex(),
                "engine joined with another model: kept in the foreign pool, never routed to");
        } else {
            tracing::info!(engine = %name, id, digest = %engine.model_digest(), pool, "engine joined");
        }
        let _ = self.events.send((
            "engines".into(),
            json!({ "joined": name, "id": id, "pool": pool }),
        ));
        Some(admission)
    }

    fn route_of(&self, engine: &RemoteBackend) -> Option<EngineId> {
        self.engines().get(&engine.id).and_then(|e| e.route)
    }

    fn role_of(&self, engine: &RemoteBackend) -> Option<EngineRole> {
        self.engines().get(&engine.id).map(|e| e.role)
    }

    /// Stops routing new requests to an engine that is leaving; what it holds may finish.
    pub(crate) fn withdraw(&self, engine: &RemoteBackend) {
        engine.drain();
        if let Some(route) = self.route_of(engine) {
            self.router.remove(route);
        }
        if let Some(entry) = self.engines().get_mut(&engine.id) {
            entry.route = None;
        }
        self.resize();
        if self.role_of(engine) == Some(EngineRole::Teacher) {
            self.coordinator.remove_teacher(engine.name());
        }
        tracing::info!(engine = %engine.name(), "engine withdrawn; finishing its in-flight requests");
    }

    /// Stops routing to an engine and fails what it held (the router retries those
    /// elsewhere); returns how many that was. Idempotent.
    pub(crate) fn remove(&self, engine: &RemoteBackend, reason: &str) -> usize {
        let Some(entry) = self.engines().remove(&engine.id) else {
            return 0;
        };
        if let Some(route) = entry.route {
            self.router.remove(route);
        }
        self.resize();
        if entry.role == EngineRole::Teacher {
            self.coordinator.remove_teacher(engine.name());
        }
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
        self.engines().values().map(|e| e.remote.clone()).collect()
    }

    /// A JSON description of every engine the router holds, local and remote, with the
    /// pool each is in (serving, lagging, foreign).
    pub(crate) fn describe(&self) -> Value {
        let remotes: BTreeMap<EngineId, Remote> = self
            .engines()
            .values()
            .filter_map(|e| Some((e.route?, e.remote.clone())))
            .collect();
        let metrics = self.router.metrics().engines;
        let transports: BTreeMap<EngineId, &str> =
            metrics.iter().map(|e| (e.id, e.transport)).collect();
        // Engines this hub holds no connection to (on NATS) count their own.
        let activity: BTreeMap<EngineId, Activity> = (metrics.iter())
            .filter_map(|e| Some((e.id, e.activity?)))
            .collect();
        let list: Vec<Value> = self
            .router
            .engines()
            .into_iter()
            .map(|(route, pool, info)| {
                let remote = remotes.get(&route);
                let counted = activity.get(&route);
                json!({
                    "name": info.name,
                    "kind": info.kind,
                    "transport": transports.get(&route),
                    "pool": pool_name(pool),
                    "input_size": info.input_size,
                    "labels": info.labels,
                    "model_version": info.model_version,
                    "model_digest": info.model_digest,
                    "in_flight": remote.map(|r| r.pending_count() as u64).or(counted.map(|a| a.in_flight)),
                    "served": remote.map(|r| r.served.load(Ordering::Relaxed)).or(counted.map(|a| a.served)),
                    "last_heard_ms": remote.map(|r| r.silence().as_millis() as u64).or(counted.map(|a| a.last_heard_ms)),
                })
            })
            .collect();
        let teachers: Vec<Remote> = self
            .engines()
            .values()
            .filter(|e| e.role == EngineRole::Teacher)
            .map(|e| e.remote.clone())
            .collect();
        let teachers = teachers.into_iter().map(|remote| {
            let info = remote.describe();
            json!({
                "name": info.name,
                "kind": info.kind,
                "transport": remote.transport(),
                "pool": "teacher",
                "input_size": info.input_size,
                "labels": info.labels,
                "model_version": info.model_version,
                "model_digest": info.model_digest,
                "in_flight": remote.pending_count(),
                "served": remote.served.load(Ordering::Relaxed),
                "last_heard_ms": remote.silence().as_millis() as u64,
            })
        });
        Value::Array(list.into_iter().chain(teachers).collect())
    }
}

fn pool_name(pool: Pool) -> &'static str {
    match pool {
        Pool::Serving => "serving",
        Pool::Lagging => "lagging",
        Pool::Foreign => "foreign",
    }
}
