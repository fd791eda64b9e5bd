//! `ResultCache`: answers keyed by model digest and the exact bytes of the encoding.
//!
//! The policy is quick_cache's (S3-FIFO-like: a small probation queue in front of the main
//! one, so one-off encodings do not push out the ones that repeat): on the streams of
//! `benches/cache_policy.rs` it hits 5–11 points more often than LRU. Keys are compared in
//! full, so a hash
//! collision never produces a wrong hit. Concurrent misses on one key compute once: the
//! first caller computes, the others wait for its answer, each no longer than its own
//! deadline. An answer is stored under the model that produced it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qnllm_engine::Digest;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};
use serde::Serialize;

use crate::backend::Answer;

/// Model digest plus the encoding's raw little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    model: Digest,
    bytes: Box<[u8]>,
}

/// Counts evictions as quick_cache reports them.
#[derive(Debug, Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<Key, Answer> for Evictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Key, _val: Answer) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Cache statistics (all zero for a router without a cache).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CacheStats {
    /// Entries held.
    pub entries: u64,
    /// Most entries held.
    pub capacity: u64,
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that were not.
    pub misses: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// `hits / (hits + misses)`, 0 before any lookup.
    pub hit_ratio: f64,
}

/// A bounded result cache.
pub struct ResultCache {
    cache: Cache<Key, Answer, UnitWeighter, DefaultHashBuilder, Evictions>,
    evictions: Evictions,
    capacity: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl ResultCache {
    /// A cache of at most `capacity` answers (at least 1).
    pub fn new(capacity: usize) -> ResultCache {
        let capacity = capacity.max(1);
        let evictions = Evictions::default();
        let cache = Cache::with(
            capacity,
            capacity as u64,
            UnitWeighter,
            DefaultHashBuilder::default(),
            evictions.clone(),
        );
        ResultCache {
            cache,
            evictions,
            capacity: capacity as u64,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached answer for `(model, encoding)`, or the one `compute` produces. The flag
    /// says whether it came from the cache.
    ///
    /// A computed answer is stored under the digest of the model that produced it (its
    /// `reasoning.model_digest`): under `model` when that is the one, and under its own
    /// model's key otherwise (the rotation moved on while it computed), so an answer is
    /// never served as another model's. A caller that waits for another caller's computation
    /// of the same key waits at most `wait` (what is left of its own deadline), then gets
    /// `expired()`.
    ///
    /// # Errors
    ///
    /// `compute`'s error (nothing is stored, and a waiting caller computes itself), or
    /// `expired()`.
    pub async fn get_or_compute<E>(
        &self,
        model: Digest,
        encoding: &[f32],
        wait: Duration,
        compute: impl std::future::Future<Output = Result<Answer, E>>,
        expired: impl FnOnce() -> E,
    ) -> Result<(Answer, bool), E> {
        let key = Key {
            model,
            bytes: encoding.iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let lookup = tokio::time::timeout(wait, self.cache.get_value_or_guard_async(&key));
        match lookup.await {
            Err(_) => Err(expired()),
            Ok(Ok(answer)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok((answer, true))
            }
            Ok(Err(guard)) => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let answer = compute.await?;
                if answer.reasoning.model_digest == model {
                    let _ = guard.insert(answer.clone());
                } else {
                    drop(guard); // waiters on `model` compute for themselves
                    let key = Key {
                        model: answer.reasoning.model_digest,
                        bytes: key.bytes,
                    };
                    self.cache.insert(key, answer.clone());
                }
                Ok((answer, false))
            }
        }
    }

    /// Drops every entry (statistics are kept).
    pub fn clear(&self) {
        self.cache.clear();
    }

    /// Current statistics.
    pub fn stats(&self) -> CacheStats {
        let (hits, misses) = (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        );
        CacheStats {
            entries: self.cache.len() as u64,
            capacity: self.capacity,
            hits,
            misses,
            evictions: self.evictions.0.load(Ordering::Relaxed),
            hit_ratio: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
        }
    }
}
