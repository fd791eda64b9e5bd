//! `LocalBackend`: an engine in this process, behind the same trait as a remote one.

use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use std::time::{Duration, Instant};

use qnllm_engine::{Engine, EngineError, Learned, ModelInfo};

use crate::backend::{EngineInfo, ModelState};

use crate::backend::{Answer, Backend, BackendError, BackendFuture};

/// Any [`Engine`] in this process. Reasoning takes a read lock; learning a write lock.
/// Calls are lazy: the engine computes when the router polls the future, inside its timer.
#[derive(Clone)]
pub struct LocalBackend {
    name: String,
    engine: Arc<RwLock<dyn Engine>>,
    /// The model's version and digest, updated by every learning update (the only way the
    /// engine changes), so the router reads them per request without a lock or `info()`.
    state: Arc<ArcSwap<ModelState>>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LocalBackend {
    /// Wraps `engine` under `name`.
    pub fn new(name: impl Into<String>, engine: impl Engine + 'static) -> LocalBackend {
        let info = engine.info();
        LocalBackend {
            name: name.into(),
            engine: Arc::new(RwLock::new(engine)),
            state: Arc::new(ArcSwap::from_pointee(ModelState {
                version: info.version,
                digest: info.digest,
            })),
        }
    }

    /// The backend error for an engine error: the caller's fault (a bad encoding or label,
    /// which no engine would take) or this engine's failure (which another may not share).
    fn failure(&self, err: EngineError) -> BackendError {
        if is_bad_input(&err) {
            BackendError::InvalidInput(err.to_string())
        } else {
            BackendError::Failed {
                engine: self.name.clone(),
                reason: err.to_string(),
            }
        }
    }

    fn set_state(&self, version: u64, digest: qnllm_engine::Digest) {
        self.state.store(Arc::new(ModelState { version, digest }));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, dyn Engine> {
        // A panic while holding the lock cannot leave the engine half-updated: learning
        // computes the update before it writes, so a poisoned lock is still consistent.
        self.engine
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The model this engine serves.
    pub fn info(&self) -> ModelInfo {
        self.read().info()
    }

    /// Applies a learning update.
    ///
    /// # Errors
    ///
    /// The engine's refusal (unknown label, bad encoding).
    pub fn learn(&self, encoding: &[f32], label: u32) -> Result<Learned, EngineError> {
        let mut engine = self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let learned = engine.learn(encoding, label)?;
        self.set_state(learned.version, learned.digest);
        Ok(learned)
    }

    /// Applies a learning update only if the model is at `base_version` (checked and applied
    /// under one lock).
    ///
    /// # Errors
    ///
    /// [`BackendError::VersionConflict`], [`BackendError::InvalidInput`] for a bad
    /// encoding or label, [`BackendError::Failed`] when the engine itself failed.
    pub fn learn_at(
        &self,
        encoding: &[f32],
        label: u32,
        base_version: u64,
    ) -> Result<ModelState, BackendError> {
        let mut engine = self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let actual = engine.info().version;
        if actual != base_version {
            return Err(BackendError::VersionConflict {
                engine: self.name.clone(),
                expected: base_version,
                actual,
            });
        }
        let learned = engine.learn(encoding, label).map_err(|e| self.failure(e))?;
        self.set_state(learned.version, learned.digest);
        Ok(ModelState {
            version: learned.version,
            digest: learned.digest,
        })
    }

    /// The model as a model file ([`Engine::export_model`]) with the state it is at, read
    /// under one lock; `None` when the engine cannot export it.
    pub fn export_model(&self) -> Option<(ModelState, Vec<u8>)> {
        let engine = self.read();
        let bytes = engine.export_model()?;
        let info = engine.info();
        let state = ModelState {
            version: info.version,
            digest: info.digest,
        };
        Some((state, bytes))
    }

    /// Replaces the model with an exported one ([`Engine::import_model`]) and returns the
    /// state it is at now.
    ///
    /// # Errors
    ///
    /// The engine's refusal: not a model file, other parameters, or an engine that cannot
    /// replace its model.
    pub fn import_model(&self, model: &[u8]) -> Result<ModelState, EngineError> {
        let mut engine = self
            .engine
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        engine.import_model(model)?;
        let info = engine.info();
        self.set_state(info.version, info.digest);
        Ok(ModelState {
            version: info.version,
            digest: info.digest,
        })
    }

    /// Reasons synchronously: what a worker process runs for each request.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidInput`] for a bad encoding, [`BackendError::Failed`] when the
    /// engine itself failed.
    pub fn reason_now(&self, encoding: &[f32]) -> Result<Answer, BackendError> {
        let started = Instant::now();
        let reasoning = self.read().reason(encoding).map_err(|e| self.failure(e))?;
        Ok(Answer::new(reasoning, self.name.clone(), started.elapsed()))
    }

    /// Reasons over a flat batch synchronously.
    ///
    /// # Errors
    ///
    /// [`BackendError::InvalidInput`] naming the first bad encoding, or
    /// [`BackendError::Failed`] when the engine itself failed on one.
    pub fn reason_batch_now(
        &self,
        values: &[f32],
        dim: usize,
    ) -> Result<Vec<Answer>, BackendError> {
        let started = Instant::now();
        let encodings: Vec<&[f32]> = values.chunks(dim.max(1)).collect();
        let results = self
            .read()
            .reason_batch(&encodings)
            .map_err(|e| self.failure(e))?;
        let each = started.elapsed() / results.len().max(1) as u32;
        Ok(results
            .into_iter()
            .map(|reasoning| Answer::new(reasoning, self.name.clone(), each))
            .collect())
    }
}

/// Whether `err` blames the request rather than the engine.
fn is_bad_input(err: &EngineError) -> bool {
    match err {
        EngineError::WrongLength { .. }
        | EngineError::NotFinite { .. }
        | EngineError::UnknownLabel { .. } => true,
        EngineError::InBatch { reason, .. } => is_bad_input(reason),
        _ => false,
    }
}

impl Backend for LocalBackend {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn model_digest(&self) -> qnllm_engine::Digest {
        self.model_state().digest
    }

    fn model_state(&self) -> ModelState {
        **self.state.load()
    }

    fn describe(&self) -> EngineInfo {
        let info = self.info();
        EngineInfo {
            name: self.name.clone(),
            kind: "local",
            input_size: info.params.inputs,
            labels: info.params.labels,
            model_version: info.version,
            model_digest: info.digest,
        }
    }

    fn reason<'a>(
        &'a self,
        encoding: &'a [f32],
        _budget: Duration,
    ) -> BackendFuture<'a, Result<Answer, BackendError>> {
        // One reasoning takes microseconds: running it inline is cheaper than a thread hop.
        // It runs when polled, not here, so the router's timer and hedge see its time.
        Box::pin(async move { self.reason_now(encoding) })
    }

    fn learn<'a>(
        &'a self,
        encoding: &'a [f32],
        label: u32,
        base_version: u64,
        _budget: Duration,
    ) -> BackendFuture<'a, Result<ModelState, BackendError>> {
        Box::pin(async move { self.learn_at(encoding, label, base_version) })
    }

    fn reason_batch<'a>(
        &'a self,
        values: &'a [f32],
        dim: usize,
        _budget: Duration,
    ) -> BackendFuture<'a, Result<Vec<Answer>, BackendError>> {
        let this = self.clone();
        let values = values.to_vec();
        Box::pin(async move {
            // A batch can take milliseconds: keep it off the async worker threads.
            tokio::task::spawn_blocking(move || this.reason_batch_now(&values, dim))
                .await
                .unwrap_or_else(|e| {
                    Err(BackendError::Failed {
                        engine: "local".into(),
                        reason: e.to_string(),
                    })
                })
        })
    }
}
