//! Prometheus `/metrics`: the front's own counters and histograms, and, read at scrape time,
//! the router's and hub's figures, in the text format with Prometheus naming conventions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use qnllm::UnifiedEngine;

/// Labels of a front request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The engine that answered, `none` when none did.
    pub(crate) engine: String,
    /// `ok`, or what went wrong.
    pub(crate) outcome: String,
}

/// Labels of a protocol.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabels {
    /// `http` or `grpc`.
    pub(crate) protocol: String,
}

/// Labels of an engine.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EngineLabels {
    /// The engine's name.
    pub(crate) engine: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 10 µs to about 20 s.
    Histogram::new(exponential_buckets(1e-5, 2.0, 22))
}

fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// What the front records itself; the rest is read from the engine on each scrape.
#[derive(Debug)]
pub(crate) struct FrontMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<ProtocolLabels>,
    engine_latency: HistogramFamily<EngineLabels>,
    batch_size: Histogram,
    /// The same requests as plain sums, for the dashboard.
    pub(crate) totals: Totals,
}

/// Plain request sums the dashboard reads (the same events `requests` counts).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    pub(crate) requests: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) encodings: AtomicU64,
    pub(crate) latency_us: AtomicU64,
}

impl FrontMetrics {
    pub(crate) fn new(engine: Arc<UnifiedEngine>) -> FrontMetrics {
        let mut registry = Registry::with_prefix("qnllm");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration: HistogramFamily<ProtocolLabels> =
            Family::new_with_constructor(latency_histogram);
        let engine_latency: HistogramFamily<EngineLabels> =
            Family::new_with_constructor(latency_histogram);
        let batch_size = batch_histogram();
        registry.register(
            "front_requests",
            "Inference requests by the engine that answered and their outcome",
            requests.clone(),
        );
        registry.register_with_unit(
            "front_request_duration",
            "End-to-end time of an inference request in the front",
            Unit::Seconds,
            duration.clone(),
        );
        registry.register_with_unit(
            "engine_latency",
            "Time from routing to an engine's answer, per engine",
            Unit::Seconds,
            engine_latency.clone(),
        );
        registry.register(
            "front_batch_size",
            "Encodings per inference request",
            batch_size.clone(),
        );
        registry.register_collector(Box::new(EngineCollector { engine }));
        FrontMetrics {
            registry,
            requests,
            duration,
            engine_latency,
            batch_size,
            totals: Totals::default(),
        }
    }

