//! Counters: hub-wide totals, and per-connection figures for the open connections.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

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
    /// The hub's own `DeadlineExceeded` answers after it took a request: when they came.
    pub(crate) deadlines: Deadlines,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The requests whose deadline passed in the hub, and how promptly the hub said so, on its
/// own clock: from the deadline to the moment it hands `DeadlineExceeded` to the client's
/// writer. Past that the frame waits on the hub's writer, the socket and the client, which
/// a client sees as more lateness; this is the part the hub answers for.
#[derive(Debug)]
pub(crate) struct Deadlines {
    /// Answered `DeadlineExceeded` at the deadline by the hub's alarm (the request waited for
    /// its turn at the router, or for an engine) or by the router.
    exceeded: AtomicU64,
    /// An engine's answer came after the deadline and was not forwarded.
    held_back: AtomicU64,
    /// Lateness of both kinds of answer, in µs (1 µs to an hour, 3 significant digits).
    lateness_us: Mutex<Histogram<u64>>,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            exceeded: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
            lateness_us: Mutex::new(qnllm_router::latency_histogram()),
        }
    }
}

impl Deadlines {
    /// Counts one `DeadlineExceeded` the hub gave `late` after the deadline; `held_back`:
    /// because the engine's answer came after it.
    pub(crate) fn record(&self, late: Duration, held_back: bool) {
        let counter = if held_back {
            &self.held_back
        } else {
            &self.exceeded
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(late.as_micros()).unwrap_or(u64::MAX).max(1);
        self.lateness_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .saturating_record(micros);
    }

    /// `{exceeded, held_back, lateness_us: {count, p50, p99, max}}`, `lateness_us` null until
    /// the first.
    pub(crate) fn describe(&self) -> Value {
        let h = self
            .lateness_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let lateness = (!h.is_empty()).then(|| {
            json!({
                "count": h.len(),
                "p50": h.value_at_quantile(0.5),
                "p99": h.value_at_quantile(0.99),
                "max": h.max(),
            })
        });
        json!({
            "exceeded": self.exceeded.load(Ordering::Relaxed),
            "held_back": self.held_back.load(Ordering::Relaxed),
            "lateness_us": lateness,
        })
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
