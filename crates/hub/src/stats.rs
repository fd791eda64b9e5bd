//! Counters: hub-wide totals, and per-connection figures for the open connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// Counters over all connections.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections_total: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) engines_joined: AtomicU64,
    pub(crate) engines_lost: AtomicU64,
    /// Requests that were waiting on an engine when it went, and were failed over.
    pub(crate) failed_over: AtomicU64,
    /// Connections closed in their handshake to make room in the handshake budget.
    pub(crate) handshakes_evicted: AtomicU64,
    /// Broadcasts a worker missed because its queue was full.
    pub(crate) broadcasts_dropped: AtomicU64,
    /// Requests answered `DeadlineExceeded` as they arrived, their deadline already past.
    pub(crate) expired_on_arrival: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One open connection's figures, counted from the end of its handshake.
#[derive(Debug)]
pub(crate) struct ConnectionStats {
    pub(crate) session: u64,
    peer: String,
    role: String,
    name: String,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bytes_in: AtomicU64,
    /// Requests from this client not answered yet.
    pub(crate) in_flight: AtomicU64,
    /// The connection is at its budget of requests or bytes in flight and is not read
    /// until replies drain.
    pub(crate) paused: std::sync::atomic::AtomicBool,
}

impl ConnectionStats {
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn describe(&self) -> Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "session": self.session,
            "peer": self.peer,
            "role": self.role,
            "name": self.name,
            "frames_in": load(&self.frames_in),
            "bytes_in": load(&self.bytes_in),
            "in_flight": load(&self.in_flight),
            "paused": self.paused.load(Ordering::Relaxed),
        })
    }
}

/// The open connections, by session id.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    map: Mutex<BTreeMap<u64, Arc<ConnectionStats>>>,
}

impl Connections {
    /// Adds a connection that finished its handshake; it is listed until the guard drops.
    pub(crate) fn open(
        &self,
        session: u64,
        peer: &str,
        role: &str,
        name: &str,
    ) -> OpenConnection<'_> {
        let stats = Arc::new(ConnectionStats {
            session,
            peer: peer.into(),
            role: role.into(),
            name: name.into(),
            frames_in: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            paused: std::sync::atomic::AtomicBool::new(false),
        });
        self.lock().insert(session, stats.clone());
        OpenConnection { list: self, stats }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ConnectionStats>>> {
        // Single inserts and removes only: a poisoned map is still consistent.
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every open connection's figures.
    pub(crate) fn describe(&self) -> Value {
        Value::Array(self.lock().values().map(|c| c.describe()).collect())
    }
}

/// Keeps a connection listed while it lives.
#[derive(Debug)]
pub(crate) struct OpenConnection<'a> {
    list: &'a Connections,
    pub(crate) stats: Arc<ConnectionStats>,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.list.lock().remove(&self.stats.session);
    }
}
