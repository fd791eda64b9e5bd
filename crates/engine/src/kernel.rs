//! The integer inner loops: quantisation, input currents, and the time-stepped LIF update.
//!
//! The time-stepped update is written once, in plain Rust shaped so the compiler vectorises
//! it, and compiled per kernel with that kernel's instruction set. The input currents, which
//! dominate, have one function per kernel: plain Rust, AVX2 and AVX-512 VNNI intrinsics.
//! The kernel is chosen at run time. Integer sums do not depend on order, so every kernel
//! gives the same bits (a test checks it).

use crate::params::{Params, INPUT_LIMIT, INPUT_SCALE};

/// A compiled variant of the inner loops.
///
/// The kernels differ in how they compute the input currents (`hidden × inputs`
/// multiply-adds, most of the work): one at a time, 16 per `vpmaddwd` (AVX2), or 64 per
/// `vpdpbusd` (AVX-512 VNNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// Baseline instructions only (SSE2 on x86-64).
    Portable,
    /// The same loops compiled for AVX2 (x86-64 only, when the CPU has it).
    Avx2,
    /// AVX-512 VNNI: 64 multiply-adds per `vpdpbusd` (x86-64 only, when the CPU has it).
    Avx512Vnni,
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
            Kernel::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Runs the network's integer pipeline for one validated encoding.
    pub(crate) fn forward(self, net: Net<'_>, encoding: &[f32], out: &mut Activity) {
        match self {
            Kernel::Portable => forward(net, encoding, out, |n, q, _, o| {
                currents_portable(n.input_weights, q, o)
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                debug_assert!(std::arch::is_x86_feature_detected!("avx2"));
                // SAFETY: `Kernel::Avx2` is only handed out by `available_kernels`, which
                // checks at run time that the CPU supports AVX2.
                unsafe { forward_avx2(net, encoding, out) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                debug_assert!(std::arch::is_x86_feature_detected!("avx512vnni"));
                // SAFETY: `Kernel::Avx512Vnni` is only handed out by `available_kernels`,
                // which checks at run time that the CPU supports AVX-512 F, BW and VNNI.
                unsafe { forward_avx512_vnni(net, encoding, out) }
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512Vnni => forward(net, encoding, out, |n, q, _, o| {
                currents_portable(n.input_weights, q, o)
            }),
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
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
    {
        kernels.push(Kernel::Avx512Vnni);
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
    /// `Σᵢ W[j][i]` per hidden neuron, for kernels that shift inputs to unsigned.
    pub(crate) input_row_sums: &'a [i32],
}

/// Everything one forward pass produces, reusable across calls to avoid allocation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Activity {
    quantised: Vec<i16>,
    /// `quantised + 128`, as `u8`, for kernels that multiply unsigned by signed bytes.
    shifted: Vec<u8>,
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
        self.shifted.clear();
        self.shifted.resize(inputs, 0);
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

/// `out[j] = Σᵢ W[j][i] · q[i]`, the plain way.
#[inline(always)]
fn currents_portable(weights: &[i8], q: &[i16], out: &mut [i32]) {
    for (current, row) in out.iter_mut().zip(weights.chunks_exact(q.len())) {
        *current = dot(row, q);
    }
}

/// `out[j] = Σᵢ W[j][i] · q[i]` with AVX2: sign-extend 16 weights to `i16`, multiply
/// with 16 inputs and add adjacent pairs into 8 `i32` lanes (`vpmaddwd`). Each pair sum is at
/// most 2 · 128 · 127, and a row's total is bounded by `Params::validate`, so nothing wraps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn currents_avx2(weights: &[i8], q: &[i16], out: &mut [i32]) {
    use std::arch::x86_64::*;
    const BLOCK: usize = 64; // four independent 16-lane multiply-adds per iteration
    let inputs = q.len();
    let whole = inputs / BLOCK * BLOCK;
    for (current, row) in out.iter_mut().zip(weights.chunks_exact(inputs)) {
        let mut acc = [_mm256_setzero_si256(); 4];
        for (w, x) in row[..whole]
            .chunks_exact(BLOCK)
            .zip(q[..whole].chunks_exact(BLOCK))
        {
            for (lane, acc) in acc.iter_mut().enumerate() {
                // SAFETY: `w` holds 64 bytes and `x` 64 values, so the 16 bytes and 16 values
                // at `lane * 16` are in bounds; unaligned loads accept any address.
                let (w16, x16) = unsafe {
                    (
                        _mm_loadu_si128(w.as_ptr().add(lane * 16).cast::<__m128i>()),
                        _mm256_loadu_si256(x.as_ptr().add(lane * 16).cast::<__m256i>()),
                    )
                };
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_cvtepi8_epi16(w16), x16));
            }
        }
        let acc = _mm256_add_epi32(
            _mm256_add_epi32(acc[0], acc[1]),
            _mm256_add_epi32(acc[2], acc[3]),
        );
        let halves = _mm_add_epi32(
            _mm256_castsi256_si128(acc),
            _mm256_extracti128_si256::<1>(acc),
        );
        let pairs = _mm_add_epi32(halves, _mm_shuffle_epi32::<0b01_00_11_10>(halves));
        let one = _mm_add_epi32(pairs, _mm_shuffle_epi32::<0b10_11_00_01>(pairs));
        *current = _mm_cvtsi128_si32(one) + dot(&row[whole..], &q[whole..]);
    }
}

#[inline(always)]
fn forward(
    net: Net<'_>,
    encoding: &[f32],
    out: &mut Activity,
    currents: impl FnOnce(Net<'_>, &[i16], &[u8], &mut [i32]),
) {
    let p = net.params;
    out.reset(p);
    let hidden = p.hidden as usize;

    let quantised = out.quantised.iter_mut().zip(out.shifted.iter_mut());
    for ((q, shifted), &x) in quantised.zip(encoding) {
        *q = quantise(x);
        *shifted = (*q + 128) as u8; // q ∈ [−127, 127], so this lies in [1, 255]
    }
    currents(net, &out.quantised, &out.shifted, &mut out.currents);

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
    forward(net, encoding, out, |n, q, _, o| {
        currents_avx2(n.input_weights, q, o)
    });
}

/// `out[j] = Σᵢ W[j][i] · q[i]` with AVX-512 VNNI. `vpdpbusd` multiplies unsigned by signed
/// bytes, so the inputs are shifted to `q + 128 ∈ [1, 255]` and the shift taken back out
/// exactly: `Σ W·q = Σ W·(q + 128) − 128 · Σ W`. Four products are summed into each `i32`
/// lane without saturation, so the result equals the other kernels' bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn currents_avx512_vnni(net: Net<'_>, shifted: &[u8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    const BLOCK: usize = 64;
    let inputs = shifted.len();
    let whole = inputs / BLOCK * BLOCK;
    let rows = net
        .input_weights
        .chunks_exact(inputs)
        .zip(net.input_row_sums);
    for (current, (row, &row_sum)) in out.iter_mut().zip(rows) {
        let mut acc = _mm512_setzero_si512();
        for (w, x) in row[..whole]
            .chunks_exact(BLOCK)
            .zip(shifted[..whole].chunks_exact(BLOCK))
        {
            // SAFETY: `w` and `x` each hold exactly 64 bytes; unaligned loads accept any
            // address.
            let (w, x) = unsafe {
                (
                    _mm512_loadu_si512(w.as_ptr().cast()),
                    _mm512_loadu_si512(x.as_ptr().cast()),
                )
            };
            acc = _mm512_dpbusd_epi32(acc, x, w);
        }
        let tail: i32 = row[whole..]
            .iter()
            .zip(&shifted[whole..])
            .map(|(&w, &x)| i32::from(w) * i32::from(x))
            .sum();
        *current = _mm512_reduce_add_epi32(acc) + tail - 128 * row_sum;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn forward_avx512_vnni(net: Net<'_>, encoding: &[f32], out: &mut Activity) {
    forward(net, encoding, out, |n, _, shifted, o| {
        currents_avx512_vnni(n, shifted, o)
    });
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
