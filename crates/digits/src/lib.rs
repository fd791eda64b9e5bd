//! The UCI handwritten digits (1 797 images of 8 × 8 pixels, 10 classes, scikit-learn's copy
//! in `testdata/digits/`) as encodings for an engine with 64 inputs, split by a seed into
//! labelled, unlabelled and held-out examples.

use qnllm_engine::{Engine, EngineError, Params, SplitMix64};

/// The data file, built into the library so every binary has it offline.
const TEXT: &str = include_str!("../../../testdata/digits/digits.txt");
/// One character per pixel value `0..=16`.
const ALPHABET: &[u8; 17] = b"0123456789abcdefg";
/// Pixels per image.
pub const PIXELS: usize = 64;
/// Classes (the digits 0–9).
pub const CLASSES: u32 = 10;
/// Pixel values run from 0 to this.
const PIXEL_MAX: f32 = 16.0;
/// The brightest pixel becomes this input: below 1 so it quantises to 127 without clamping.
pub const INPUT_MAX: f32 = 0.99;
/// The seed of [`Splits::standard`].
pub const SPLIT_SEED: u64 = 14;

/// Why the data text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigitsError {
    /// A line is not `LABEL PIXELS`.
    #[error("digits line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// One image: its label and its 64 pixels (`0..=16`, row by row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The digit.
    pub label: u32,
    /// Pixel values, row by row.
    pub pixels: [u8; PIXELS],
}

impl Image {
    /// The pixels as an engine encoding: `pixel × 0.99 / 16`, in `[0, 0.99]`.
    pub fn encoding(&self) -> Vec<f32> {
        self.pixels
            .iter()
            .map(|&p| f32::from(p) * (INPUT_MAX / PIXEL_MAX))
            .collect()
    }
}

/// The whole data set, in the file's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digits {
    images: Vec<Image>,
}

impl Digits {
    /// The 1 797 images shipped in `testdata/digits/digits.txt`.
    ///
    /// # Errors
    ///
    /// [`DigitsError::BadLine`] only if the built-in file were damaged.
    pub fn load() -> Result<Digits, DigitsError> {
        Digits::parse(TEXT)
    }

    /// Reads the text format of `testdata/digits/README.md`.
    ///
    /// # Errors
    ///
    /// [`DigitsError::BadLine`] naming the line and what is wrong with it.
    pub fn parse(text: &str) -> Result<Digits, DigitsError> {
        let images = text
            .lines()
            .enumerate()
            .map(|(i, line)| {
                parse_line(line).map_err(|reason| DigitsError::BadLine {
                    line: i + 1,
                    reason,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Digits { images })
    }

    /// Every image.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The images at `indices`, as `(encoding, label)` examples.
    pub fn examples(&self, indices: &[usize]) -> Vec<Example> {
        indices
            .iter()
            .filter_map(|&i| self.images.get(i))
            .map(|image| Example {
                encoding: image.encoding(),
                label: image.label,
            })
            .collect()
    }
}

fn parse_line(line: &str) -> Result<Image, String> {
    let (label, pixels) = line
        .split_once(' ')
        .ok_or_else(|| "expected `LABEL PIXELS`".to_string())?;
    let label: u32 = label
        .parse()
        .ok()
        .filter(|l| *l < CLASSES)
        .ok_or_else(|| format!("label `{label}` is not a digit 0-9"))?;
    let bytes = pixels.as_bytes();
    if bytes.len() != PIXELS {
        return Err(format!("{} pixels, expected {PIXELS}", bytes.len()));
    }
    let mut out = [0u8; PIXELS];
    for (slot, c) in out.iter_mut().zip(bytes) {
        *slot = ALPHABET
            .iter()
            .position(|a| a == c)
            .ok_or_else(|| format!("pixel `{}` is not one of 0-9a-g", char::from(*c)))?
            as u8;
    }
    Ok(Image { label, pixels: out })
}

/// An encoding and its true label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// 64 values in `[0, 0.99]`.
    pub encoding: Vec<f32>,
    /// The digit.
    pub label: u32,
}

/// Indices of the images in each part; the parts are disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    /// Labelled: the teachers learn from their true labels.
    pub labelled: Vec<usize>,
    /// Unlabelled: the student learns from the teachers' consensus on them.
    pub unlabelled: Vec<usize>,
    /// Held out: no model ever learns from them; accuracy is measured here.
    pub held_out: Vec<usize>,
}

impl Splits {
    /// Shuffles `0..n` with SplitMix64(`seed`) (Fisher–Yates from the end, `j = draw mod
    /// (i + 1)`), then takes `labelled`, then `unlabelled`, and holds out the rest.
    pub fn new(n: usize, seed: u64, labelled: usize, unlabelled: usize) -> Splits {
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = SplitMix64::new(seed);
        for i in (1..n).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let labelled = labelled.min(n);
        let unlabelled = unlabelled.min(n - labelled);
        let rest = order.split_off(labelled + unlabelled);
        let unl = order.split_off(labelled);
        Splits {
            labelled: order,
            unlabelled: unl,
            held_out: rest,
        }
    }

