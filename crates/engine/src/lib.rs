//! The `Engine` trait and the reference engine: a leaky integrate-and-fire spiking network
//! that uses integer arithmetic only, so every implementation in every language, thread
//! count and SIMD width gives bit-identical results. `docs/engine.md` is its specification.
//!
//! # Examples
//!
//! ```
//! use qnllm_engine::{Engine, NormalInputs, Params, SpikingEngine};
//!
//! let engine = SpikingEngine::from_seed(1, Params::default()).unwrap();
//! let x = NormalInputs::new(7, 768).next().unwrap();
//! let first = engine.reason(&x).unwrap();
//! assert_eq!(engine.reason(&x).unwrap().result_digest, first.result_digest);
//! assert!(first.confidence > 0.0 && first.confidence <= 1.0);
//! ```

mod digest;
mod engine;
mod error;
mod fixed;
mod kernel;
mod model;
mod params;
mod prng;
mod reasoning;
mod spiking;
mod store;

pub use digest::Digest;
pub use engine::{Engine, Learned, ModelInfo};
pub use error::{EngineError, ModelFileError};
pub use fixed::FixedEngine;
pub use kernel::{available_kernels, Kernel};
pub use model::Model;
pub use params::Params;
pub use prng::{NormalInputs, SplitMix64};
pub use reasoning::Reasoning;
pub use spiking::SpikingEngine;
