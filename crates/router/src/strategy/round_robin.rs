//! Round-robin: each request starts at the next engine in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, Strategy};

/// Starts each request one engine further along; fails over in list order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Strategy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn order(
        &self,
        candidates: &[Candidate],
        _cost: &dyn Fn(usize) -> f64,
        _rng: &mut fastrand::Rng,
    ) -> Vec<usize> {
        let n = candidates.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..candidates.len())
            .map(|i| candidates[(start + i) % n].index)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|index| Candidate {
                index,
                local: false,
            })
            .collect()
    }

    #[test]
    fn alternates_exactly_over_1000_calls() {
        let (rr, mut rng) = (RoundRobin::default(), fastrand::Rng::with_seed(1));
        let firsts: Vec<usize> = (0..1_000)
            .map(|_| rr.order(&candidates(2), &|_| 0.0, &mut rng)[0])
            .collect();
        assert!(
            firsts.chunks(2).all(|pair| pair == [0, 1]),
            "strict alternation"
        );
        let mut counts = [0; 3];
        for _ in 0..999 {
            counts[rr.order(&candidates(3), &|_| 0.0, &mut rng)[0]] += 1;
        }
        assert_eq!(counts, [333, 333, 333]);
    }

    #[test]
    fn failover_order_covers_every_engine_once() {
        let (rr, mut rng) = (RoundRobin::default(), fastrand::Rng::with_seed(1));
        let mut order = rr.order(&candidates(4), &|_| 0.0, &mut rng);
        order.sort_unstable();
        assert_eq!(order, [0, 1, 2, 3]);
    }
}
