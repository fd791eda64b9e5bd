//! `Shared`: the state every session and verb of one hub reads, and nothing that acts on it.

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use qnllm_router::{Coordinator, Router, SharedBatchPolicy};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alarm::Alarms;
use crate::config::HubConfig;
use crate::fair::Fair;
use crate::handshakes::Handshakes;
use crate::registry::{Event, Registry};
use crate::stats::{Connections, Counters};

/// Everything the sessions share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: HubConfig,
    pub(crate) router: Arc<Router>,
    pub(crate) registry: Registry,
    /// The router's request slots, shared among client connections in turn.
    pub(crate) fair: Arc<Fair>,
    /// Answers client requests at their deadlines.
    pub(crate) alarms: Alarms,
    /// Dynamic batching toward workers; `None` is off.
    pub(crate) batching: SharedBatchPolicy,
    /// Teachers for `coordinate`; the engines in rotation are the students. The one
    /// coordinator of the system: `UnifiedEngine` reaches it through `Hub::coordinator`.
    pub(crate) coordinator: Arc<Coordinator>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Subscriptions that take the `metrics` topic (by name or `*`): snapshots are made
    /// only while there is one.
    pub(crate) metrics_subscribers: Arc<AtomicUsize>,
    pub(crate) counters: Arc<Counters>,
    /// Per-connection counters of the open connections.
    pub(crate) open: Connections,
    pub(crate) connections: Arc<Semaphore>,
    /// Connections still in their handshake, with their own budget.
    pub(crate) handshakes: Handshakes,
    pub(crate) next_session: AtomicU64,
    /// Held (never across an await) while a broadcast is queued on every worker, so every
    /// engine sees broadcasts in one order.
    pub(crate) broadcast_order: std::sync::Mutex<()>,
    pub(crate) shutdown: CancellationToken,
    /// When the grace period of a shutdown ends; set as the shutdown starts.
    pub(crate) grace_end: std::sync::OnceLock<tokio::time::Instant>,
    /// Request tasks, waited for (within the grace period) at shutdown.
    pub(crate) requests: TaskTracker,
    /// Connection tasks, waited for at shutdown so goodbyes are flushed before exit.
    pub(crate) sessions: TaskTracker,
}

impl Shared {
    pub(crate) fn open_connections(&self) -> usize {
        self.config.max_connections - self.connections.available_permits()
    }

    /// When work still in flight is cut: the end of the shutdown's grace period, or a grace
    /// period from now when the hub is not shutting down.
    pub(crate) fn grace_deadline(&self) -> tokio::time::Instant {
        self.grace_end
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + self.config.grace())
    }

    /// Whether a shutdown's grace period is over.
    pub(crate) fn past_grace(&self) -> bool {
        self.grace_end
            .get()
            .is_some_and(|end| tokio::time::Instant::now() >= *end)
    }
}
