//! The integer inner loops: quantisation, input currents, and the time-stepped LIF update.
//!
//! Each loop is written once, in plain Rust shaped so the compiler vectorises it; the AVX2
//! kernel is the same code compiled with AVX2 enabled, chosen at run time. Integer sums do
//! not depend on order, so every kernel gives the same bits (a test checks it).

use crate::params::{Params, INPUT_LIMIT, INPUT_SCALE};

/// A compiled variant of the inner loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Baseline instructions only (SSE2 on x86-64).
    Portable,
    /// The same loops compiled for AVX2 (x86-64 only, when the CPU has it).
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn best() -> Kernel {
        available_kernels()
            .last()
            .copied()
            .unwrap_or(Kernel::Portable)
    }

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
        }
    }

    /// Runs the network's integer pipeline for one validated encoding.
    pub(crate) fn forward(self, net: Net<'_>, encoding: &[f32], out: &mut Activity) {
        match self {
            Kernel::Portable => forward(net, encoding, out),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
                // SAFETY: `Kernel::Avx2` is only handed out by `available_kernels`, which
                // checks at run time that the CPU supports AVX2.
                unsafe { forward_avx2(net, encoding, out) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 => forward(net, encoding, out),
        }
    }
}

/// Every kernel this CPU runs, slowest first.
pub fn available_kernels() -> Vec<Kernel> {
    let mut kernels = vec![Kernel::Portable];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        kernels.push(Kernel::Avx2);
    }
    kernels
}

/// Borrowed view of a model's parameters and weights.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Net<'a> {
    pub(crate) params: &'a Params,
    /// `hidden × inputs`, row-major.
    pub(crate) input_weights: &'a [i8],
    /// `labels × hidden`, row-major.
    pub(crate) readout: &'a [i16],
}

/// Everything one forward pass produces, reusable across calls to avoid allocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Activity {
    quantised: Vec<i16>,
    currents: Vec<i32>,
    membrane: Vec<i32>,
    fired: Vec<i32>,
    output_membrane: Vec<i32>,
    /// Spikes per hidden neuron over all steps.
    pub(crate) hidden_spikes: Vec<i32>,
    /// Integer readout score per label.
    pub(crate) scores: Vec<i32>,
    /// Output-neuron spikes per label.
    pub(crate) label_spikes: Vec<u32>,
    /// Hidden spikes over all neurons and steps.
    pub(crate) total_spikes: u32,
}

impl Activity {
    fn reset(&mut self, p: &Params) {
        let (inputs, hidden, labels) = (p.inputs as usize, p.hidden as usize, p.labels as usize);
        for (buf, len) in [
            (&mut self.currents, hidden),
            (&mut self.membrane, hidden),
            (&mut self.fired, hidden),
            (&mut self.hidden_spikes, hidden),
            (&mut self.scores, labels),
            (&mut self.output_membrane, labels),
        ] {
            buf.clear();
            buf.resize(len, 0);
        }
        self.quantised.clear();
        self.quantised.resize(inputs, 0);
        self.label_spikes.clear();
        self.label_spikes.resize(labels, 0);
        self.total_spikes = 0;
    }
}

/// `q = clamp(round_half_even(x · 128), −127, 127)`; `x · 128` is exact in `f32`.
#[inline(always)]
pub(crate) fn quantise(x: f32) -> i16 {
    (x * INPUT_SCALE)
        .round_ties_even()
        .clamp(-INPUT_LIMIT as f32, INPUT_LIMIT as f32) as i16
}

#[inline(always)]
fn dot(row: &[i8], q: &[i16]) -> i32 {
    row.iter()
        .zip(q)
        .map(|(&w, &x)| i32::from(w) * i32::from(x))
        .sum()
}

#[inline(always)]
fn forward(net: Net<'_>, encoding: &[f32], out: &mut Activity) {
    let p = net.params;
    out.reset(p);
    let (inputs, hidden) = (p.inputs as usize, p.hidden as usize);

    for (q, &x) in out.quantised.iter_mut().zip(encoding) {
        *q = quantise(x);
    }
    for (current, row) in out
        .currents
        .iter_mut()
        .zip(net.input_weights.chunks_exact(inputs))
    {
        *current = dot(row, &out.quantised);
    }

    for _ in 0..p.steps {
        let mut step_spikes = 0u32;
        for j in 0..hidden {
            let v = out.membrane[j] - (out.membrane[j] >> p.hidden_leak_shift) + out.currents[j];
            let fire = i32::from(v >= p.hidden_threshold);
            out.fired[j] = -fire; // all ones when the neuron fired: a mask for the readout
            out.hidden_spikes[j] += fire;
            out.membrane[j] = v & (fire - 1); // reset to 0 on a spike
            step_spikes += fire as u32;
        }
        out.total_spikes += step_spikes;
        for (k, row) in net.readout.chunks_exact(hidden).enumerate() {
            let current: i32 = row
                .iter()
                .zip(&out.fired)
                .map(|(&w, &mask)| i32::from(w) & mask)
                .sum();
            out.scores[k] += current;
            let u =
                out.output_membrane[k] - (out.output_membrane[k] >> p.output_leak_shift) + current;
            if u >= p.output_threshold {
                out.label_spikes[k] += 1;
                out.output_membrane[k] = 0;
            } else {
                out.output_membrane[k] = u;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn forward_avx2(net: Net<'_>, encoding: &[f32], out: &mut Activity) {
    forward(net, encoding, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_rounds_half_to_even_and_clamps() {
        assert_eq!(quantise(0.5 / 128.0), 0);
        assert_eq!(quantise(1.5 / 128.0), 2);
        assert_eq!(quantise(2.5 / 128.0), 2);
        assert_eq!(quantise(-2.5 / 128.0), -2);
        assert_eq!(quantise(0.1), 13); // 12.8 → 13
        assert_eq!(quantise(-0.1), -13);
        assert_eq!(quantise(5.0), 127);
        assert_eq!(quantise(-5.0), -127);
        assert_eq!(quantise(f32::MAX), 127);
        assert_eq!(quantise(-0.0), 0);
    }
}
