//! `cargo bench -p qnllm-router --bench cache_policy`: hit ratio of the result cache's
//! policy next to a plain LRU of the same capacity, on the same request streams.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use qnllm_engine::{Digest, Reasoning};
use qnllm_router::{Answer, ResultCache};

/// A textbook LRU: key → last use, ordered by last use.
struct Lru {
    capacity: usize,
    tick: u64,
    by_key: HashMap<u64, u64>,
    by_tick: BTreeMap<u64, u64>,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            capacity,
            tick: 0,
            by_key: HashMap::new(),
            by_tick: BTreeMap::new(),
        }
    }

    /// Whether `key` was a hit; inserts it either way.
    fn access(&mut self, key: u64) -> bool {
        self.tick += 1;
        let hit = match self.by_key.insert(key, self.tick) {
            Some(old) => {
                self.by_tick.remove(&old);
                true
            }
            None => false,
        };
        self.by_tick.insert(self.tick, key);
        if self.by_key.len() > self.capacity {
            let (&oldest, &victim) = self.by_tick.iter().next().unwrap();
            self.by_tick.remove(&oldest);
            self.by_key.remove(&victim);
        }
        hit
    }
}

fn answer() -> Answer {
    let reasoning = Reasoning {
        label: 0,
        confidence: 1.0,
        scores: vec![],
        total_spikes: 0,
        label_spikes: vec![],
        model_version: 0,
        model_digest: Digest::default(),
        result_digest: Digest::default(),
    };
    Answer::new(reasoning, "x", Duration::ZERO)
}

/// Streams of keys: a hot set with Zipf-like popularity, mixed with one-off keys (scans).
fn stream(seed: u64, n: usize, hot: u64, one_off_share: f64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut next_unique = 1 << 40;
    (0..n)
        .map(|_| {
            if rng.f64() < one_off_share {
                next_unique += 1;
                next_unique
            } else {
                // Inverse-power draw: key k has weight about 1 / k.
                let u = rng.f64();
                ((hot as f64).powf(u) as u64).min(hot - 1)
            }
        })
        .collect()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<44} {:>8} {:>10} {:>10}",
        "stream (200 000 requests)", "capacity", "LRU", "qnllm cache"
    );
    for (name, hot, one_off, capacity) in [
        ("hot set of 2 000, no one-offs", 2_000, 0.0, 500),
        ("hot set of 2 000, 30 % one-off encodings", 2_000, 0.3, 500),
        ("hot set of 2 000, 60 % one-off encodings", 2_000, 0.6, 500),
        (
            "hot set of 20 000, 30 % one-off encodings",
            20_000,
            0.3,
            2_000,
        ),
    ] {
        let keys = stream(7, 200_000, hot, one_off);
        let mut lru = Lru::new(capacity);
        let lru_hits = keys.iter().filter(|&&k| lru.access(k)).count();
        let cache = ResultCache::new(capacity);
        runtime.block_on(async {
            for &k in &keys {
                let encoding = [f32::from_bits(k as u32), f32::from_bits((k >> 32) as u32)];
                let _ = cache
                    .get_or_compute::<()>(
                        Digest::default(),
                        &encoding,
                        Duration::from_secs(1),
                        async { Ok(answer()) },
                        || (),
                    )
                    .await;
            }
        });
        let ratio = |hits: usize| hits as f64 / keys.len() as f64 * 100.0;
        println!(
            "{name:<44} {capacity:>8} {:>9.1}% {:>9.1}%",
            ratio(lru_hits),
            cache.stats().hit_ratio * 100.0
        );
    }
}
