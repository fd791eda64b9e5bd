//! Loading and saving models as safetensors files.
//!
//! A model file holds the tensors `input_weights` (`I8`, `[hidden, inputs]`),
//! `readout_weights` (`I16`, `[labels, hidden]`) and `served_readout` (`I32`,
//! `[labels, hidden]`; a file without it loads with `A = R · 256`), and string metadata:
//! `format` = `qnllm-spiking-v1`, `name`, `version`, and every [`Params`] field by name.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{EngineError, ModelFileError};
use crate::model::Model;
use crate::params::Params;

const FORMAT: &str = "qnllm-spiking-v1";

impl Model {
    /// Writes the model to `path` as safetensors.
    ///
    /// # Errors
    ///
    /// [`ModelFileError::Io`] when the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let io = |source: std::io::Error| ModelFileError::Io {
            path: path.display().to_string(),
            source,
        };
        let bytes = self
            .to_safetensors()
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        std::fs::write(path, bytes).map_err(io)?;
        Ok(())
    }

    /// The model file [`Model::save`] writes, as bytes (a snapshot sent over a network).
    ///
    /// # Errors
    ///
    /// [`EngineError::InvalidParams`] when the tensors cannot be framed (never for a model
    /// whose parameters validated).
    pub fn to_safetensors(&self) -> Result<Vec<u8>, EngineError> {
        let p = self.params();
        let input: Vec<u8> = self.input_weights().iter().map(|&w| w as u8).collect();
        let readout: Vec<u8> = self
            .readout()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let served: Vec<u8> = self
            .served_readout()
            .iter()
            .flat_map(|a| a.to_le_bytes())
            .collect();
        let shape = |a: u32, b: u32| vec![a as usize, b as usize];
        let view = |dtype, shape, data| {
            TensorView::new(dtype, shape, data)
                .map_err(|e| EngineError::InvalidParams(e.to_string()))
        };
        let tensors = [
            (
                "input_weights",
                view(Dtype::I8, shape(p.hidden, p.inputs), &input[..])?,
            ),
            (
                "readout_weights",
                view(Dtype::I16, shape(p.labels, p.hidden), &readout[..])?,
            ),
            (
                "served_readout",
                view(Dtype::I32, shape(p.labels, p.hidden), &served[..])?,
            ),
        ];
        let mut meta: HashMap<String, String> = params_to_map(p);
        meta.insert("format".into(), FORMAT.into());
        meta.insert("name".into(), self.name().into());
        meta.insert("version".into(), self.version().to_string());
        safetensors::serialize(tensors, &Some(meta))
            .map_err(|e| EngineError::InvalidParams(e.to_string()))
    }

    /// Reads a model written by [`Model::save`] (or by any tool that follows the format).
    ///
    /// # Errors
    ///
    /// [`ModelFileError`] saying what is missing or wrong, or [`EngineError::InvalidParams`]
    /// when the stored parameters are out of bounds.
    pub fn load(path: &Path) -> Result<Model, EngineError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ModelFileError::Io {
            path: shown.clone(),
            source,
        })?;
        Model::from_safetensors(&bytes, &shown)
    }

    /// Reads a model file's bytes, as [`Model::load`] does; errors name the file `shown`.
    ///
    /// # Errors
    ///
    /// As [`Model::load`], but no I/O error.
    pub fn from_safetensors(bytes: &[u8], shown: &str) -> Result<Model, EngineError> {
        let shown = shown.to_string();
        let format_error = |reason: String| {
            EngineError::from(ModelFileError::Format {
                path: shown.clone(),
                reason,
            })
        };
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| ModelFileError::NotSafetensors {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        let tensors =
            SafeTensors::deserialize(bytes).map_err(|e| ModelFileError::NotSafetensors {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key)
                .ok_or_else(|| format_error(format!("metadata has no `{key}`")))
        };
        let number = |key: &str| -> Result<i64, EngineError> {
            field(key)?
                .parse()
                .map_err(|_| format_error(format!("metadata `{key}` is not an integer")))
        };
        if field("format")? != FORMAT {
            return Err(format_error(format!(
                "format is `{}`, expected `{FORMAT}`",
                field("format")?
            )));
        }
        let unsigned = |key: &str| -> Result<u32, EngineError> {
            u32::try_from(number(key)?)
                .map_err(|_| format_error(format!("metadata `{key}` is out of range")))
        };
        let signed = |key: &str| -> Result<i32, EngineError> {
            i32::try_from(number(key)?)
                .map_err(|_| format_error(format!("metadata `{key}` is out of range")))
        };
        let params = Params {
            inputs: unsigned("inputs")?,
            hidden: unsigned("hidden")?,
            steps: unsigned("steps")?,
            labels: unsigned("labels")?,
            hidden_leak_shift: unsigned("hidden_leak_shift")?,
            hidden_threshold: signed("hidden_threshold")?,
            output_leak_shift: unsigned("output_leak_shift")?,
            output_threshold: signed("output_threshold")?,
        };
        params.validate()?;
        // Read as u64, not through the i64 of the other fields: learning counts versions
        // past 2^63, and a model saved there must load.
        let version: u64 = field("version")?.parse().map_err(|_| {
            format_error("metadata `version` is not an integer from 0 to 2^64 - 1".into())
        })?;
        // A tensor present with exactly this dtype and shape; `None` when it is absent.
        let optional = |name: &str, dtype: Dtype, shape: [u32; 2]| {
            let Ok(view) = tensors.tensor(name) else {
                return Ok(None);
            };
            let want: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            if view.dtype() != dtype || view.shape() != want.as_slice() {
                return Err(format_error(format!(
                    "tensor `{name}` is {:?} {:?}, expected {dtype:?} {want:?}",
                    view.dtype(),
                    view.shape()
                )));
            }
            Ok(Some(view.data().to_vec()))
        };
        let tensor = |name: &str, dtype: Dtype, shape: [u32; 2]| {
            optional(name, dtype, shape)?.ok_or_else(|| format_error(format!("no tensor `{name}`")))
        };
        let readout_shape = [params.labels, params.hidden];
        let input = tensor("input_weights", Dtype::I8, [params.hidden, params.inputs])?;
        let readout: Vec<i16> = tensor("readout_weights", Dtype::I16, readout_shape)?
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        // A file written before the served readout existed serves its readout as is.
        let served = optional("served_readout", Dtype::I32, readout_shape)?.map(|bytes| {
            bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect::<Vec<i32>>()
        });
        let (name, input) = (
            field("name")?.clone(),
            input.into_iter().map(|b| b as i8).collect(),
        );
        match served {
            Some(served) => Model::from_parts_served(name, params, input, readout, served, version),
            None => Model::from_parts(name, params, input, readout, version),
        }
        .map_err(|e| match e {
            // Out-of-range weights are a fault of the file: name it.
            EngineError::InvalidParams(reason) => format_error(reason),
            other => other,
        })
    }
}

