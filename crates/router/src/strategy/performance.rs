//! Performance: the engine with the lowest expected latency, by the power of two choices
//! over peak-EWMA latency × (in flight + 1), costing only the two engines drawn.

use super::{Candidate, Strategy};

/// Picks two engines at random and sends to the cheaper; the other is next, then the rest.
/// Two random choices avoid the herd that "always the cheapest" causes when costs are stale.
#[derive(Debug, Default)]
pub struct Performance;

impl Strategy for Performance {
    fn name(&self) -> &'static str {
        "performance"
    }

    fn order(
        &self,
        candidates: &[Candidate],
        cost: &dyn Fn(usize) -> f64,
        rng: &mut fastrand::Rng,
    ) -> Vec<usize> {
        let n = candidates.len();
        if n < 2 {
            return candidates.iter().map(|c| c.index).collect();
        }
        // Only the two sampled engines are costed: the rest are failover order, from a
        // random start, and need no figure.
        let a = rng.usize(..n);
        let b = (a + 1 + rng.usize(..n - 1)) % n;
        let (ca, cb) = (candidates[a].index, candidates[b].index);
        let (first, second) = if cost(cb) < cost(ca) {
            (cb, ca)
        } else {
            (ca, cb)
        };
        [first, second]
            .into_iter()
            .chain(
                (0..n)
                    .map(|i| candidates[(b + i) % n].index)
                    .filter(|&i| i != first && i != second),
            )
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
            },
            Candidate {
                index: 1,
                local: false,
            },
            Candidate {
                index: 2,
                local: false,
            },
        ];
        let costs = [100.0, 100.0, 10_000.0];
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = [0; 3];
        for _ in 0..3_000 {
            counts[Performance.order(&candidates, &|i| costs[i], &mut rng)[0]] += 1;
        }
        // The slow one wins only when both choices land on it, which they never do.
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(counts[0] > 1_000 && counts[1] > 1_000, "{counts:?}");
    }

    #[test]
    fn only_the_two_engines_drawn_are_costed() {
        let candidates: Vec<Candidate> = (0..8)
            .map(|index| Candidate {
                index,
                local: false,
            })
            .collect();
        let asked = std::cell::Cell::new(0);
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..100 {
            let order = Performance.order(
                &candidates,
                &|_| {
                    asked.set(asked.get() + 1);
                    1.0
                },
                &mut rng,
            );
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..8).collect::<Vec<_>>(),
                "a permutation: {order:?}"
            );
        }
        assert_eq!(asked.get(), 200);
    }
}
