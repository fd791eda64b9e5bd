//! What a run reports: a row per path with its figures and its ratios over the baselines
//! measured in the same run, the rows that were skipped and why, hub memory.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::stats::Latency;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub path: String,
    /// The section of the table it belongs to (its baselines are the section's).
    pub group: Group,
    /// The row the `p50_ratio`, `p99_ratio` and `throughput_ratio` are over.
    pub baseline: Option<String>,
    /// The row the `relay_*` ratios are over (for socket paths, the raw relay).
    pub second_baseline: Option<String>,
    /// One request at a time.
    pub latency: Option<Latency>,
    /// Requests per second with `window` in flight on each of `clients` connections.
    pub throughput: Option<f64>,
    /// Round trips under that load (each request from its send to its answer).
    pub loaded: Option<Latency>,
    /// CPU time per pipelined request, in µs, of every process on the path.
    pub loaded_cpu_us_per_request: Option<f64>,
    /// p50 over the `baseline`'s p50 (socket paths: the raw ping-pong on the same
    /// transport; the abusive neighbour: the quiet client alone).
    pub p50_ratio: Option<f64>,
    /// p99 over the `baseline`'s p99.
    pub p99_ratio: Option<f64>,
    /// Throughput over the `baseline`'s.
    pub throughput_ratio: Option<f64>,
    /// p50 over the `second_baseline`'s p50 (socket paths: the raw relay on the same
    /// transport, the cost of qnllm's software on a path with the hub's hop).
    pub relay_p50_ratio: Option<f64>,
    /// p99 over the `second_baseline`'s p99.
    pub relay_p99_ratio: Option<f64>,
    /// Throughput over the `second_baseline`'s.
    pub relay_throughput_ratio: Option<f64>,
    /// CPU time per one-at-a-time round trip, in µs, of every process on the path (servers
    /// and the measuring client); 10 ms resolution over the whole run.
    pub cpu_us_per_request: Option<f64>,
    /// Saturated-deadline row only: results that came after their deadline.
    pub past_deadline: Option<u64>,
    /// Saturated-deadline row only: results that came within their deadline.
    pub on_time: Option<u64>,
    /// Saturated-deadline row only: the `DeadlineExceeded` answers by who gave them (the
    /// hub on arrival, the hub's alarm, the router...), from their messages.
    pub deadline_exceeded_by: BTreeMap<String, u64>,
    /// Saturated-deadline row only: the same answers as the hub counted them, on its clock.
    pub hub_deadlines: Option<HubDeadlines>,
    /// The latency distribution: the round trip at each of `DISTRIBUTION_POINTS` evenly
    /// spaced quantiles from 0 to 1, in µs; empty without latency.
    pub distribution: Vec<f64>,
}

/// The hub's own figures for the deadlines that passed in it (`deadlines` in its metrics):
/// how long after the deadline it handed `DeadlineExceeded` to the client's writer. The
/// rest of what the client sees is the way back: the hub's writer, the socket, the client.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct HubDeadlines {
    /// `DeadlineExceeded` answers the hub gave at the deadline during the row.
    pub exceeded: u64,
    /// Engine answers that came after their deadline and that the hub did not forward.
    pub held_back: u64,
    /// Lateness p50, in µs, over the hub's life (the rows before this one give none).
    pub p50_us: u64,
    /// Lateness p99, in µs.
    pub p99_us: u64,
    /// Longest lateness, in µs.
    pub max_us: u64,
}

/// The sections of the report, each with its own baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Group {
    /// Socket paths through the hub; baselines: the raw ping-pong and the raw relay.
    Socket,
    /// The C++ worker; baselines: the Rust worker on the same path, and the raw TCP relay.
    Cpp,
    /// The KServe v2 front over HTTP and gRPC; baselines: the axum echo or the tonic empty
    /// service, and that floor plus the hub path (`echo + hub`).
    Front,
    /// A worker on NATS; baselines: raw NATS request-reply, and the direct hub path.
    Nats,
    /// Figures of their own: in process, abusive neighbour, saturated deadline.
    Other,
}

