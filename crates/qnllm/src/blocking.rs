//! A blocking `UnifiedEngine` for code without an async runtime: it owns one.

use std::time::Duration;

use qnllm_router::{Answer, Coordination, ModelState};

use crate::builder::Builder;
use crate::error::Error;
use crate::unified::Metrics;

/// [`crate::UnifiedEngine`] with blocking methods.
#[derive(Debug)]
pub struct UnifiedEngine {
    runtime: tokio::runtime::Runtime,
    inner: Option<crate::UnifiedEngine>,
}

impl UnifiedEngine {
    /// Builds from `builder` on a runtime of its own.
    ///
    /// # Errors
    ///
    /// As [`Builder::build`], or when the runtime cannot start.
    pub fn new(builder: Builder) -> Result<UnifiedEngine, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Hub(qnllm_hub::HubError::Runtime(e)))?;
        let inner = runtime.block_on(async { builder.build() })?;
        Ok(UnifiedEngine {
            runtime,
            inner: Some(inner),
        })
    }

    fn inner(&self) -> &crate::UnifiedEngine {
        // `inner` is only taken by `stop`, which consumes `self`.
        #[allow(clippy::expect_used)]
        self.inner.as_ref().expect("present until stop")
    }

    /// Starts the embedded hub.
    ///
    /// # Errors
    ///
    /// As [`crate::UnifiedEngine::start`].
    pub fn start(&mut self) -> Result<(), Error> {
        let inner = self.inner.as_mut();
        match inner {
            Some(inner) => self.runtime.block_on(inner.start()),
            None => Ok(()),
        }
    }

    /// Reasons over one encoding.
    ///
    /// # Errors
    ///
    /// As [`crate::UnifiedEngine::reason`].
    pub fn reason(&self, encoding: &[f32]) -> Result<Answer, Error> {
        self.runtime.block_on(self.inner().reason(encoding))
    }

    /// Reasons over a batch.
    ///
    /// # Errors
    ///
    /// As [`crate::UnifiedEngine::reason_batch`].
    pub fn reason_batch(&self, encodings: &[Vec<f32>]) -> Result<Vec<Answer>, Error> {
        self.runtime.block_on(self.inner().reason_batch(encodings))
    }

    /// Multi-teacher coordination.
    ///
    /// # Errors
    ///
    /// As [`crate::UnifiedEngine::coordinate`].
    pub fn coordinate(&self, encoding: &[f32], learn: bool) -> Result<Coordination, Error> {
        self.runtime
            .block_on(self.inner().coordinate(encoding, learn))
    }

    /// Teaches every engine in rotation.
    ///
    /// # Errors
    ///
    /// As [`crate::UnifiedEngine::learn`].
    pub fn learn(&self, encoding: &[f32], label: u32) -> Result<Option<ModelState>, Error> {
        self.runtime.block_on(self.inner().learn(encoding, label))
    }

    /// Every figure.
    pub fn metrics(&self) -> Metrics {
        self.inner().metrics()
    }

    /// Stops the hub and waits for it, at most `grace`.
    pub fn stop(mut self, grace: Duration) {
        if let Some(inner) = self.inner.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(grace, inner.stop()).await });
        }
    }
}
