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
use prometheus_client::metrics::MetricType;
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
    inferences: Family<EngineLabels, Counter>,
    executions: Family<EngineLabels, Counter>,
    duration: HistogramFamily<ProtocolLabels>,
    engine_latency: HistogramFamily<EngineLabels>,
    batch_size: Histogram,
    /// The same requests as plain sums, for the dashboard and the statistics extension.
    pub(crate) totals: Totals,
}

/// Plain sums the dashboard and `/v2/models/{model}/stats` read, counted as Triton's
/// statistics extension counts: a request is one infer call whatever its batch size, an
/// inference is one encoding an engine computed (a batch of B is B inferences; cache hits are
/// not inferences), and an execution is one engine computing a part of a request (a batch
/// one engine answers is one execution; a request answered from the cache is none).
#[derive(Debug, Default)]
pub(crate) struct Totals {
    /// Infer requests received, whatever their outcome.
    pub(crate) requests: AtomicU64,
    /// Of those, the successful ones.
    pub(crate) ok: AtomicU64,
    /// Encodings answered in successful requests, computed or from the cache.
    pub(crate) encodings: AtomicU64,
    /// Encodings an engine computed in successful requests.
    pub(crate) inferences: AtomicU64,
    /// Engine executions of successful requests.
    pub(crate) executions: AtomicU64,
    /// Successful requests answered wholly from the result cache.
    pub(crate) cache_hits: AtomicU64,
    /// End-to-end time of every request, in microseconds.
    pub(crate) latency_us: AtomicU64,
    /// End-to-end time of the successful requests, in nanoseconds.
    pub(crate) ok_ns: AtomicU64,
    /// End-to-end time of the failed requests, in nanoseconds.
    pub(crate) fail_ns: AtomicU64,
    /// End-to-end time of the successful requests answered wholly from the cache.
    pub(crate) cache_hit_ns: AtomicU64,
    /// When the last successful request finished, milliseconds since the Unix epoch.
    pub(crate) last_ok_ms: AtomicU64,
}

/// What one request's answers count: who computed how many encodings in how many executions.
#[derive(Debug, Default, PartialEq)]
struct Work<'a> {
    /// Per engine that computed something: (engine, inferences, executions).
    engines: Vec<(&'a str, u64, u64)>,
    /// Answers that came from the cache.
    cached: u64,
}

