//! Conversions between the router's types and the protocol's: an `Answer` and its `result`
//! body, a router failure and its wire code.

use std::time::Duration;

use qnllm_engine::{Digest, Reasoning};
use qnllm_protocol::{ErrorCode, ResultBody};
use qnllm_router::Answer;

/// The `result` body that carries `answer` on the wire.
pub fn result_body(answer: &Answer) -> ResultBody {
    let r = &answer.reasoning;
    ResultBody {
        label: r.label,
        confidence: r.confidence,
        total_spikes: r.total_spikes,
        scores: r.scores.clone(),
        label_spikes: r.label_spikes.clone(),
        model_version: r.model_version,
        model_digest: r.model_digest.0,
        result_digest: r.result_digest.0,
        compute_ns: u64::try_from(answer.compute.as_nanos()).unwrap_or(u64::MAX),
        engine: answer.engine.clone(),
    }
}

/// The answer a `result` body carries.
pub fn answer(body: ResultBody) -> Answer {
    let reasoning = Reasoning {
        label: body.label,
        confidence: body.confidence,
        scores: body.scores,
        total_spikes: body.total_spikes,
        label_spikes: body.label_spikes,
        model_version: body.model_version,
        model_digest: Digest(body.model_digest),
        result_digest: Digest(body.result_digest),
    };
    Answer::new(
        reasoning,
        body.engine,
        Duration::from_nanos(body.compute_ns),
    )
}

/// The wire code for a router failure.
pub(crate) fn error_code(err: &qnllm_router::RouterError) -> ErrorCode {
    use qnllm_router::RouterError;
    match err {
        RouterError::InvalidInput(_) => ErrorCode::InvalidInput,
        RouterError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
        RouterError::Disagreement { .. } => ErrorCode::Disagreement,
        RouterError::EnginesFailed { .. } => ErrorCode::EngineFailed,
        RouterError::RetryBudgetExhausted { .. } => ErrorCode::Overloaded,
        _ => ErrorCode::NoEngineAvailable,
    }
}
