//! Performance: the engine with the lowest expected latency, by the power of two choices
//! over peak-EWMA latency × (in flight + 1).

use super::{Candidate, Strategy};

/// Picks two engines at random and sends to the cheaper; the rest follow by cost.
/// Two random choices avoid the herd that "always the cheapest" causes when costs are stale.
#[derive(Debug, Default)]
pub struct Performance;

impl Strategy for Performance {
    fn name(&self) -> &'static str {
        "performance"
    }

    fn order(&self, candidates: &[Candidate], rng: &mut fastrand::Rng) -> Vec<usize> {
        let mut rest: Vec<Candidate> = candidates.to_vec();
        rest.sort_by(|a, b| a.cost.total_cmp(&b.cost));
        if candidates.len() < 2 {
            return rest.iter().map(|c| c.index).collect();
        }
        let a = rng.usize(..candidates.len());
        let b = (a + 1 + rng.usize(..candidates.len() - 1)) % candidates.len();
        let (ca, cb) = (candidates[a], candidates[b]);
        let first = if cb.cost < ca.cost { cb } else { ca };
        std::iter::once(first.index)
            .chain(rest.iter().map(|c| c.index).filter(|&i| i != first.index))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_engine_gets_far_less_traffic() {
        let candidates = [
            Candidate {
                index: 0,
                local: false,
                cost: 100.0,
            },
            Candidate {
                index: 1,
                local: false,
                cost: 100.0,
            },
            Candidate {
                index: 2,
                local: false,
                cost: 10_000.0,
            },
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = [0; 3];
        for _ in 0..3_000 {
            counts[Performance.order(&candidates, &mut rng)[0]] += 1;
        }
        // The slow one wins only when both choices land on it, which they never do.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1_000 && counts[1] > 1_000, "{counts:?}");
    }
}
