//! `Hub`: builds the shared state, holds the named handlers, opens the listeners, and
//! starts and stops the whole server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};

use qnllm_router::{BatchPolicy, LocalBackend, Router, SharedBatchPolicy};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd::call::Calls;
use crate::config::{ConfigError, HubConfig};
use crate::handshakes::Handshakes;
use crate::registry::Registry;
use crate::session;
use crate::shared::Shared;
use crate::stats::{Connections, Counters};
use crate::stream::Stream;

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A teacher model could not be built or loaded.
    #[error("teacher model: {0}")]
    Teacher(#[from] qnllm_engine::EngineError),
    /// The async runtime could not be built.
    #[error("cannot build the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The thread that answers requests at their deadlines could not be started.
    #[error("cannot start the deadline thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A listener could not be opened.
    #[error("cannot listen on {what}: {source}")]
    Listen {
        /// The address or path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How long past the grace period sessions get to send their last errors and goodbyes.
const SESSION_CLOSE: std::time::Duration = std::time::Duration::from_secs(2);

/// A handler that clients reach with `call`: argument bytes in, reply bytes or an error
/// message out.
pub type Handler = Arc<dyn Fn(&Hub, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// The handlers registered on a hub.
struct Handlers {
    map: RwLock<HashMap<String, Handler>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("names", &self.names())
            .finish()
    }
}

impl Handlers {
    /// `echo` (returns its argument) and `engines` (the engine list as JSON).
    fn with_builtins() -> Handlers {
        let handlers = Handlers {
            map: RwLock::new(HashMap::new()),
        };
        handlers.register("echo".into(), Arc::new(|_, args| Ok(args.to_vec())));
        handlers.register(
            "engines".into(),
            Arc::new(|hub, _| Ok(hub.shared.registry.describe().to_string().into_bytes())),
        );
        handlers
    }

    fn register(&self, name: String, handler: Handler) {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name, handler);
    }

    fn get(&self, name: &str) -> Option<Handler> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// A hub, configured but not yet listening.
#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
    handlers: Arc<Handlers>,
}

/// What a client's `call` runs: the handler, given this hub.
impl Calls for Hub {
    fn call(&self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, String>> {
        let handler = self.handlers.get(name)?;
        Some(handler(self, args))
    }

    fn names(&self) -> Vec<String> {
        self.handlers.names()
    }
}

impl Hub {
    /// A hub with `config`, not yet listening.
    ///
    /// # Errors
    ///
    /// [`HubError::Config`] when `config` fails [`HubConfig::validate`].
    pub fn new(config: HubConfig) -> Result<Hub, HubError> {
        config.validate()?;
        let router = Arc::new(Router::with_config(config.router_config()?));
        let (events, _) = broadcast::channel(1_024);
        let batching: SharedBatchPolicy = Arc::new(arc_swap::ArcSwapOption::from(
            config.batch_policy().map(Arc::new),
        ));
        let teachers = crate::cmd::coordinate::teachers(&config.teachers)?;
        let fair = crate::fair::Fair::new(crate::registry::MIN_ROUTED);
        let coordinator = Arc::new(qnllm_router::Coordinator::over_rotation(
            teachers,
            router.clone(),
        ));
        coordinator.set_policy(config.consensus_policy()?);
        let shared = Shared {
            registry: Registry::new(
                router.clone(),
                coordinator.clone(),
                events.clone(),
                batching.clone(),
                fair.clone(),
                config.max_routed_requests,
            ),
            coordinator,
            fair,
            alarms: crate::alarm::Alarms::start().map_err(HubError::Thread)?,
            batching,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            handshakes: Handshakes::new(config.max_handshakes, config.handshake_floor()),
            config,
            router,
            events,
            metrics_subscribers: Arc::new(AtomicUsize::new(0)),
            counters: Arc::new(Counters::default()),
            open: Connections::default(),
            next_session: AtomicU64::new(1),
            broadcast_order: std::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            grace_end: std::sync::OnceLock::new(),
            requests: TaskTracker::new(),
            sessions: TaskTracker::new(),
        };
        Ok(Hub {
            shared: Arc::new(shared),
            handlers: Arc::new(Handlers::with_builtins()),
        })
    }

    /// The router every client request goes through.
    pub fn router(&self) -> &Arc<Router> {
        &self.shared.router
    }

    /// The coordinator of teachers and students that clients' `coordinate` and `learn`
    /// use; in-process callers share it, so every update is in one order.
    pub fn coordinator(&self) -> &Arc<qnllm_router::Coordinator> {
        &self.shared.coordinator
    }

    /// Adds an in-process engine.
    pub fn add_local(&self, backend: LocalBackend) {
        tracing::info!(engine = %qnllm_router::Backend::name(&backend), "local engine added");
        self.shared.router.add(Arc::new(backend));
        self.shared.registry.resize();
    }

    /// Switches dynamic batching toward workers on (`Some`) or off, at once.
    pub fn set_dynamic_batching(&self, policy: Option<BatchPolicy>) {
        self.shared.batching.store(policy.map(Arc::new));
    }

    /// Registers a named handler that clients reach with `call`.
    pub fn register_handler(&self, name: impl Into<String>, handler: Handler) {
        self.handlers.register(name.into(), handler);
    }

    /// Hub events as they happen (topic `engines`: joined, left); a reader that falls
    /// behind misses the oldest rather than slowing the hub.
    pub fn events(&self) -> broadcast::Receiver<(String, serde_json::Value)> {
        self.shared.events.subscribe()
    }

    /// A JSON snapshot of engines, connections and counters.
    pub fn metrics(&self) -> serde_json::Value {
        crate::cmd::metrics::snapshot(&self.shared)
    }

    /// Runs one session over an already-connected stream, exactly as a listener does for
    /// each connection it accepts, and returns when the session ends. For the fuzz target
    /// (`fuzz/fuzz_targets/session_sequence.rs`) and for transports the hub does not open
    /// itself.
    #[doc(hidden)]
    pub async fn serve_connection(&self, io: Stream, peer: &str) {
        Counters::add(&self.shared.counters.connections_total, 1);
        session::run(
            self.shared.clone(),
            Arc::new(self.clone()),
            io,
            peer.to_string(),
        )
        .await;
    }

    /// Opens the listeners and serves until `shutdown` is cancelled; then stops accepting,
    /// lets in-flight requests finish within the grace period, says goodbye and returns.
    ///
    /// # Errors
    ///
    /// [`HubError::Listen`] when an address or path cannot be bound.
    pub async fn start(self, shutdown: CancellationToken) -> Result<RunningHub, HubError> {
        let shared = self.shared.clone();
        let mut tcp_addr = None;
        let mut unix_path = None;
        let accepting = TaskTracker::new();
        if let Some(listen) = &shared.config.listen {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|source| HubError::Listen {
                    what: listen.clone(),
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| HubError::Listen {
                what: listen.clone(),
                source,
            })?;
            tracing::info!(%addr, "listening on tcp");
            tcp_addr = Some(addr);
            let listener = Arc::new(listener);
            accepting.spawn(accept_loop(self.clone(), move || {
                let listener = listener.clone();
                async move {
                    let (stream, peer) = listener.accept().await?;
                    let _ = stream.set_nodelay(true);
                    Ok((Stream::Tcp(stream), peer.to_string()))
                }
            }));
        }
        #[cfg(unix)]
        if let Some(path) = &shared.config.unix {
            let what = path.display().to_string();
            // A stale socket file from a previous run would make bind fail.
            if path.exists() {
                let _ = std::fs::remove_file(path);
            }
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| HubError::Listen {
                    what: what.clone(),
                    source,
                })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| HubError::Listen {
                    what: what.clone(),
                    source,
                },
            )?;
            tracing::info!(path = %what, "listening on unix socket");
            unix_path = Some(path.clone());
            let listener = Arc::new(listener);
            accepting.spawn(accept_loop(self.clone(), move || {
                let listener = listener.clone();
                async move {
                    let (stream, _) = listener.accept().await?;
                    Ok((Stream::Unix(stream), "unix".to_string()))
                }
            }));
        }
        accepting.close();
        tokio::spawn(publish_metrics(
            Arc::downgrade(&shared),
            shared.shutdown.clone(),
        ));
        let inner = shared.shutdown.clone();
        let done = tokio::spawn(async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            let end = *shared
                .grace_end
                .get_or_init(|| tokio::time::Instant::now() + shared.config.grace());
            inner.cancel();
            accepting.wait().await;
            shared.requests.close();
            shared.sessions.close();
            if tokio::time::timeout_at(end, shared.requests.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    requests = shared.requests.len(),
                    "grace period over; cutting what is still in flight"
                );
            }
            // Sessions answer what was cut with `ShuttingDown` and flush; each flush is
            // bounded, so this wait is too.
            if tokio::time::timeout_at(end + SESSION_CLOSE, shared.sessions.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    connections = shared.sessions.len(),
                    "connections still open after the grace period; closing them"
                );
            }
            if let Some(path) = &shared.config.unix {
                let _ = std::fs::remove_file(path);
            }
            tracing::info!("hub stopped");
        });
        Ok(RunningHub {
            tcp: tcp_addr,
            unix: unix_path,
            hub: self,
            done,
        })
    }
}

