//! Local-first and remote-first: prefer one kind of engine for a configured share of
//! requests (80 % by default), round-robin within each kind.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Candidate, Strategy};

/// Prefers local (or remote) engines for `share` of the requests; the rest, and every
/// request when no preferred engine is healthy, go to the other kind.
#[derive(Debug)]
pub struct Preferred {
    local: bool,
    share: f64,
    next: AtomicUsize,
}

impl Preferred {
    /// `local-first` with `share` in `[0, 1]`.
    pub fn local(share: f64) -> Preferred {
        Preferred {
            local: true,
            share: share.clamp(0.0, 1.0),
            next: AtomicUsize::new(0),
        }
    }

    /// `remote-first` with `share` in `[0, 1]`.
    pub fn remote(share: f64) -> Preferred {
        Preferred {
            local: false,
            share: share.clamp(0.0, 1.0),
            next: AtomicUsize::new(0),
        }
    }
}

impl Strategy for Preferred {
    fn name(&self) -> &'static str {
        if self.local {
            "local-first"
        } else {
            "remote-first"
        }
    }

    fn order(
        &self,
        candidates: &[Candidate],
        _cost: &dyn Fn(usize) -> f64,
        rng: &mut fastrand::Rng,
    ) -> Vec<usize> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let rotate = |group: Vec<usize>| -> Vec<usize> {
            let n = group.len().max(1);
            (0..group.len()).map(|i| group[(turn + i) % n]).collect()
        };
        let preferred = rotate(
            candidates
                .iter()
                .filter(|c| c.local == self.local)
                .map(|c| c.index)
                .collect(),
        );
        let other = rotate(
            candidates
                .iter()
                .filter(|c| c.local != self.local)
                .map(|c| c.index)
                .collect(),
        );
        let prefer = !preferred.is_empty() && (other.is_empty() || rng.f64() < self.share);
        let (first, second) = if prefer {
            (preferred, other)
        } else {
            (other, preferred)
        };
        first.into_iter().chain(second).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixed() -> Vec<Candidate> {
        vec![
            Candidate {
                index: 0,
                local: true,
            },
            Candidate {
                index: 1,
                local: false,
            },
            Candidate {
                index: 2,
                local: false,
            },
        ]
    }

    fn local_share(strategy: &Preferred, candidates: &[Candidate]) -> f64 {
        let mut rng = fastrand::Rng::with_seed(7);
        let is_local = |index: usize| candidates.iter().any(|c| c.index == index && c.local);
        let local = (0..10_000)
            .filter(|_| is_local(strategy.order(candidates, &|_| 0.0, &mut rng)[0]))
            .count();
        local as f64 / 10_000.0
    }

    #[test]
    fn local_first_holds_80_20_within_one_percent() {
        let share = local_share(&Preferred::local(0.8), &mixed());
        assert!((share - 0.8).abs() <= 0.01, "local share {share}");
    }

    #[test]
    fn remote_first_is_the_mirror() {
        let share = local_share(&Preferred::remote(0.8), &mixed());
        assert!((share - 0.2).abs() <= 0.01, "local share {share}");
    }

    #[test]
    fn spills_to_the_other_kind_when_the_preferred_one_is_missing() {
        let remote_only: Vec<Candidate> = mixed().into_iter().filter(|c| !c.local).collect();
        assert_eq!(local_share(&Preferred::local(0.8), &remote_only), 0.0);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            Preferred::local(0.8)
                .order(&remote_only, &|_| 0.0, &mut rng)
                .len(),
            2
        );
    }
}
