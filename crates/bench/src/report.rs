//! What a run reports: a row per path with its figures and ratios, hub memory, and the
//! whole report.

use std::time::Duration;

use serde::Serialize;

use crate::stats::Latency;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What was measured.
    pub path: String,
    /// One request at a time.
    pub latency: Option<Latency>,
    /// Requests per second with `window` in flight on each of `clients` connections.
    pub throughput: Option<f64>,
    /// Round trips under that load (each request from its send to its answer).
    pub loaded: Option<Latency>,
    /// CPU time per pipelined request, in µs, of every process on the path.
    pub loaded_cpu_us_per_request: Option<f64>,
    /// p50 over the raw ping-pong's p50 on the same transport.
    pub p50_ratio: Option<f64>,
    /// p99 over the raw ping-pong's p99; on the abusive-neighbour row, over the quiet
    /// client's p99 alone.
    pub p99_ratio: Option<f64>,
    /// Throughput over the raw ping-pong's.
    pub throughput_ratio: Option<f64>,
    /// p50 over the raw relay's p50 on the same transport: the cost of qnllm's software
    /// on a path with the hub's hop.
    pub relay_p50_ratio: Option<f64>,
    /// p99 over the raw relay's p99.
    pub relay_p99_ratio: Option<f64>,
    /// Throughput over the raw relay's.
    pub relay_throughput_ratio: Option<f64>,
    /// CPU time per one-at-a-time round trip, in µs, of every process on the path (servers
    /// and the measuring client); 10 ms resolution over the whole run.
    pub cpu_us_per_request: Option<f64>,
    /// Saturated-deadline row only: results that came after their deadline.
    pub past_deadline: Option<u64>,
    /// Saturated-deadline row only: results that came within their deadline.
    pub on_time: Option<u64>,
    /// The latency distribution: the round trip at each of `DISTRIBUTION_POINTS` evenly
    /// spaced quantiles from 0 to 1, in µs; empty without latency.
    pub distribution: Vec<f64>,
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
    latency: Option<Latency>,
    throughput: Option<f64>,
    ping_pong: Option<(Latency, f64)>,
    relay: Option<(Latency, f64)>,
    distribution: Vec<f64>,
) -> Row {
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    Row {
        path: path.into(),
        latency,
        throughput,
        p50_ratio: ratio(latency.map(|l| l.p50_us), ping_pong.map(|b| b.0.p50_us)),
        p99_ratio: ratio(latency.map(|l| l.p99_us), ping_pong.map(|b| b.0.p99_us)),
        throughput_ratio: ratio(throughput, ping_pong.map(|b| b.1)),
        relay_p50_ratio: ratio(latency.map(|l| l.p50_us), relay.map(|b| b.0.p50_us)),
        relay_p99_ratio: ratio(latency.map(|l| l.p99_us), relay.map(|b| b.0.p99_us)),
        relay_throughput_ratio: ratio(throughput, relay.map(|b| b.1)),
        cpu_us_per_request: None,
        loaded: None,
        loaded_cpu_us_per_request: None,
        past_deadline: None,
        on_time: None,
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