/// Publishes a metrics snapshot on the `metrics` topic every `metrics_interval_ms` while
/// anyone subscribes to it, until the hub stops (or is dropped: the loop holds no strong
/// reference to it).
async fn publish_metrics(shared: std::sync::Weak<Shared>, shutdown: CancellationToken) {
    let Some(interval) = shared.upgrade().map(|s| s.config.metrics_interval()) else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared
            .metrics_subscribers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            let snapshot = crate::cmd::metrics::snapshot(&shared);
            let _ = shared.events.send(("metrics".into(), snapshot));
        }
    }
}

/// Accepts connections until shutdown; each becomes a session.
async fn accept_loop<F, Fut>(hub: Hub, mut accept: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(Stream, String)>>,
{
    let shared = hub.shared.clone();
    let calls: Arc<dyn Calls> = Arc::new(hub);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = accept() => match accepted {
                Ok((io, peer)) => {
                    Counters::add(&shared.counters.connections_total, 1);
                    shared
                        .sessions
                        .spawn(session::run(shared.clone(), calls.clone(), io, peer));
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// A hub that is listening.
#[derive(Debug)]
pub struct RunningHub {
    /// The TCP address bound (useful with port 0).
    pub tcp: Option<SocketAddr>,
    /// The Unix socket path bound.
    pub unix: Option<PathBuf>,
    hub: Hub,
    done: tokio::task::JoinHandle<()>,
}

impl RunningHub {
    /// The hub, for handlers, local engines and metrics.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Waits until shutdown has finished.
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}