fn params_to_map(p: &Params) -> HashMap<String, String> {
    [
        ("inputs", i64::from(p.inputs)),
        ("hidden", i64::from(p.hidden)),
        ("steps", i64::from(p.steps)),
        ("labels", i64::from(p.labels)),
        ("hidden_leak_shift", i64::from(p.hidden_leak_shift)),
        ("hidden_threshold", i64::from(p.hidden_threshold)),
        ("output_leak_shift", i64::from(p.output_leak_shift)),
        ("output_threshold", i64::from(p.output_threshold)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn saved_at(version: u64, file: &str) -> (Model, std::path::PathBuf) {
        let seeded = Model::from_seed(1, Params::default()).unwrap();
        let model = Model::from_parts(
            seeded.name().to_string(),
            *seeded.params(),
            seeded.input_weights().to_vec(),
            seeded.readout().to_vec(),
            version,
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("qnllm-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file);
        model.save(&path).unwrap();
        (model, path)
    }

    /// A learnt model's file, rewritten with `served` in place of its `served_readout`
    /// tensor (`None`: without one, as files were before it existed).
    fn file_with_served(served: Option<(Dtype, Vec<usize>, Vec<u8>)>) -> (Model, Vec<u8>) {
        let mut model = Model::from_seed(1, Params::default()).unwrap();
        for (step, count) in [3, 1, 4, 1, 5].into_iter().enumerate() {
            model.apply_update(&[count; 512], 512 * count as u32, step as u32);
        }
        let p = *model.params();
        let input: Vec<u8> = model.input_weights().iter().map(|&w| w as u8).collect();
        let readout: Vec<u8> = model
            .readout()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut tensors = vec![
            (
                "input_weights",
                TensorView::new(Dtype::I8, vec![512, 768], &input[..]).unwrap(),
            ),
            (
                "readout_weights",
                TensorView::new(Dtype::I16, vec![10, 512], &readout[..]).unwrap(),
            ),
        ];
        if let Some((dtype, shape, data)) = &served {
            tensors.push((
                "served_readout",
                TensorView::new(*dtype, shape.clone(), &data[..]).unwrap(),
            ));
        }
        let mut meta = params_to_map(&p);
        meta.insert("format".into(), FORMAT.into());
        meta.insert("name".into(), model.name().into());
        meta.insert("version".into(), model.version().to_string());
        let bytes = safetensors::serialize(tensors, &Some(meta)).unwrap();
        (model, bytes)
    }

    fn served_bytes(values: &[i32]) -> Vec<u8> {
        values.iter().flat_map(|a| a.to_le_bytes()).collect()
    }

    #[test]
    fn a_saved_model_keeps_its_served_readout() {
        let (model, _) = file_with_served(None);
        assert_ne!(model.reasoning_readout(), model.readout(), "S lags R");
        let loaded = Model::from_safetensors(&model.to_safetensors().unwrap(), "m").unwrap();
        assert_eq!(loaded.served_readout(), model.served_readout());
        assert_eq!(loaded.digest(), model.digest());
        assert_eq!(loaded, model);
    }

    #[test]
    fn a_file_without_served_readout_serves_its_readout() {
        let (model, bytes) = file_with_served(None);
        let loaded = Model::from_safetensors(&bytes, "old.safetensors").unwrap();
        assert_eq!(loaded.readout(), model.readout());
        assert_eq!(loaded.version(), model.version());
        let times_256: Vec<i32> = model
            .readout()
            .iter()
            .map(|&r| i32::from(r) * 256)
            .collect();
        assert_eq!(loaded.served_readout(), &times_256[..]);
        assert_eq!(loaded.reasoning_readout(), model.readout());
        // The same R and version with another A: another digest.
        assert_ne!(loaded.digest(), model.digest());
        // And it is the model those parts make.
        let parts = Model::from_parts(
            model.name().into(),
            *model.params(),
            model.input_weights().to_vec(),
            model.readout().to_vec(),
            model.version(),
        )
        .unwrap();
        assert_eq!(loaded.digest(), parts.digest());
    }

    #[test]
    fn a_served_readout_of_another_dtype_or_shape_is_refused() {
        let (model, _) = file_with_served(None);
        let as_i16: Vec<u8> = model
            .reasoning_readout()
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let (_, bytes) = file_with_served(Some((Dtype::I16, vec![10, 512], as_i16)));
        let err = Model::from_safetensors(&bytes, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "m.safetensors: not a qnllm spiking model: tensor `served_readout` is I16 [10, 512], expected I32 [10, 512]"
        );
        let served = served_bytes(&model.served_readout()[..9 * 512]);
        let (_, bytes) = file_with_served(Some((Dtype::I32, vec![9, 512], served)));
        let err = Model::from_safetensors(&bytes, "m.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tensor `served_readout` is I32 [9, 512], expected I32 [10, 512]"),
            "{err}"
        );
    }

    #[test]
    fn a_served_readout_beyond_its_bounds_is_refused() {
        let (model, _) = file_with_served(None);
        for (bad, shown) in [
            (8_388_353, "8388353 at [1, 2]"),
            (-8_388_353, "-8388353 at [1, 2]"),
            (i32::MIN, "-2147483648 at [1, 2]"),
        ] {
            let mut served = model.served_readout().to_vec();
            served[514] = bad;
            let (_, bytes) =
                file_with_served(Some((Dtype::I32, vec![10, 512], served_bytes(&served))));
            let err = Model::from_safetensors(&bytes, "m.safetensors")
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("m.safetensors: not a qnllm spiking model: served readout value {shown} lies outside ±8388352 (32767 · 256)")
            );
        }
        // The bounds themselves load.
        let mut served = model.served_readout().to_vec();
        served[0] = 8_388_352;
        served[1] = -8_388_352;
        let (_, bytes) = file_with_served(Some((Dtype::I32, vec![10, 512], served_bytes(&served))));
        let loaded = Model::from_safetensors(&bytes, "m.safetensors").unwrap();
        assert_eq!(&loaded.reasoning_readout()[..2], &[32_767, -32_767]);
    }

    #[test]
    fn a_model_version_past_two_to_the_63_loads() {
        for (version, file) in [
            (1u64 << 63, "v63.safetensors"),
            (u64::MAX, "vmax.safetensors"),
        ] {
            let (model, path) = saved_at(version, file);
            let loaded = Model::load(&path).unwrap();
            assert_eq!(loaded.version(), version);
            assert_eq!(loaded.digest(), model.digest());
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn a_version_that_is_no_u64_is_refused_clearly() {
        let (_, path) = saved_at(7, "vbad.safetensors");
        // The same file with the metadata's version written as `-` (same length, so the
        // header's length still holds).
        let bytes = std::fs::read(&path).unwrap();
        let mut changed = bytes.clone();
        let at = bytes
            .windows(13)
            .position(|w| w == b"\"version\":\"7\"")
            .unwrap();
        changed.splice(at..at + 13, b"\"version\":\"-\"".iter().copied());
        std::fs::write(&path, &changed).unwrap();
        let err = Model::load(&path).unwrap_err().to_string();
        assert!(err.contains("`version` is not an integer from 0"), "{err}");
        let _ = std::fs::remove_file(path);
    }
}
