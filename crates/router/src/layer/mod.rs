//! The routing stack: one request goes down layers, each a [`Route`] over the one below,
//! composed from the configuration as tower composes services: the result cache, then the
//! mode (a hedge or a vote; failover under a hedge and for a single engine), then one try
//! on one engine ([`attempt`]).
//!
//! ```text
//!   Cache ─► Failover ────────────► Attempt      mode single
//!   Cache ─► Hedge ─► Failover ───► Attempt      mode hedged   (primary, backup: Attempt)
//!   Cache ─► Vote ────────────────► Attempt ×n   mode redundant
//! ```

pub(crate) mod attempt;
pub(crate) mod cache;
pub(crate) mod failover;
pub(crate) mod hedge;
pub(crate) mod vote;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Answer, ModelState};
use crate::router::{Mode, RouterError};
use attempt::{Slot, Tries};
use cache::{Cache, CacheState};
use failover::Failover;
use hedge::Hedge;
use vote::Vote;

/// One request on its way down the stack: what every layer may read. Layers narrow it
/// (a hedge hands failover the engines after its primary) and pass it on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request<'a> {
    /// The encoding, the caller's own bytes.
    pub(crate) encoding: &'a [f32],
    /// The engines to use, best first (`Router::plan`).
    pub(crate) plan: &'a [Slot],
    /// The model in rotation when the plan was made.
    pub(crate) head: Option<ModelState>,
    /// Neither read the cache nor fill it.
    pub(crate) no_cache: bool,
    /// The request's whole budget, and when it began.
    pub(crate) budget: Duration,
    /// When the router received it.
    pub(crate) started: Instant,
}

impl<'a> Request<'a> {
    /// The same request on fewer engines.
    pub(crate) fn on(self, plan: &'a [Slot]) -> Request<'a> {
        Request { plan, ..self }
    }

    /// What is left of the budget.
    pub(crate) fn left(&self) -> Duration {
        self.budget.saturating_sub(self.started.elapsed())
    }
}

/// A layer of the stack: answers a request, mostly by handing it to the layer it wraps.
/// tower's `Service` narrowed to what routing needs: `&self` (layers are shared by every
/// request), and a request that borrows the caller's encoding and the plan instead of
/// owning copies.
pub(crate) trait Route: Send + Sync + std::fmt::Debug {
    /// Answers `request`.
    fn route<'a>(
        &'a self,
        request: Request<'a>,
    ) -> impl Future<Output = Result<Answer, RouterError>> + Send + 'a;
}

/// The mode's layers, one of three.
#[derive(Debug)]
pub(crate) enum Modes {
    /// Failover over the plan.
    Single(Failover),
    /// A hedge over failover.
    Hedged(Hedge),
    /// A vote of several tries.
    Redundant(Vote),
}

impl Route for Modes {
    async fn route<'a>(&'a self, request: Request<'a>) -> Result<Answer, RouterError> {
        match self {
            Modes::Single(failover) => failover.route(request).await,
            Modes::Hedged(hedge) => hedge.route(request).await,
            Modes::Redundant(vote) => vote.route(request).await,
        }
    }
}

/// The whole stack for one mode, with the cache in front when the router has one.
#[derive(Debug)]
pub(crate) enum Stack {
    /// Cache in front of the mode.
    Cached(Cache<Modes>),
    /// The mode alone.
    Plain(Modes),
}

impl Stack {
    /// The layers `mode` and the cache make, over the tries of `tries`.
    pub(crate) fn new(mode: Mode, tries: &Arc<Tries>, cache: Option<&Arc<CacheState>>) -> Stack {
        let failover = Failover::new(tries.clone());
        let modes = match mode {
            Mode::Single => Modes::Single(failover),
            Mode::Hedged => Modes::Hedged(Hedge::new(failover, tries.clone())),
            Mode::Redundant { copies } => Modes::Redundant(Vote::new(copies, tries.clone())),
        };
        match cache {
            Some(state) => Stack::Cached(Cache::new(modes, state.clone())),
            None => Stack::Plain(modes),
        }
    }
}

impl Route for Stack {
    async fn route<'a>(&'a self, request: Request<'a>) -> Result<Answer, RouterError> {
        match self {
            Stack::Cached(cache) => cache.route(request).await,
            Stack::Plain(modes) => modes.route(request).await,
        }
    }
}
