//! Cache: answers a request from the result cache when it holds the answer for the model
//! in rotation and the exact encoding; on a miss the layer below computes it once for
//! every concurrent caller of that key, each waiting no longer than its own deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use qnllm_engine::Digest;

use super::{Request, Route};
use crate::backend::{Answer, ModelState};
use crate::cache::ResultCache;
use crate::router::RouterError;

/// The cache and its switch, kept by the router across policy changes.
#[derive(Debug)]
pub(crate) struct CacheState {
    pub(crate) cache: ResultCache,
    enabled: AtomicBool,
    last_model: Mutex<Option<Digest>>,
}

impl CacheState {
    pub(crate) fn new(capacity: usize) -> CacheState {
        CacheState {
            cache: ResultCache::new(capacity),
            enabled: AtomicBool::new(true),
            last_model: Mutex::new(None),
        }
    }

    /// Turns lookups on or off; entries are kept.
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// The digest of the model in rotation, or, with every engine gone, the last one seen,
    /// so cached answers are still served (graceful degradation).
    fn serving_model(&self, head: Option<ModelState>) -> Option<Digest> {
        let mut last = self
            .last_model
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(head) = head {
            *last = Some(head.digest);
        }
        *last
    }
}

/// The cache layer over `S`.
#[derive(Debug)]
pub(crate) struct Cache<S> {
    inner: S,
    state: Arc<CacheState>,
}

impl<S> Cache<S> {
    pub(crate) fn new(inner: S, state: Arc<CacheState>) -> Cache<S> {
        Cache { inner, state }
    }
}

impl<S: Route> Route for Cache<S> {
    async fn route<'a>(&'a self, request: Request<'a>) -> Result<Answer, RouterError> {
        let state = &*self.state;
        if request.no_cache || !state.enabled.load(Ordering::Relaxed) {
            return self.inner.route(request).await;
        }
        // The model (what keys start with) is only looked up when the cache is read.
        let Some(model) = state.serving_model(request.head) else {
            return self.inner.route(request).await;
        };
        let budget = request.budget;
        let expired = || RouterError::DeadlineExceeded { budget, tried: 0 };
        let (answer, cached) = state
            .cache
            .get_or_compute(
                model,
                request.encoding,
                request.left(),
                self.inner.route(request),
                expired,
            )
            .await?;
        Ok(Answer { cached, ..answer })
    }
}
