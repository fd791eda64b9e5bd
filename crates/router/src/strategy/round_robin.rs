//! Round-robin: each request starts at the next engine in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Hands out starting positions 0, 1, 2, … modulo the number of engines.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// The position to start at among `len` engines (`len > 0`).
    pub fn start(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alternates_exactly() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..1_000).map(|_| rr.start(2)).collect();
        assert!(picks.chunks(2).all(|pair| pair == [0, 1]));
        let rr = RoundRobin::default();
        let mut counts = [0; 3];
        for _ in 0..999 {
            counts[rr.start(3)] += 1;
        }
        assert_eq!(counts, [333, 333, 333]);
    }
}
