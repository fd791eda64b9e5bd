//! `Health`: what the router has seen of one engine: latency (HDR histogram and a
//! peak-EWMA), load, failures in a row, and ejection with probation. An ejection lasts a time, and probation is a
//! time after it, whatever the number of requests that failed meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

/// Failures in a row that eject an engine.
pub(crate) const EJECT_AFTER_FAILURES: u32 = 5;
/// First ejection period; it doubles with each ejection of the same engine.
const EJECT_BASE: Duration = Duration::from_secs(1);
/// Longest ejection period.
const EJECT_MAX: Duration = Duration::from_secs(60);
/// Time constant of the latency EWMA.
const EWMA_DECAY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Inner {
    latency_us: Histogram<u64>,
    ewma_ns: f64,
    ewma_at: Instant,
    failures_in_a_row: u32,
    /// When the last ejection began: a try that started before it belongs to the failure
    /// episode that caused it, so its failure is not counted again.
    ejected_at: Option<Instant>,
    /// After an ejection ends the engine is on probation until this instant: an ejection
    /// then lasts twice as long as the last; once it passes, the period starts over.
    probation_until: Option<Instant>,
    /// Doublings of the next ejection period.
    level: u32,
    ejections: u32,
}

/// Per-engine observations.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) picks: AtomicU64,
    /// Read by every request without a lock: nanoseconds after `born` until which the
    /// engine is ejected (0: never ejected).
    ejected_until_ns: AtomicU64,
    born: Instant,
    inner: Mutex<Inner>,
}

/// A snapshot of one engine's health, as the metrics report it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthSnapshot {
    /// Requests sent to it.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Requests now in flight.
    pub in_flight: u64,
    /// Times a strategy picked it first.
    pub picks: u64,
    /// Latency quantiles in microseconds.
    pub p50_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
    /// Peak-EWMA latency in microseconds.
    pub ewma_us: f64,
    /// Whether it is ejected now.
    pub ejected: bool,
    /// Times it has been ejected.
    pub ejections: u32,
}

/// A histogram of durations in µs, 1 µs to 1 h at 3 significant digits (a few tens of KiB):
/// the router's per-engine latencies, and the hub's deadline lateness.
pub fn latency_histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 3_600_000_000, 3)
        .expect("constant bounds: low ≥ 1, high ≥ 2 · low, 3 digits")
}

impl Health {
    pub(crate) fn new() -> Health {
        let now = Instant::now();
        Health {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            picks: AtomicU64::new(0),
            ejected_until_ns: AtomicU64::new(0),
            born: now,
            inner: Mutex::new(Inner {
                latency_us: latency_histogram(),
                ewma_ns: 0.0,
                ewma_at: now,
                failures_in_a_row: 0,
                ejected_at: None,
                probation_until: None,
                level: 0,
                ejections: 0,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves `Inner` consistent, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn since_born(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records a success that took `latency`.
    pub(crate) fn success(&self, latency: Duration) {
        let mut inner = self.inner();
        let now = Instant::now();
        let _ = inner
            .latency_us
            .record(latency.as_micros().clamp(1, u128::from(u64::MAX)) as u64);
        let sample = latency.as_nanos() as f64;
        // Peak-EWMA: the weight of the old estimate decays with the time since it was
        // last updated (as `cost` sees it); a slower sample replaces it at once.
        let w = (-now.saturating_duration_since(inner.ewma_at).as_secs_f64()
            / EWMA_DECAY.as_secs_f64())
        .exp();
        inner.ewma_ns = if sample > inner.ewma_ns {
            sample // peak: react to a slowdown at once
        } else {
            inner.ewma_ns * w + sample * (1.0 - w)
        };
        inner.ewma_at = now;
        inner.failures_in_a_row = 0;
    }

    /// Records the failure of a try that began at `started`; ejects after enough failures
    /// in a row, at once when `eject_now` is set (a wrong answer), or at once on probation.
    /// Returns whether it ejected.
    ///
    /// One failure episode ejects once: tries that began before the ejection (the requests
    /// in flight when an engine stalled) and tries made while it is ejected (when every
    /// engine is out) fail without counting again.
    pub(crate) fn failure(&self, eject_now: bool, started: Instant) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut inner = self.inner();
        if inner.ejected_at.is_some_and(|at| started < at) || self.is_ejected_at(now) {
            return false;
        }
        inner.failures_in_a_row += 1;
        let probation = inner.probation_until.is_some_and(|until| now < until);
        if !(eject_now || probation || inner.failures_in_a_row >= EJECT_AFTER_FAILURES) {
            return false;
        }
        inner.level = if probation {
            (inner.level + 1).min(6)
        } else {
            0
        };
        let period = EJECT_BASE.saturating_mul(1 << inner.level).min(EJECT_MAX);
        let until = now + period;
        inner.ejected_at = Some(now);
        inner.probation_until = Some(until + period);
        inner.ejections += 1;
        inner.failures_in_a_row = 0;
        self.ejected_until_ns
            .store(self.since_born(until), Ordering::Relaxed);
        true
    }

    fn is_ejected_at(&self, now: Instant) -> bool {
        self.since_born(now) < self.ejected_until_ns.load(Ordering::Relaxed)
    }

    /// Whether the engine is out of rotation now (no lock: every request asks).
    pub(crate) fn is_ejected(&self) -> bool {
        self.is_ejected_at(Instant::now())
    }

    /// Expected cost of one more request: peak-EWMA latency × (in flight + 1). The latency
    /// estimate decays while the engine is not used, so an engine that was slow gets tried
    /// again after a while and can show it has recovered.
    pub(crate) fn cost(&self) -> f64 {
        let inner = self.inner();
        let idle = Instant::now()
            .saturating_duration_since(inner.ewma_at)
            .as_secs_f64();
        let ewma = inner.ewma_ns * (-idle / EWMA_DECAY.as_secs_f64()).exp();
        ewma * (self.in_flight.load(Ordering::Relaxed) + 1) as f64
    }

    /// The latency below which `q` of the requests finished, if any were measured.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let inner = self.inner();
        (!inner.latency_us.is_empty())
            .then(|| Duration::from_micros(inner.latency_us.value_at_quantile(q)))
    }

    pub(crate) fn snapshot(&self) -> HealthSnapshot {
        let inner = self.inner();
        let h = &inner.latency_us;
        HealthSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            picks: self.picks.load(Ordering::Relaxed),
            p50_us: h.value_at_quantile(0.5),
            p95_us: h.value_at_quantile(0.95),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            ewma_us: inner.ewma_ns / 1_000.0,
            ejected: self.is_ejected(),
            ejections: inner.ejections,
        }
    }
}