impl Group {
    /// The table's section title and the short names of its two baselines.
    pub fn legend(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Group::Socket => (
                "hub paths over sockets: A = raw ping-pong, B = raw relay (same transport)",
                "pp",
                "relay",
            ),
            Group::Cpp => (
                "C++ worker (bindings/cpp): A = the Rust worker on the same path, B = raw TCP relay",
                "rust",
                "relay",
            ),
            Group::Front => (
                "KServe v2 front (HTTP, gRPC) → hub → worker: A = axum echo / tonic empty service, B = A + the hub path",
                "echo",
                "echo+hub",
            ),
            Group::Nats => (
                "NATS (--nats): A = raw NATS request-reply, B = the direct hub path (TCP)",
                "nats",
                "hub",
            ),
            Group::Other => ("in process, abuse and deadlines", "base", "-"),
        }
    }
}

/// Rows that were not measured, and why (what is missing, and how to get it).
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The rows.
    pub rows: String,
    /// Why, and what to do.
    pub reason: String,
}

/// A baseline a row is compared with.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    pub(crate) name: String,
    pub(crate) latency: Latency,
    pub(crate) throughput: Option<f64>,
}

/// Points in each row's latency distribution.
pub const DISTRIBUTION_POINTS: usize = 201;

/// Everything measured in one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Request size in bytes (a 768-value reason frame).
    pub request_bytes: usize,
    /// Reply size in bytes (a result frame).
    pub reply_bytes: usize,
    /// In flight per connection for the throughput figures.
    pub window: usize,
    /// Connections per path for the throughput figures.
    pub clients: usize,
    /// Rounds completed: each measured every path once.
    pub rounds: usize,
    /// Busy-poll time of the busy-poll path, µs.
    pub busy_poll_us: u64,
    /// The default engine's pipelined throughput through the hub over the in-process
    /// engine's best `reason_batch` throughput (one thread or every core) on the same machine.
    pub engine_share: Option<f64>,
    /// The same with requests that are `reason_batch`es of 64, as the in-process figure is.
    pub engine_share_batched: Option<f64>,
    /// The rows, baselines first.
    pub rows: Vec<Row>,
    /// Rows not measured in this run, and why.
    pub skipped: Vec<Skipped>,
    /// Hub memory, idle and with idle connections open.
    pub memory: Option<Memory>,
}

/// Resident memory of a hub process (Linux: `/proc/PID/status`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Memory {
    /// RSS with no client connected, KiB.
    pub idle_kib: u64,
    /// Idle connections opened (each said hello and was welcomed).
    pub connections: usize,
    /// RSS with them open, KiB.
    pub loaded_kib: u64,
    /// `(loaded - idle) / connections`, bytes.
    pub per_connection_bytes: u64,
}

pub(crate) fn row(
    path: &str,
    group: Group,
    latency: Option<Latency>,
    throughput: Option<f64>,
    first: Option<&Base>,
    second: Option<&Base>,
    distribution: Vec<f64>,
) -> Row {
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    Row {
        path: path.into(),
        group,
        baseline: first.map(|b| b.name.clone()),
        second_baseline: second.map(|b| b.name.clone()),
        latency,
        throughput,
        p50_ratio: ratio(latency.map(|l| l.p50_us), first.map(|b| b.latency.p50_us)),
        p99_ratio: ratio(latency.map(|l| l.p99_us), first.map(|b| b.latency.p99_us)),
        throughput_ratio: ratio(throughput, first.and_then(|b| b.throughput)),
        relay_p50_ratio: ratio(latency.map(|l| l.p50_us), second.map(|b| b.latency.p50_us)),
        relay_p99_ratio: ratio(latency.map(|l| l.p99_us), second.map(|b| b.latency.p99_us)),
        relay_throughput_ratio: ratio(throughput, second.and_then(|b| b.throughput)),
        cpu_us_per_request: None,
        loaded: None,
        loaded_cpu_us_per_request: None,
        past_deadline: None,
        on_time: None,
        deadline_exceeded_by: BTreeMap::new(),
        hub_deadlines: None,
        distribution,
    }
}

/// The round trip at each of `DISTRIBUTION_POINTS` evenly spaced quantiles, in µs.
pub(crate) fn distribution(samples: &[Duration]) -> Vec<f64> {
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_nanos() as f64 / 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return Vec::new();
    }
    (0..DISTRIBUTION_POINTS)
        .map(|i| {
            let q = i as f64 / (DISTRIBUTION_POINTS - 1) as f64;
            sorted[((sorted.len() - 1) as f64 * q).round() as usize]
        })
        .collect()
}
