//! `SpikingEngine`: the reference `Engine`, a model plus a kernel choice and a thread count.

use std::cell::RefCell;
use std::num::NonZeroUsize;

use crate::digest::Digest;
use crate::engine::{Engine, Learned, ModelInfo};
use crate::error::EngineError;
use crate::kernel::{Activity, Kernel};
use crate::model::Model;
use crate::params::Params;
use crate::reasoning::{argmax, Reasoning};

thread_local! {
    /// Scratch buffers reused by every forward pass on this thread: no allocation per call
    /// beyond the result's own vectors.
    static SCRATCH: RefCell<Activity> = RefCell::new(Activity::default());
}

/// The reference engine: a [`Model`] run by the fastest [`Kernel`] the CPU has.
#[derive(Debug, Clone)]
pub struct SpikingEngine {
    model: Model,
    kernel: Kernel,
    threads: NonZeroUsize,
}

impl SpikingEngine {
    /// An engine for `model`, with the best kernel and one thread per batch.
    pub fn new(model: Model) -> SpikingEngine {
        SpikingEngine {
            model,
            kernel: Kernel::best(),
            threads: NonZeroUsize::MIN,
        }
    }

    /// An engine for the model `seed:SEED`.
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidParams`] when `params` fail validation.
    pub fn from_seed(seed: u64, params: Params) -> Result<SpikingEngine, EngineError> {
        Ok(SpikingEngine::new(Model::from_seed(seed, params)?))
    }

    /// Uses `kernel` (from [`crate::available_kernels`]) instead of the best one.
    pub fn with_kernel(mut self, kernel: Kernel) -> SpikingEngine {
        if crate::kernel::available_kernels().contains(&kernel) {
            self.kernel = kernel;
        }
        self
    }

    /// Splits batches over `threads` threads. Results do not depend on the count.
    pub fn with_threads(mut self, threads: NonZeroUsize) -> SpikingEngine {
        self.threads = threads;
        self
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Checks an encoding: the model's length, and every value finite.
    ///
    /// # Errors
    ///
    /// [`EngineError::WrongLength`], or [`EngineError::NotFinite`] with the first bad index.
    pub fn validate(&self, encoding: &[f32]) -> Result<(), EngineError> {
        let expected = self.model.params().inputs as usize;
        if encoding.len() != expected {
            return Err(EngineError::WrongLength {
                expected,
                found: encoding.len(),
            });
        }
        match encoding.iter().position(|x| !x.is_finite()) {
            Some(index) => Err(EngineError::NotFinite {
                index,
                value: encoding[index],
            }),
            None => Ok(()),
        }
    }

    /// Runs the network on a validated encoding with this thread's scratch buffers.
    fn run<T>(&self, encoding: &[f32], then: impl FnOnce(&Activity) -> T) -> T {
        SCRATCH.with(|scratch| {
            let mut activity = scratch.borrow_mut();
            self.kernel
                .forward(self.model.net(), encoding, &mut activity);
            then(&activity)
        })
    }

    fn reason_valid(&self, encoding: &[f32]) -> Reasoning {
        self.run(encoding, |activity| {
            Reasoning::from_activity(activity, self.model.version(), self.model.digest())
        })
    }
}

impl Engine for SpikingEngine {
    fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.model.name().to_string(),
            params: *self.model.params(),
            version: self.model.version(),
            digest: self.model.digest(),
        }
    }

    fn digest(&self) -> Digest {
        self.model.digest()
    }

    fn reason(&self, encoding: &[f32]) -> Result<Reasoning, EngineError> {
        self.validate(encoding)?;
        Ok(self.reason_valid(encoding))
    }

    fn reason_batch(&self, encodings: &[&[f32]]) -> Result<Vec<Reasoning>, EngineError> {
        for (item, x) in encodings.iter().enumerate() {
            self.validate(x).map_err(|e| EngineError::InBatch {
                item,
                reason: Box::new(e),
            })?;
        }
        let threads = self.threads.get().min(encodings.len());
        if threads <= 1 {
            return Ok(encodings.iter().map(|x| self.reason_valid(x)).collect());
        }
        // Contiguous chunks, joined in order: the output order is the input order.
        let chunk = encodings.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = encodings
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|x| self.reason_valid(x))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(encodings.len());
            for handle in handles {
                match handle.join() {
                    Ok(part) => out.extend(part),
                    // A panic in a worker thread is a bug in this crate; pass it on unchanged.
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            Ok(out)
        })
    }

    fn learn(&mut self, encoding: &[f32], label: u32) -> Result<Learned, EngineError> {
        let labels = self.model.params().labels;
        if label >= labels {
            return Err(EngineError::UnknownLabel { label, labels });
        }
        self.validate(encoding)?;
        // One forward pass with the served readout gives what `reason` would answer, and
        // the hidden spike counts, which do not depend on any readout.
        let (predicted, hidden_spikes, total) = self.run(encoding, |a| {
            (argmax(&a.scores), a.hidden_spikes.clone(), a.total_spikes)
        });
        let changed = self.model.apply_update(&hidden_spikes, total, label);
        Ok(Learned {
            predicted,
            changed,
            version: self.model.version(),
            digest: self.model.digest(),
        })
    }

    fn export_model(&self) -> Option<Vec<u8>> {
        self.model.to_safetensors().ok()
    }

    fn import_model(&mut self, model: &[u8]) -> Result<(), EngineError> {
        let model = Model::from_safetensors(model, "the imported model")?;
        if model.params() != self.model.params() {
            return Err(EngineError::InvalidParams(format!(
                "the imported model has parameters {:?}, this engine's are {:?}",
                model.params(),
                self.model.params()
            )));
        }
        self.model = model;
        Ok(())
    }
}
