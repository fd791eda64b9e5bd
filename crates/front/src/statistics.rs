//! The statistics extension: the model's cumulative request, inference and execution counts
//! as Triton's `GET /v2/models/{model}/stats` and gRPC `ModelStatistics` report them.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};

use crate::metrics::Totals;
use crate::pb;
use crate::state::ModelView;

/// One model's statistics, read from the front's totals.
///
/// `success` and `fail` count requests and their end-to-end time in the front; `cache_hit`
/// the successful requests answered wholly from the result cache. qnllm does not time the
/// phases inside a request (queueing, input, compute, output) apart, so those are zero.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Statistics {
    name: String,
    version: String,
    last_inference_ms: u64,
    inference_count: u64,
    execution_count: u64,
    /// (count, nanoseconds) of successful requests.
    success: (u64, u64),
    /// (count, nanoseconds) of failed requests.
    fail: (u64, u64),
    /// (count, nanoseconds) of successful requests the cache answered.
    cache_hit: (u64, u64),
}

impl Statistics {
    pub(crate) fn read(model: &ModelView, totals: &Totals) -> Statistics {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let ok = load(&totals.ok);
        Statistics {
            name: model.name.clone(),
            version: model.version.map(|v| v.to_string()).unwrap_or_default(),
            last_inference_ms: load(&totals.last_ok_ms),
            inference_count: load(&totals.inferences),
            execution_count: load(&totals.executions),
            success: (ok, load(&totals.ok_ns)),
            fail: (
                load(&totals.requests).saturating_sub(ok),
                load(&totals.fail_ns),
            ),
            cache_hit: (load(&totals.cache_hits), load(&totals.cache_hit_ns)),
        }
    }

    /// The HTTP response body.
    pub(crate) fn to_json(&self) -> Value {
        let duration = |(count, ns): (u64, u64)| json!({ "count": count, "ns": ns });
        let zero = duration((0, 0));
        json!({
            "model_stats": [{
                "name": self.name,
                "version": self.version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": duration(self.success),
                    "fail": duration(self.fail),
                    "queue": zero,
                    "compute_input": zero,
                    "compute_infer": zero,
                    "compute_output": zero,
                    "cache_hit": duration(self.cache_hit),
                    "cache_miss": zero,
                },
                "batch_stats": [],
            }]
        })
    }

    /// The gRPC response.
    pub(crate) fn into_grpc(self) -> pb::ModelStatisticsResponse {
        let duration = |(count, ns): (u64, u64)| Some(pb::StatisticDuration { count, ns });
        let zero = duration((0, 0));
        pb::ModelStatisticsResponse {
            model_stats: vec![pb::ModelStatistics {
                name: self.name,
                version: self.version,
                last_inference: self.last_inference_ms,
                inference_count: self.inference_count,
                execution_count: self.execution_count,
                inference_stats: Some(pb::InferStatistics {
                    success: duration(self.success),
                    fail: duration(self.fail),
                    queue: zero,
                    compute_input: zero,
                    compute_infer: zero,
                    compute_output: zero,
                    cache_hit: duration(self.cache_hit),
                    cache_miss: zero,
                }),
                batch_stats: Vec::new(),
            }],
        }
    }
}