    /// The standard split of the 1 797 images: 300 labelled, 900 unlabelled, 597 held out,
    /// seed [`SPLIT_SEED`].
    pub fn standard(n: usize) -> Splits {
        Splits::new(n, SPLIT_SEED, 300, 900)
    }
}

/// The engine parameters for the digits: 64 inputs, every other parameter at its default.
pub fn params() -> Params {
    Params {
        inputs: PIXELS as u32,
        ..Params::default()
    }
}

/// Share of `examples` that `engine` labels correctly, in `[0, 1]`.
///
/// # Errors
///
/// The engine's refusal of an encoding (wrong length).
pub fn accuracy(engine: &dyn Engine, examples: &[Example]) -> Result<f64, EngineError> {
    if examples.is_empty() {
        return Ok(0.0);
    }
    let mut right = 0usize;
    for e in examples {
        right += usize::from(engine.reason(&e.encoding)?.label == e.label);
    }
    Ok(right as f64 / examples.len() as f64)
}

/// Teaches `engine` the true labels of `examples`, in order, `passes` times.
///
/// # Errors
///
/// The engine's refusal of an encoding or label.
pub fn train(
    engine: &mut dyn Engine,
    examples: &[Example],
    passes: usize,
) -> Result<(), EngineError> {
    for _ in 0..passes {
        for e in examples {
            engine.learn(&e.encoding, e.label)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_built_in_copy_has_1797_images_of_every_digit() {
        let digits = Digits::load().unwrap();
        assert_eq!(digits.len(), 1_797);
        for d in 0..CLASSES {
            let n = digits.images().iter().filter(|i| i.label == d).count();
            assert!((170..=190).contains(&n), "digit {d}: {n} images");
        }
        assert!(digits.images().iter().any(|i| i.pixels.contains(&16)));
        let x = digits.images()[0].encoding();
        assert_eq!(x.len(), 64);
        assert!(x.iter().all(|v| (0.0..=INPUT_MAX).contains(v)));
        assert_eq!(
            x.iter().copied().fold(0.0, f32::max),
            15.0 * INPUT_MAX / 16.0
        );
    }

    #[test]
    fn splits_are_disjoint_cover_everything_and_depend_only_on_the_seed() {
        let s = Splits::standard(1_797);
        assert_eq!(
            (s.labelled.len(), s.unlabelled.len(), s.held_out.len()),
            (300, 900, 597)
        );
        let mut all: Vec<usize> = [&s.labelled[..], &s.unlabelled, &s.held_out].concat();
        all.sort_unstable();
        assert_eq!(all, (0..1_797).collect::<Vec<_>>());
        assert_eq!(s, Splits::standard(1_797));
        assert_ne!(
            s.labelled,
            Splits::new(1_797, SPLIT_SEED + 1, 300, 900).labelled
        );
        let short = Splits::new(10, 1, 8, 8);
        assert_eq!(
            (
                short.labelled.len(),
                short.unlabelled.len(),
                short.held_out.len()
            ),
            (8, 2, 0)
        );
    }

    #[test]
    fn damaged_lines_are_named() {
        let good = format!("3 {}", "0".repeat(64));
        assert_eq!(Digits::parse(&good).unwrap().images()[0].label, 3);
        let cases = [
            (format!("{good}\n3 {}", "0".repeat(63)), "63 pixels"),
            (format!("{good}\n12 {}", "0".repeat(64)), "not a digit"),
            (format!("{good}\n1 {}h", "0".repeat(63)), "pixel `h`"),
            (format!("{good}\nnonsense"), "LABEL PIXELS"),
        ];
        for (text, why) in cases {
            let err = Digits::parse(&text).unwrap_err().to_string();
            assert!(
                err.starts_with("digits line 2:") && err.contains(why),
                "{err}"
            );
        }
    }
}
