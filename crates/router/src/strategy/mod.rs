//! Strategies: how the router orders the healthy engines for one request. The first engine
//! is tried first; the others, in order, are where a failed try goes next.

mod local_first;
mod performance;
mod round_robin;

pub use local_first::Preferred;
pub use performance::Performance;
pub use round_robin::RoundRobin;

/// What a strategy may know of an engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Position in the router's engine list.
    pub index: usize,
    /// Whether the engine runs in this process.
    pub local: bool,
}

/// Orders candidates for one request.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// The strategy's name, as configured and reported.
    fn name(&self) -> &'static str;

    /// A permutation of `candidates`' indices (the `index` field), best first. `cost(index)`
    /// is the expected cost of one more request on that engine (peak-EWMA latency × (in
    /// flight + 1)); it takes a lock, so a strategy asks only for the engines it compares.
    /// `rng` is the router's seeded generator, so tests can replay decisions.
    fn order(
        &self,
        candidates: &[Candidate],
        cost: &dyn Fn(usize) -> f64,
        rng: &mut fastrand::Rng,
    ) -> Vec<usize>;
}
