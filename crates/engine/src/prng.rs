//! The specified pseudo-random generators: SplitMix64 for weights, and the reference input
//! generator (Irwin–Hall sum of 12 uniforms, exact in `f64`) for examples and golden vectors.

/// SplitMix64 (Steele, Lea and Flood, 2014): 64-bit state, one add and a mix per draw.
/// Chosen because it is a dozen lines in any language and its outputs are exact integers.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first draw mixes `seed + 0x9e3779b97f4a7c15`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit value.
    #[allow(clippy::should_implement_trait)] // an infinite stream; an Iterator would add nothing
    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The top 8 bits of the next draw as a signed byte: uniform over `-128..=127`.
    pub fn next_i8(&mut self) -> i8 {
        (self.next() >> 56) as u8 as i8
    }
}

/// Encodings drawn as the original design's examples draw them: roughly normal, mean 0,
/// σ = 0.1, computed so every language gets the same bits.
///
/// Each value is `((u₁ + … + u₁₂) − 6) × σ` in `f64`, rounded once to `f32`, where
/// `uᵢ = (next() >> 40) / 2²⁴`. The sum of twelve 24-bit fractions is exact in `f64`, so the
/// only roundings are the multiplication and the final conversion, both correctly rounded.
#[derive(Debug, Clone)]
pub struct NormalInputs {
    rng: SplitMix64,
    dim: usize,
    sigma: f64,
}

impl NormalInputs {
    /// σ = 0.1, the original design's examples.
    pub const DEFAULT_SIGMA: f64 = 0.1;

    /// A stream of `dim`-value encodings from `seed`.
    pub fn new(seed: u64, dim: usize) -> NormalInputs {
        NormalInputs::with_sigma(seed, dim, NormalInputs::DEFAULT_SIGMA)
    }

    /// A stream with another standard deviation.
    pub fn with_sigma(seed: u64, dim: usize, sigma: f64) -> NormalInputs {
        NormalInputs {
            rng: SplitMix64::new(seed),
            dim,
            sigma,
        }
    }

    fn value(&mut self) -> f32 {
        let mut sum = 0.0f64;
        for _ in 0..12 {
            sum += (self.rng.next() >> 40) as f64 / (1u64 << 24) as f64;
        }
        ((sum - 6.0) * self.sigma) as f32
    }
}

impl Iterator for NormalInputs {
    type Item = Vec<f32>;

    fn next(&mut self) -> Option<Vec<f32>> {
        Some((0..self.dim).map(|_| self.value()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_its_published_first_outputs() {
        // First outputs for seed 0 as given by the algorithm's reference implementation.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(rng.next(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(rng.next(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn normal_inputs_have_the_asked_spread() {
        let values: Vec<f32> = NormalInputs::new(3, 768).take(20).flatten().collect();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.1).abs() < 0.005, "sd {}", var.sqrt());
        assert!(values.iter().all(|v| v.abs() <= 0.6));
    }
}
