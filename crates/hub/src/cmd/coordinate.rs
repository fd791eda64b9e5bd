//! `coordinate` and `learn` from clients: teachers vote, and the engines in rotation (the
//! student's replicas) learn in one order for all.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use qnllm_engine::{EngineError, Model, Params, SpikingEngine};
use qnllm_protocol::{
    Coordinate, CoordinationResult, Deadline, ErrorCode, Learn, Learned, Message, TeacherVote,
};
use qnllm_router::{Backend, Coordinator, LearnError, LocalBackend};

use crate::cmd::requests::ClientSession;
use crate::convert::error_code;

/// Builds the teachers named in the config (`seed:N` or a safetensors path).
pub(crate) fn teachers(specs: &[String]) -> Result<Vec<Arc<dyn Backend>>, EngineError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let model = match spec.strip_prefix("seed:").map(str::parse::<u64>) {
                Some(Ok(seed)) => Model::from_seed(seed, Params::default())?,
                Some(Err(_)) => {
                    return Err(EngineError::InvalidParams(format!(
                        "teacher `{spec}`: the seed must be an unsigned integer"
                    )))
                }
                None => Model::load(Path::new(spec))?,
            };
            Ok(Arc::new(LocalBackend::new(
                format!("teacher-{i}"),
                SpikingEngine::new(model),
            )) as Arc<dyn Backend>)
        })
        .collect()
}

pub(crate) fn coordinate(
    coordinator: &Arc<Coordinator>,
    session: &ClientSession,
    id: u64,
    request: Coordinate,
    deadline: Duration,
) {
    let (coordinator, sender) = (coordinator.clone(), session.sender.clone());
    session.spawn(id, async move {
        let k = usize::from(request.teachers);
        match coordinator
            .coordinate(request.encoding.as_slice(), k, request.learn, deadline)
            .await
        {
            Ok(c) => {
                let body = CoordinationResult {
                    consensus: c.consensus,
                    agreement: c.agreement,
                    learned: c.learned.is_some(),
                    teachers: c
                        .votes
                        .into_iter()
                        .map(|v| TeacherVote {
                            engine: v.engine,
                            label: v.label,
                            confidence: v.confidence,
                            reliability: v.reliability,
                        })
                        .collect(),
                };
                sender
                    .send(&Message::CoordinationResult(body), id, Deadline::NONE)
                    .await;
            }
            Err(err) => sender.fail(id, error_code(&err), err.to_string()).await,
        }
    });
}

pub(crate) fn learn(
    coordinator: &Arc<Coordinator>,
    session: &ClientSession,
    id: u64,
    request: Learn,
    deadline: Duration,
) {
    let (coordinator, sender) = (coordinator.clone(), session.sender.clone());
    session.spawn(id, async move {
        // The version is checked under the student lock, with the update: two clients that
        // name the same version cannot both apply.
        match coordinator
            .learn_at(
                request.encoding.as_slice(),
                request.label,
                request.base_version,
                deadline,
            )
            .await
        {
            Ok(state) => {
                let body = Learned {
                    model_version: state.version,
                    model_digest: state.digest.0,
                };
                sender
                    .send(&Message::Learned(body), id, Deadline::NONE)
                    .await;
            }
            Err(err @ LearnError::VersionConflict { .. }) => {
                sender
                    .fail(id, ErrorCode::VersionConflict, err.to_string())
                    .await;
            }
            Err(LearnError::Request(err)) => {
                sender.fail(id, error_code(&err), err.to_string()).await;
            }
            Err(err) => {
                sender
                    .fail(id, ErrorCode::NoEngineAvailable, err.to_string())
                    .await;
            }
        }
    });
}
