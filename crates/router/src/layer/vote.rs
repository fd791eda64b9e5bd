//! Vote (redundant mode): `copies` engines answer at once and the result digest a strict
//! majority holds wins; the rule, with its degrade cases, is in `docs/router.md`.

use std::sync::Arc;

use qnllm_engine::Digest;

use super::attempt::{Counters, Slot, Tries};
use super::{Request, Route};
use crate::backend::{Agreement, Answer, BackendError};
use crate::router::RouterError;

/// The vote layer, over tries.
#[derive(Debug)]
pub(crate) struct Vote {
    copies: usize,
    tries: Arc<Tries>,
}

impl Vote {
    pub(crate) fn new(copies: usize, tries: Arc<Tries>) -> Vote {
        Vote { copies, tries }
    }

    /// Runs the request on every engine of `slots` at once, each within what is left.
    async fn ask_all(
        &self,
        request: Request<'_>,
        slots: &[Slot],
    ) -> Vec<Result<Answer, BackendError>> {
        let left = request.left();
        futures::future::join_all(slots.iter().map(|slot| {
            self.tries
                .attempt(slot, left, 1, slot.backend.reason(request.encoding, left))
        }))
        .await
    }
}

impl Route for Vote {
    /// `copies` engines answer; a result digest held by a strict majority of the engines
    /// asked wins. Without one (a tie, or failures), up to `copies` more healthy engines
    /// are asked and the vote is taken again over the larger sample; failing that, an
    /// in-process engine (the reference) breaks a tie. Outvoted engines are ejected. With
    /// fewer healthy engines than `copies` (but at least two) the answer is served, marked
    /// by its [`Agreement`].
    async fn route<'a>(&'a self, request: Request<'a>) -> Result<Answer, RouterError> {
        let (tries, plan) = (&*self.tries, request.plan);
        let copies = self.copies.max(2);
        if plan.len() < 2 {
            let reason = format!(
                "redundant mode compares at least 2 engines of the served model (it asks for \
                 {copies}); {} healthy: start another worker, or use mode single",
                plan.len()
            );
            return Err(RouterError::NoEngineAvailable { reason });
        }
        let first = copies.min(plan.len());
        let mut outcomes = self.ask_all(request, &plan[..first]).await;
        let mut asked = first;
        if vote(&plan[..asked], &outcomes).is_none() && plan.len() > asked {
            let more = (asked + copies).min(plan.len());
            outcomes.extend(self.ask_all(request, &plan[asked..more]).await);
            asked = more;
        }
        let sample = &plan[..asked];
        if let Some(why) = outcomes.iter().find_map(|o| match o {
            Err(BackendError::InvalidInput(why)) => Some(why.clone()),
            _ => None,
        }) {
            return Err(RouterError::InvalidInput(why));
        }
        let detail = || {
            sample
                .iter()
                .zip(&outcomes)
                .map(|(slot, o)| match o {
                    Ok(a) => format!(
                        "{} → {}",
                        slot.backend.name(),
                        a.reasoning.result_digest.short()
                    ),
                    Err(e) => format!("{} → {e}", slot.backend.name()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((winner, agreed)) = vote(sample, &outcomes) else {
            let digests: Vec<Digest> = outcomes
                .iter()
                .filter_map(|o| o.as_ref().ok().map(|a| a.reasoning.result_digest))
                .collect();
            if digests.iter().any(|d| *d != digests[0]) {
                Counters::count(&tries.counters.disagreements);
                return Err(RouterError::Disagreement {
                    detail: format!(
                        "{}; no strict majority of {asked}: start another engine to break the tie",
                        detail()
                    ),
                });
            }
            return Err(tries.give_up(
                request.budget,
                request.started,
                outcomes
                    .iter()
                    .filter_map(|o| o.as_ref().err().map(ToString::to_string))
                    .collect(),
            ));
        };
        // Outvoted engines gave a wrong answer: count it and eject them at once.
        for (slot, outcome) in sample.iter().zip(&outcomes) {
            if let Ok(answer) = outcome {
                if answer.reasoning.result_digest != winner {
                    Counters::count(&tries.counters.disagreements);
                    if slot.health.failure(true, request.started) {
                        Counters::count(&tries.counters.ejections);
                    }
                }
            }
        }
        let agreement = Agreement {
            agreed: agreed as u32,
            asked: asked as u32,
            wanted: copies as u32,
        };
        outcomes
            .into_iter()
            .flatten()
            .find(|a| a.reasoning.result_digest == winner)
            .map(|answer| Answer {
                agreement: Some(agreement),
                ..answer
            })
            .ok_or_else(|| RouterError::EnginesFailed {
                tried: asked,
                detail: "no winning answer".into(),
            })
    }
}

/// The result digest a strict majority of the engines asked agreed on, and how many did;
/// without a majority, an in-process engine's answer breaks a tie when every in-process
/// engine asked agrees on it and it has the most votes.
fn vote(asked: &[Slot], outcomes: &[Result<Answer, BackendError>]) -> Option<(Digest, usize)> {
    let mut votes: Vec<(Digest, usize, bool)> = Vec::new();
    for (slot, outcome) in asked.iter().zip(outcomes) {
        let Ok(answer) = outcome else { continue };
        let local = slot.backend.kind() == "local";
        let digest = answer.reasoning.result_digest;
        match votes.iter_mut().find(|(d, _, _)| *d == digest) {
            Some((_, n, l)) => {
                *n += 1;
                *l |= local;
            }
            None => votes.push((digest, 1, local)),
        }
    }
    if let Some(&(digest, n, _)) = votes.iter().find(|(_, n, _)| n * 2 > asked.len()) {
        return Some((digest, n));
    }
    let most = votes.iter().map(|(_, n, _)| *n).max()?;
    let reference: Vec<_> = votes.iter().filter(|(_, _, local)| *local).collect();
    match reference.as_slice() {
        [(digest, n, _)] if *n == most && *n >= 1 && votes.len() > 1 => Some((*digest, *n)),
        _ => None,
    }
}