    /// Records one request: who answered (one engine or several for a split batch).
    pub(crate) fn record(
        &self,
        protocol: &str,
        outcome: &str,
        answers: &[qnllm::Answer],
        rows: usize,
        elapsed: Duration,
    ) {
        let mut engines: Vec<&str> = answers.iter().map(|a| a.engine.as_str()).collect();
        engines.sort_unstable();
        engines.dedup();
        if engines.is_empty() {
            engines.push("none");
        }
        for engine in &engines {
            self.requests
                .get_or_create(&RequestLabels {
                    engine: (*engine).to_string(),
                    outcome: outcome.to_string(),
                })
                .inc();
        }
        if let Some(first) = answers.first() {
            self.engine_latency
                .get_or_create(&EngineLabels {
                    engine: first.engine.clone(),
                })
                .observe(first.latency.as_secs_f64());
        }
        self.duration
            .get_or_create(&ProtocolLabels {
                protocol: protocol.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        if rows > 0 {
            self.batch_size.observe(rows as f64);
        }
        let t = &self.totals;
        t.requests.fetch_add(1, Ordering::Relaxed);
        if outcome == "ok" {
            t.ok.fetch_add(1, Ordering::Relaxed);
            t.encodings.fetch_add(rows as u64, Ordering::Relaxed);
        }
        t.latency_us.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The OpenMetrics text exposition.
    pub(crate) fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The classic Prometheus text format (0.0.4), what scrapers without OpenMetrics and
    /// `promtool check metrics` read.
    pub(crate) fn encode_prometheus(&self) -> String {
        to_classic(&self.encode_openmetrics())
    }
}

/// OpenMetrics to the classic format: a counter family is named with its `_total` suffix,
/// and the `# UNIT` and `# EOF` lines, which the classic format lacks, are dropped.
fn to_classic(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Reads the router's and hub's figures at scrape time, so they are never stale or doubled.
#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_with_their_total_suffix_in_the_classic_format() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP a_d_seconds D.\n# TYPE a_d_seconds histogram\n# UNIT a_d_seconds seconds\na_d_seconds_count 1\n# EOF\n";
        assert_eq!(
            super::to_classic(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP a_d_seconds D.\n# TYPE a_d_seconds histogram\na_d_seconds_count 1\n"
        );
    }
}

#[derive(Debug)]
struct EngineCollector {
    engine: Arc<UnifiedEngine>,
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl prometheus_client::collector::Collector for EngineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = self.engine.metrics();
        let r = &m.router;
        let e = &mut encoder;
        counter(
            e,
            "router_requests",
            "Requests the router routed",
            r.requests,
        )?;
        counter(
            e,
            "router_retries",
            "Tries beyond the first (failovers)",
            r.retries,
        )?;
        counter(
            e,
            "router_retry_budget_exhausted",
            "Retries refused by the retry budget",
            r.budget_exhausted,
        )?;
        counter(e, "router_hedges", "Hedge requests sent", r.hedges)?;
        counter(
            e,
            "router_hedge_wins",
            "Hedge requests that answered first",
            r.hedge_wins,
        )?;
        counter(e, "router_ejections", "Engines ejected", r.ejections)?;
        counter(
            e,
            "router_disagreements",
            "Redundant answers outvoted, or ties",
            r.disagreements,
        )?;
        counter(e, "router_batches", "Batches routed", r.batches)?;
        counter(
            e,
            "router_batch_items",
            "Encodings in routed batches",
            r.batch_items,
        )?;
        let cache = r.cache.clone().unwrap_or_default();
        counter(
            e,
            "cache_hits",
            "Lookups answered from the result cache",
            cache.hits,
        )?;
        counter(
            e,
            "cache_misses",
            "Lookups the result cache missed",
            cache.misses,
        )?;
        counter(
            e,
            "cache_evictions",
            "Entries dropped from the result cache",
            cache.evictions,
        )?;
        gauge(
            e,
            "cache_entries",
            "Entries held in the result cache",
            as_i64(cache.entries),
        )?;
        gauge(
            e,
            "cache_capacity",
            "Most entries the result cache holds",
            as_i64(cache.capacity),
        )?;
        let hub = &m.hub;
        let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        gauge(
            e,
            "hub_connections_open",
            "Connections open to the hub",
            as_i64(num(&hub["connections"]["open"])),
        )?;
        counter(
            e,
            "hub_connections",
            "Connections the hub accepted",
            num(&hub["connections"]["total"]),
        )?;
        counter(
            e,
            "hub_connections_refused",
            "Connections refused at the limit",
            num(&hub["connections"]["refused"]),
        )?;
        counter(
            e,
            "hub_frames_received",
            "Frames read by the hub",
            num(&hub["frames_in"]),
        )?;
        counter(
            e,
            "hub_received_bytes",
            "Bytes read by the hub",
            num(&hub["bytes_in"]),
        )?;
        counter(
            e,
            "hub_engines_joined",
            "Worker engines that joined",
            num(&hub["engines_joined"]),
        )?;
        counter(
            e,
            "hub_engines_lost",
            "Worker engines that left or died",
            num(&hub["engines_lost"]),
        )?;
        counter(
            e,
            "hub_failed_over",
            "Requests failed over when their engine left",
            num(&hub["failed_over"]),
        )?;
        gauge(e, "engines", "Engines in rotation", r.engines.len() as i64)?;
        per_engine(e, r)
    }
}

fn per_engine(
    encoder: &mut DescriptorEncoder<'_>,
    r: &qnllm::RouterMetrics,
) -> Result<(), std::fmt::Error> {
    let labels: Vec<[(&str, &str); 2]> = r
        .engines
        .iter()
        .map(|x| [("engine", x.info.name.as_str()), ("kind", x.info.kind)])
        .collect();
    type Pick = fn(&qnllm::EngineMetrics) -> u64;
    let counters: [(&str, &str, Pick); 3] = [
        (
            "engine_requests",
            "Requests the router sent to an engine",
            |x| x.health.requests,
        ),
        ("engine_errors", "Requests an engine failed", |x| {
            x.health.errors
        }),
        ("engine_ejections", "Times an engine was ejected", |x| {
            u64::from(x.health.ejections)
        }),
    ];
    for (name, help, pick) in counters {
        let mut family = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (x, l) in r.engines.iter().zip(&labels) {
            ConstCounter::new(pick(x)).encode(family.encode_family(l)?)?;
        }
    }
    let gauges: [(&str, &str, Pick); 2] = [
        ("engine_in_flight", "Requests in flight at an engine", |x| {
            x.health.in_flight
        }),
        ("engine_ejected", "1 while an engine is ejected", |x| {
            u64::from(x.health.ejected)
        }),
    ];
    for (name, help, pick) in gauges {
        let mut family = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (x, l) in r.engines.iter().zip(&labels) {
            ConstGauge::new(as_i64(pick(x))).encode(family.encode_family(l)?)?;
        }
    }
    type Seconds = fn(&qnllm::EngineMetrics) -> f64;
    let latencies: [(&str, &str, Seconds); 3] = [
        (
            "engine_latency_p50_seconds",
            "Median latency the router saw, per engine",
            |x| x.health.p50_us as f64 / 1e6,
        ),
        (
            "engine_latency_p99_seconds",
            "99th percentile latency the router saw",
            |x| x.health.p99_us as f64 / 1e6,
        ),
        (
            "engine_latency_ewma_seconds",
            "Peak-EWMA latency the router ranks engines by",
            |x| x.health.ewma_us / 1e6,
        ),
    ];
    for (name, help, pick) in latencies {
        let mut family = encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (x, l) in r.engines.iter().zip(&labels) {
            ConstGauge::new(pick(x)).encode(family.encode_family(l)?)?;
        }
    }
    Ok(())
}
