//! The saturated-deadline row: more requests in flight than the hub can serve, each with a
//! short deadline; how long after its deadline `DeadlineExceeded` arrives, and how many
//! results arrive past their deadline (targets: p99 ≤ 1 ms, and none); and who said
//! `DeadlineExceeded`, from its message.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qnllm_engine::NormalInputs;
use qnllm_hub::{Client, ClientError, Endpoint};
use qnllm_protocol::{ErrorCode, Message};

use crate::error::BenchError;
use crate::report::{row, Group, HubDeadlines, Row};
use crate::stats::Latency;

/// Every request's deadline.
pub(crate) const DEADLINE: Duration = Duration::from_millis(2);
/// How long a caller waits for the hub's reply after the deadline.
const WAIT: Duration = Duration::from_secs(2);

/// Runs `requests` requests with `in_flight` at once over `connections` connections to
/// `endpoint` and returns the row: the latency columns are how long after its deadline each
/// `DeadlineExceeded` came; the row's `past_deadline` counts results that came after it.
pub(crate) async fn saturated(
    endpoint: &Endpoint,
    connections: usize,
    in_flight: usize,
    requests: usize,
) -> Result<Row, BenchError> {
    let mut clients = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        let client = Client::connect(endpoint, "bench-deadline", None)
            .await
            .map_err(|e| BenchError::measure("saturated deadline", e))?;
        clients.push(Arc::new(client));
    }
    let before = hub_deadlines(&clients[0]).await?;
    let left = Arc::new(AtomicUsize::new(requests));
    let (late, on_time) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let by: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let loops: Vec<_> = (0..in_flight.max(1))
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let (left, late, on_time) = (left.clone(), late.clone(), on_time.clone());
            let by = by.clone();
            tokio::spawn(async move {
                let mut inputs = NormalInputs::new(1_000 + i as u64, 768);
                let mut overdue = Vec::new();
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let message = Message::Reason(inputs.next().unwrap_or_default().into());
                    let sent = Instant::now();
                    let reply = client.request_within(&message, DEADLINE, WAIT).await;
                    let took = sent.elapsed();
                    match reply {
                        Ok(_) if took > DEADLINE => late.fetch_add(1, Ordering::Relaxed),
                        Ok(_) => on_time.fetch_add(1, Ordering::Relaxed),
                        Err(ClientError::Remote {
                            code: ErrorCode::DeadlineExceeded,
                            message,
                        }) => {
                            overdue.push(took.saturating_sub(DEADLINE));
                            *by.lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(producer(&message).to_string())
                                .or_default() += 1;
                            0
                        }
                        Err(e) => return Err(BenchError::measure("saturated deadline", e)),
                    };
                }
                Ok(overdue)
            })
        })
        .collect();
    let mut overdue = Vec::with_capacity(requests);
    for task in loops {
        let samples = task
            .await
            .map_err(|e| BenchError::measure("saturated deadline", e))??;
        overdue.extend(samples);
    }
    let late = late.load(Ordering::Relaxed);
    let on_time = on_time.load(Ordering::Relaxed);
    let name = format!("saturated, {} ms deadline: lateness", DEADLINE.as_millis());
    // No distribution: the chart plots round trips, and these figures are lateness.
    let mut row = row(
        &name,
        Group::Other,
        (!overdue.is_empty()).then(|| Latency::of(overdue)),
        None,
        None,
        None,
        Vec::new(),
    );
    row.past_deadline = Some(late);
    row.on_time = Some(on_time);
    row.deadline_exceeded_by =
        std::mem::take(&mut *by.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let after = hub_deadlines(&clients[0]).await?;
    row.hub_deadlines = Some(HubDeadlines {
        exceeded: after.exceeded.saturating_sub(before.exceeded),
        held_back: after.held_back.saturating_sub(before.held_back),
        ..after
    });
    Ok(row)
}

/// The hub's `deadlines` figures, from its metrics.
async fn hub_deadlines(client: &Client) -> Result<HubDeadlines, BenchError> {
    let metrics = client
        .metrics(WAIT)
        .await
        .map_err(|e| BenchError::measure("saturated deadline: the hub's metrics", e))?;
    let d = &metrics["deadlines"];
    let figure = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    Ok(HubDeadlines {
        exceeded: figure(&d["exceeded"]),
        held_back: figure(&d["held_back"]),
        p50_us: figure(&d["lateness_us"]["p50"]),
        p99_us: figure(&d["lateness_us"]["p99"]),
        max_us: figure(&d["lateness_us"]["max"]),
    })
}

/// Who answered `DeadlineExceeded`, from the words of its message (the hub's, in
/// `crates/hub/src/cmd/`; the router's `RouterError::DeadlineExceeded`).
pub(crate) fn producer(message: &str) -> &'static str {
    if message.contains("passed before the hub could route") {
        "hub, on arrival"
    } else if message.contains("waited for its turn") {
        "hub alarm, waiting for a router slot"
    } else if message.contains("passed before an engine answered") {
        "hub alarm, routed"
    } else if message.contains("not forwarded") {
        "hub, a late answer held back"
    } else if message.contains("exceeded after trying") {
        "router"
    } else {
        "other"
    }
}