impl<'a> Work<'a> {
    /// The router answers a split batch part by part, in order, each part by one engine: a
    /// run of answers from one engine is one execution.
    fn of(answers: &'a [qnllm::Answer]) -> Work<'a> {
        let mut work = Work::default();
        let mut previous: Option<&str> = None;
        for a in answers {
            if a.cached {
                work.cached += 1;
                previous = None;
                continue;
            }
            let engine = a.engine.as_str();
            let new_run = previous != Some(engine);
            previous = Some(engine);
            match work.engines.iter_mut().find(|(e, _, _)| *e == engine) {
                Some((_, inferences, executions)) => {
                    *inferences += 1;
                    *executions += u64::from(new_run);
                }
                None => work.engines.push((engine, 1, 1)),
            }
        }
        work
    }
}

impl FrontMetrics {
    pub(crate) fn new(engine: Arc<UnifiedEngine>) -> FrontMetrics {
        let mut registry = Registry::with_prefix("qnllm");
        let requests = Family::<RequestLabels, Counter>::default();
        let inferences = Family::<EngineLabels, Counter>::default();
        let executions = Family::<EngineLabels, Counter>::default();
        let duration: HistogramFamily<ProtocolLabels> =
            Family::new_with_constructor(latency_histogram);
        let engine_latency: HistogramFamily<EngineLabels> =
            Family::new_with_constructor(latency_histogram);
        let batch_size = batch_histogram();
        registry.register(
            "front_requests",
            "Inference requests (a batch is one) by the engine that answered and their outcome",
            requests.clone(),
        );
        registry.register(
            "front_inferences",
            "Encodings an engine computed for successful requests (a batch of B is B; cache hits are none)",
            inferences.clone(),
        );
        registry.register(
            "front_executions",
            "Engine executions for successful requests (a batch one engine answers is one)",
            executions.clone(),
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
            inferences,
            executions,
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
        t.latency_us.fetch_add(
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if outcome != "ok" {
            t.fail_ns.fetch_add(ns, Ordering::Relaxed);
            return;
        }
        let work = Work::of(answers);
        let (mut inferences, mut executions) = (0, 0);
        for (engine, i, x) in &work.engines {
            let labels = EngineLabels {
                engine: (*engine).to_string(),
            };
            self.inferences.get_or_create(&labels).inc_by(*i);
            self.executions.get_or_create(&labels).inc_by(*x);
            inferences += i;
            executions += x;
        }
        t.ok.fetch_add(1, Ordering::Relaxed);
        t.ok_ns.fetch_add(ns, Ordering::Relaxed);
        t.encodings.fetch_add(rows as u64, Ordering::Relaxed);
        t.inferences.fetch_add(inferences, Ordering::Relaxed);
        t.executions.fetch_add(executions, Ordering::Relaxed);
        if work.engines.is_empty() && work.cached > 0 {
            t.cache_hits.fetch_add(1, Ordering::Relaxed);
            t.cache_hit_ns.fetch_add(ns, Ordering::Relaxed);
        }
        t.last_ok_ms
            .fetch_max(crate::dashboard::now_ms(), Ordering::Relaxed);
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
#[derive(Debug)]
struct EngineCollector {
    engine: Arc<UnifiedEngine>,
}

/// One unlabelled series: a `ConstCounter` or a `ConstGauge`.
fn constant(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    constant(encoder, name, help, ConstCounter::new(value))
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    constant(encoder, name, help, ConstGauge::new(value))
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

/// A family with one series per engine, labelled with its name and kind.
fn engine_family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help): (&str, &str),
    kind: MetricType,
    r: &qnllm::RouterMetrics,
    value: impl Fn(&qnllm::EngineMetrics) -> M,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for x in &r.engines {
        let labels = [("engine", x.info.name.as_str()), ("kind", x.info.kind)];
        value(x).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

type Described = (&'static str, &'static str);

fn per_engine(
    encoder: &mut DescriptorEncoder<'_>,
    r: &qnllm::RouterMetrics,
) -> Result<(), std::fmt::Error> {
    type Pick = fn(&qnllm::EngineMetrics) -> u64;
    let counters: [(Described, Pick); 3] = [
        (
            ("engine_requests", "Requests the router sent to an engine"),
            |x| x.health.requests,
        ),
        (("engine_errors", "Requests an engine failed"), |x| {
            x.health.errors
        }),
        (("engine_ejections", "Times an engine was ejected"), |x| {
            u64::from(x.health.ejections)
        }),
    ];
    for (described, pick) in counters {
        engine_family(encoder, described, MetricType::Counter, r, |x| {
            ConstCounter::new(pick(x))
        })?;
    }
    let gauges: [(Described, Pick); 2] = [
        (
            ("engine_in_flight", "Requests in flight at an engine"),
            |x| x.health.in_flight,
        ),
        (("engine_ejected", "1 while an engine is ejected"), |x| {
            u64::from(x.health.ejected)
        }),
    ];
    for (described, pick) in gauges {
        engine_family(encoder, described, MetricType::Gauge, r, |x| {
            ConstGauge::new(as_i64(pick(x)))
        })?;
    }
    type Seconds = fn(&qnllm::EngineMetrics) -> f64;
    let latencies: [(Described, Seconds); 3] = [
        (
            (
                "engine_latency_p50_seconds",
                "Median latency the router saw, per engine",
            ),
            |x| x.health.p50_us as f64 / 1e6,
        ),
        (
            (
                "engine_latency_p99_seconds",
                "99th percentile latency the router saw",
            ),
            |x| x.health.p99_us as f64 / 1e6,
        ),
        (
            (
                "engine_latency_ewma_seconds",
                "Peak-EWMA latency the router ranks engines by",
            ),
            |x| x.health.ewma_us / 1e6,
        ),
    ];
    for (described, pick) in latencies {
        engine_family(encoder, described, MetricType::Gauge, r, |x| {
            ConstGauge::new(pick(x))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use qnllm::Answer;
    use qnllm_engine::Engine;

    use super::Work;

    fn answers(engines: &[(&str, bool)]) -> Vec<Answer> {
        let model = qnllm::Model::from_seed(1, qnllm::Params::default()).expect("model");
        let reasoning = qnllm::SpikingEngine::new(model)
            .reason(&[0.0; 768])
            .expect("reasons");
        engines
            .iter()
            .map(|(engine, cached)| Answer {
                cached: *cached,
                ..Answer::new(reasoning.clone(), *engine, Duration::ZERO)
            })
            .collect()
    }

    #[test]
    fn a_batch_one_engine_answers_is_its_size_in_inferences_and_one_execution() {
        let batch = answers(&[("a", false); 5]);
        assert_eq!(Work::of(&batch).engines, vec![("a", 5, 1)]);
    }

    #[test]
    fn a_batch_split_over_two_engines_is_two_executions() {
        let batch = answers(&[("a", false), ("a", false), ("b", false), ("b", false)]);
        let work = Work::of(&batch);
        assert_eq!(work.engines, vec![("a", 2, 1), ("b", 2, 1)]);
        assert_eq!(work.cached, 0);
    }

    #[test]
    fn a_cache_hit_is_neither_an_inference_nor_an_execution() {
        let hit = answers(&[("a", true)]);
        let work = Work::of(&hit);
        assert!(work.engines.is_empty());
        assert_eq!(work.cached, 1);
    }

    #[test]
    fn counters_are_named_with_their_total_suffix_in_the_classic_format() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP a_d_seconds D.\n# TYPE a_d_seconds histogram\n# UNIT a_d_seconds seconds\na_d_seconds_count 1\n# EOF\n";
        assert_eq!(
            super::to_classic(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP a_d_seconds D.\n# TYPE a_d_seconds histogram\na_d_seconds_count 1\n"
        );
    }
}
