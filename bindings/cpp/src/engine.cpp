// engine.cpp: the reference engine written from docs/engine.md: weights from a seed, the
// safetensors loader, quantisation, the integer LIF network, confidence, digests and learning.
#include "qnllm/engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "qnllm/sha256.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define QNLLM_HAVE_AVX2 1
#include <immintrin.h>
#endif

namespace qnllm {

namespace {
// Arithmetic right shift of a signed value (floor division by 2^s), spelled so it is defined
// before C++20 too and without a branch: for negative v, v ^ m = ~v >= 0 and ~(~v >> s) is
// the floor; for v >= 0, m = 0.
inline std::int32_t asr(std::int32_t v, std::uint32_t s) {
    const std::int32_t m = -static_cast<std::int32_t>(static_cast<std::uint32_t>(v) >> 31);
    return ((v ^ m) >> s) ^ m;
}

// q = clamp(round_half_even(x * 128), -127, 127); x * 128 is exact in f32.
inline std::int16_t quantise_one(float x) {
    const float y = x * 128.0f;
    if (y >= 127.0f) return 127;
    if (y <= -127.0f) return -127;
    return static_cast<std::int16_t>(std::nearbyint(y));  // ties to even (default mode)
}

// I[j] = sum_i W[j][i] * q[i], plain loops (the compiler may vectorise them).
void currents_scalar(const std::int8_t* w, const std::int16_t* q, std::size_t n, std::size_t hid,
                     std::int32_t* out) {
    for (std::size_t j = 0; j < hid; ++j) {
        const std::int8_t* row = w + j * n;
        std::int32_t acc = 0;
        for (std::size_t i = 0; i < n; ++i) acc += static_cast<std::int32_t>(row[i]) * q[i];
        out[j] = acc;
    }
}

#ifdef QNLLM_HAVE_AVX2
// Functions compiled for AVX2 (called only when the CPU has it). Lambdas would not inherit
// the target, so the helpers are small functions of their own.
#define QNLLM_AVX2 __attribute__((target("avx2")))

// Horizontal sum of eight i32 lanes (wrapping, like the lanes themselves).
QNLLM_AVX2 inline std::int32_t hsum_avx2(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// Sixteen i8 weights times sixteen i16 inputs, adjacent products summed into eight i32 lanes.
QNLLM_AVX2 inline __m256i madd_w8_q16(const std::int8_t* w, const std::int16_t* q) {
    return _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w))),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)));
}

// Sixteen i16 readout weights times sixteen i16 0/1 flags, pairs summed into i32 lanes.
QNLLM_AVX2 inline __m256i madd_i16(const std::int16_t* a, const std::int16_t* b) {
    return _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
}

// Eight values quantised (see quantise_avx2), as i32 lanes.
QNLLM_AVX2 inline __m256i quantise8(const float* x) {
    __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x), _mm256_set1_ps(128.0f));
    y = _mm256_round_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    return _mm256_cvtps_epi32(y);
}

// One LIF update of eight neurons at v/counts/current; returns the all-ones mask of those
// that fired, and adds how many to `total`.
QNLLM_AVX2 inline __m256i lif8(std::int32_t* v, std::int32_t* counts, const std::int32_t* current,
                               __m128i shift, __m256i below, std::uint32_t& total) {
    auto* vp = reinterpret_cast<__m256i*>(v);
    auto* cp = reinterpret_cast<__m256i*>(counts);
    __m256i vj = _mm256_loadu_si256(vp);
    vj = _mm256_add_epi32(_mm256_sub_epi32(vj, _mm256_sra_epi32(vj, shift)),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(current)));
    const __m256i fired = _mm256_cmpgt_epi32(vj, below);
    _mm256_storeu_si256(vp, _mm256_andnot_si256(fired, vj));  // 0 after a spike
    _mm256_storeu_si256(cp, _mm256_sub_epi32(_mm256_loadu_si256(cp), fired));
    total += static_cast<std::uint32_t>(
        __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(fired)))));
    return fired;
}

// The same sums with vpmaddwd on sign-extended weights: pairs of i8*i16 products summed into
// i32 lanes, four independent accumulators of 16 products each per 64 inputs. Every partial
// sum is bounded by the row's total bound (docs/engine.md Bounds, checked by Params::check),
// so nothing wraps and the result is the scalar one. Loads are unaligned loads.
QNLLM_AVX2 void currents_avx2(const std::int8_t* w, const std::int16_t* q,
                                                   std::size_t n, std::size_t hid,
                                                   std::int32_t* out) {
    const std::size_t whole = n / 64 * 64, blocks = n / 16 * 16;
    for (std::size_t j = 0; j < hid; ++j) {
        const std::int8_t* row = w + j * n;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        std::size_t i = 0;
        for (; i < whole; i += 64) {
            a0 = _mm256_add_epi32(a0, madd_w8_q16(row + i, q + i));
            a1 = _mm256_add_epi32(a1, madd_w8_q16(row + i + 16, q + i + 16));
            a2 = _mm256_add_epi32(a2, madd_w8_q16(row + i + 32, q + i + 32));
            a3 = _mm256_add_epi32(a3, madd_w8_q16(row + i + 48, q + i + 48));
        }
        for (; i < blocks; i += 16) a0 = _mm256_add_epi32(a0, madd_w8_q16(row + i, q + i));
        std::int32_t total =
            hsum_avx2(_mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
        for (; i < n; ++i) total += static_cast<std::int32_t>(row[i]) * q[i];
        out[j] = total;
    }
}

// Quantisation, eight at a time: round to nearest-even then clamp to +-127 gives what the
// scalar "clamp, else nearbyint" gives (values at or beyond 127 round to at least 127).
QNLLM_AVX2 void quantise_avx2(const float* x, std::size_t n,
                                                   std::int16_t* q) {
    std::size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        // packs works per 128-bit half: [a0..3 b0..3 a4..7 b4..7]; the permute restores order.
        __m256i packed =
            _mm256_permute4x64_epi64(_mm256_packs_epi32(quantise8(x + i), quantise8(x + i + 8)), 0xd8);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i), packed);
    }
    for (; i < n; ++i) q[i] = quantise_one(x[i]);
}

// The time-stepped LIF network and readout, eight hidden neurons per instruction.
// `current`, `v`, `counts` and `spikes` hold `hidp` (a multiple of 16) values, zero beyond
// `hid`: a padded neuron has no current, so its membrane stays 0 and it never fires
// (thresholds are positive). `readout` is the padded copy, `labels` rows of `hidp`, zero in
// the padding. The readout sums R[k][j] over the neurons that fired with vpmaddwd on 0/1
// spike flags: each pair sum is at most 2 * 32767 and the row total is bounded by
// Params::check, so nothing wraps. Every lane computes exactly the scalar expression.
QNLLM_AVX2 std::uint32_t lif_avx2(
    const Params& p, std::size_t hidp, const std::int16_t* readout, const std::int32_t* current,
    std::int32_t* v, std::int32_t* counts, std::int16_t* spikes, std::int32_t* u,
    std::int32_t* scores, std::uint32_t* label_spikes) {
    // v >= threshold  <=>  v > threshold - 1 (threshold >= 1, so no overflow).
    const __m256i below = _mm256_set1_epi32(p.hidden_threshold - 1);
    const __m128i shift = _mm_cvtsi32_si128(static_cast<int>(p.hidden_leak_shift));
    const std::size_t lab = p.labels;
    std::uint32_t total = 0;
    for (std::uint32_t t = 0; t < p.steps; ++t) {
        for (std::size_t j = 0; j < hidp; j += 16) {
            __m256i f0 = lif8(v + j, counts + j, current + j, shift, below, total);
            __m256i f1 = lif8(v + j + 8, counts + j + 8, current + j + 8, shift, below, total);
            // Sixteen -1/0 flags as i16 in neuron order, then 0/1.
            __m256i flags = _mm256_permute4x64_epi64(_mm256_packs_epi32(f0, f1), 0xd8);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(spikes + j),
                                _mm256_srli_epi16(flags, 15));
        }
        for (std::size_t k = 0; k < lab; ++k) {
            const std::int16_t* row = readout + k * hidp;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0;
            std::size_t j = 0;
            for (; j + 32 <= hidp; j += 32) {
                a0 = _mm256_add_epi32(a0, madd_i16(row + j, spikes + j));
                a1 = _mm256_add_epi32(a1, madd_i16(row + j + 16, spikes + j + 16));
            }
            if (j < hidp) a0 = _mm256_add_epi32(a0, madd_i16(row + j, spikes + j));
            const std::int32_t o = hsum_avx2(_mm256_add_epi32(a0, a1));
            scores[k] += o;
            u[k] = u[k] - asr(u[k], p.output_leak_shift) + o;
            if (u[k] >= p.output_threshold) {
                u[k] = 0;
                label_spikes[k] += 1;
            }
        }
    }
    return total;
}
#endif
}  // namespace

bool kernel_available(Kernel k) {
    if (k == Kernel::Scalar) return true;
#ifdef QNLLM_HAVE_AVX2
    return __builtin_cpu_supports("avx2");
#else
    return false;
#endif
}

Kernel best_kernel() {
    const char* force = std::getenv("QNLLM_KERNEL");
    if (force && std::string(force) == "scalar") return Kernel::Scalar;
    return kernel_available(Kernel::Avx2) ? Kernel::Avx2 : Kernel::Scalar;
}

const char* kernel_name(Kernel k) { return k == Kernel::Avx2 ? "avx2" : "scalar"; }

bool Model::set_kernel(Kernel k) {
    if (!kernel_available(k)) return false;
    kernel_ = k;
    return true;
}

namespace {
constexpr std::int64_t I32_MAX = std::numeric_limits<std::int32_t>::max();
constexpr std::int64_t READOUT_LIMIT = 32767;
constexpr std::int64_t INPUT_LIMIT = 127;
// The served readout's bound (docs/engine.md §7): A lies within +-32767 * 256.
constexpr std::int64_t SERVED_LIMIT = READOUT_LIMIT * 256;

[[noreturn]] void invalid_params(const std::string& why) {
    throw EngineError(ErrorCode::InvalidInput, "invalid parameters: " + why);
}
[[noreturn]] void model_file(const std::string& path, const std::string& why) {
    throw EngineError(ErrorCode::Internal, "model file " + path + ": " + why);
}


// Rust's f32 Display for the three non-finite values.
std::string nonfinite_text(float v) {
    if (std::isnan(v)) return "NaN";
    return v > 0 ? "inf" : "-inf";
}

void put32(Sha256& h, std::uint32_t v) {
    std::uint8_t b[4];
    for (int i = 0; i < 4; ++i) b[i] = static_cast<std::uint8_t>(v >> (8 * i));
    h.update(b, 4);
}
}  // namespace

std::vector<Reasoning> Engine::reason_batch(span<const float> values, std::size_t dim) {
    std::vector<Reasoning> out;
    if (dim == 0) return out;
    out.reserve(values.size() / dim);
    for (std::size_t at = 0; at + dim <= values.size(); at += dim) {
        try {
            out.push_back(reason(values.subspan(at, dim)));
        } catch (const EngineError& e) {
            throw EngineError(e.code(), "encoding " + std::to_string(at / dim) +
                                            " of the batch: " + e.what());
        }
    }
    return out;
}

Learned Engine::learn(span<const float>, std::uint32_t, std::uint64_t) {
    throw EngineError(ErrorCode::EngineFailed, "this engine does not learn");
}

std::string Params::check() const {
    if (inputs == 0 || steps == 0) return "inputs and steps must be at least 1";
    if (hidden < 2 || hidden % 2 != 0)
        return "hidden must be even and at least 2, got " + std::to_string(hidden);
    if (labels < 2) return "labels must be at least 2, got " + std::to_string(labels);
    if (hidden_threshold <= 0 || output_threshold <= 0) return "thresholds must be positive";
    if (hidden_leak_shift > 24 || output_leak_shift > 24) return "leak shifts must be at most 24";
    // (|I| + 1) << shift must fit i32; compare against the shifted-down limit (no overflow).
    std::int64_t current = static_cast<std::int64_t>(inputs) * 128 * INPUT_LIMIT;
    if (current + 1 > (I32_MAX >> hidden_leak_shift)) {
        return std::to_string(inputs) + " inputs with hidden_leak_shift " +
               std::to_string(hidden_leak_shift) + " can overflow the membrane";
    }
    std::int64_t readout_current = static_cast<std::int64_t>(hidden) * READOUT_LIMIT;
    if (readout_current + 1 > (I32_MAX >> output_leak_shift)) {
        return std::to_string(hidden) + " hidden neurons with output_leak_shift " +
               std::to_string(output_leak_shift) + " can overflow the output membrane";
    }
    if (readout_current * steps > I32_MAX) {
        return std::to_string(hidden) + " hidden neurons over " + std::to_string(steps) +
               " steps can overflow the scores";
    }
    return "";
}

std::vector<float> reference_inputs(std::uint64_t seed, std::size_t count, std::size_t inputs) {
    SplitMix64 rng(seed);
    std::vector<float> out(count * inputs);
    for (auto& x : out) {
        double sum = 0;
        for (int i = 0; i < 12; ++i) sum += static_cast<double>(rng.next() >> 40) / 16777216.0;
        x = static_cast<float>((sum - 6.0) * 0.1);
    }
    return out;
}

Digest result_digest(std::uint32_t label, std::uint32_t total_spikes,
                     const std::vector<std::int32_t>& scores,
                     const std::vector<std::uint32_t>& label_spikes) {
    Sha256 h;
    h.update("qnllm-result-v1\0", 16);
    put32(h, label);
    put32(h, total_spikes);
    put32(h, static_cast<std::uint32_t>(scores.size()));
    for (auto s : scores) put32(h, static_cast<std::uint32_t>(s));
    for (auto s : label_spikes) put32(h, s);
    return h.finish();
}

float confidence_of(const std::vector<std::int32_t>& scores, std::uint32_t label) {
    std::int64_t top = scores[label];
    std::int64_t min = top;
    for (auto s : scores) min = s < min ? s : min;
    if (top == min) return static_cast<float>(1.0 / static_cast<double>(scores.size()));
    std::int64_t range = top - min;
    std::int64_t sum = 0;
    for (auto s : scores) {
        std::int64_t e = 8 * (top - s) / range;  // 0..8, floor (both non-negative)
        sum += std::int64_t{1} << (8 - e);
    }
    return static_cast<float>(256.0 / static_cast<double>(sum));
}

Model Model::from_seed(std::uint64_t seed, const Params& params) {
    std::string why = params.check();
    if (!why.empty()) invalid_params(why);
    SplitMix64 rng(seed);
    std::vector<std::int8_t> w(static_cast<std::size_t>(params.hidden) * params.inputs);
    for (auto& x : w) x = rng.next_i8();
    std::vector<std::int16_t> r(static_cast<std::size_t>(params.labels) * params.hidden);
    for (std::size_t k = 0; k < params.labels; ++k) {
        for (std::size_t m = 0; m < params.hidden / 2; ++m) {
            std::int16_t v = rng.next_i8();
            r[k * params.hidden + 2 * m] = v;
            r[k * params.hidden + 2 * m + 1] = static_cast<std::int16_t>(-v);
        }
    }
    return from_parts("seed:" + std::to_string(seed), params, std::move(w), std::move(r), 0);
}

Model Model::from_parts(std::string name, const Params& params, std::vector<std::int8_t> w,
                        std::vector<std::int16_t> r, std::uint64_t version,
                        std::vector<std::int32_t> served) {
    std::string why = params.check();
    if (!why.empty()) invalid_params(why);
    if (w.size() != static_cast<std::size_t>(params.hidden) * params.inputs)
        invalid_params(std::to_string(w.size()) + " input weights for " +
                       std::to_string(params.hidden) + " hidden x " +
                       std::to_string(params.inputs) + " inputs");
    if (r.size() != static_cast<std::size_t>(params.labels) * params.hidden)
        invalid_params(std::to_string(r.size()) + " readout weights for " +
                       std::to_string(params.labels) + " labels x " +
                       std::to_string(params.hidden) + " hidden");
    for (auto v : r)
        if (v == std::numeric_limits<std::int16_t>::min())
            invalid_params("readout weights must lie within +-32767");
    if (served.empty()) {
        // A model without a served readout starts from A = R * 256 (S = R).
        served.resize(r.size());
        for (std::size_t i = 0; i < r.size(); ++i) served[i] = std::int32_t{r[i]} * 256;
    }
    if (served.size() != r.size())
        invalid_params(std::to_string(served.size()) + " served readout values for " +
                       std::to_string(params.labels) + " labels x " +
                       std::to_string(params.hidden) + " hidden");
    for (auto v : served)
        if (v < -SERVED_LIMIT || v > SERVED_LIMIT)
            invalid_params("served readout values must lie within ±8388352 (32767 · 256), got " +
                           std::to_string(v));
    Model m;
    m.name_ = std::move(name);
    m.p_ = params;
    m.w_ = std::move(w);
    m.r_ = std::move(r);
    m.a_ = std::move(served);
    m.version_ = version;
    m.input_digest_ = Sha256::of(m.w_.data(), m.w_.size());
    m.rehash();
    return m;
}

void Model::rehash() {
    // S = A >> 8 (within +-32767, so it fits i16), in the kernels' two layouts.
    const std::size_t hid = p_.hidden, lab = p_.labels;
    const std::size_t hidp = padded_hidden();
    rt_.resize(a_.size());
    rp_.assign(lab * hidp, 0);
    for (std::size_t k = 0; k < lab; ++k) {
        for (std::size_t j = 0; j < hid; ++j) {
            const auto s = static_cast<std::int16_t>(asr(a_[k * hid + j], 8));
            rt_[j * lab + k] = s;
            rp_[k * hidp + j] = s;
        }
    }
    // The model digest v2: parameters, version, SHA-256 of W, R as i16 LE, A as i32 LE.
    Sha256 h;
    h.update("qnllm-model-v2\0", 15);
    put32(h, p_.inputs);
    put32(h, p_.hidden);
    put32(h, p_.steps);
    put32(h, p_.labels);
    put32(h, p_.hidden_leak_shift);
    put32(h, static_cast<std::uint32_t>(p_.hidden_threshold));
    put32(h, p_.output_leak_shift);
    put32(h, static_cast<std::uint32_t>(p_.output_threshold));
    put32(h, static_cast<std::uint32_t>(version_));
    put32(h, static_cast<std::uint32_t>(version_ >> 32));
    h.update(input_digest_.data(), 32);
    std::vector<std::uint8_t> bytes(r_.size() * 2);
    for (std::size_t i = 0; i < r_.size(); ++i) {
        auto u = static_cast<std::uint16_t>(r_[i]);
        bytes[2 * i] = static_cast<std::uint8_t>(u);
        bytes[2 * i + 1] = static_cast<std::uint8_t>(u >> 8);
    }
    h.update(bytes.data(), bytes.size());
    for (auto v : a_) put32(h, static_cast<std::uint32_t>(v));
    digest_ = h.finish();
}

void Model::validate(span<const float> x) const {
    if (x.size() != p_.inputs) {
        throw EngineError(ErrorCode::InvalidInput, "encoding has " + std::to_string(x.size()) +
                                                       " values, the model takes " +
                                                       std::to_string(p_.inputs));
    }
    for (std::size_t i = 0; i < x.size(); ++i) {
        if (!std::isfinite(x[i])) {
            throw EngineError(ErrorCode::InvalidInput, "value at index " + std::to_string(i) +
                                                           " is " + nonfinite_text(x[i]) +
                                                           ": encodings must be finite");
        }
    }
}

Model::Run Model::run(span<const float> x) const {
    validate(x);
    const std::size_t n = p_.inputs, hid = p_.hidden, lab = p_.labels;
#ifdef QNLLM_HAVE_AVX2
    if (kernel_ == Kernel::Avx2) return run_avx2(x);
#endif
    std::vector<std::int16_t> q(n);
    for (std::size_t i = 0; i < n; ++i) q[i] = quantise_one(x[i]);
    std::vector<std::int32_t> current(hid);
    currents_scalar(w_.data(), q.data(), n, hid, current.data());
    Run out;
    out.total = 0;
    out.scores.assign(lab, 0);
    out.label_spikes.assign(lab, 0);
    out.counts.assign(hid, 0);
    std::vector<std::int32_t> v(hid, 0), u(lab, 0);
    // The spikes of a step, as a list of the neurons that fired (written without branches:
    // spiking is unpredictable, so a branch per neuron would be mispredicted often).
    std::vector<std::uint32_t> fired(hid);
    std::vector<std::int32_t> o(lab);
    const std::int32_t threshold = p_.hidden_threshold;
    const std::uint32_t shift = p_.hidden_leak_shift;
    for (std::uint32_t t = 0; t < p_.steps; ++t) {
        std::size_t nf = 0;
        for (std::size_t j = 0; j < hid; ++j) {
            std::int32_t vj = v[j] - asr(v[j], shift) + current[j];
            const std::uint32_t spike = vj >= threshold ? 1u : 0u;
            v[j] = vj & (static_cast<std::int32_t>(spike) - 1);  // 0 after a spike
            out.counts[j] += spike;
            fired[nf] = static_cast<std::uint32_t>(j);
            nf += spike;
        }
        out.total += static_cast<std::uint32_t>(nf);
        // o[k] = sum over fired j of R[k][j], read from the transposed copy: one contiguous
        // row of `labels` weights per neuron that fired.
        std::fill(o.begin(), o.end(), 0);
        for (std::size_t f = 0; f < nf; ++f) {
            const std::int16_t* col = rt_.data() + static_cast<std::size_t>(fired[f]) * lab;
            for (std::size_t k = 0; k < lab; ++k) o[k] += col[k];
        }
        for (std::size_t k = 0; k < lab; ++k) {
            out.scores[k] += o[k];
            u[k] = u[k] - asr(u[k], p_.output_leak_shift) + o[k];
            if (u[k] >= p_.output_threshold) {
                u[k] = 0;
                out.label_spikes[k] += 1;
            }
        }
    }
    std::uint32_t best = 0;
    for (std::uint32_t k = 1; k < lab; ++k)
        if (out.scores[k] > out.scores[best]) best = k;
    out.label = best;
    return out;
}

#ifdef QNLLM_HAVE_AVX2
Model::Run Model::run_avx2(span<const float> x) const {
    const std::size_t n = p_.inputs, hid = p_.hidden, lab = p_.labels;
    const std::size_t hidp = padded_hidden();
    // Per-thread scratch, reused across calls (a call only reads what it wrote first).
    struct Scratch {
        std::vector<std::int16_t> q, spikes;
        std::vector<std::int32_t> current, v, counts, u;
    };
    thread_local Scratch s;
    s.q.resize(n);
    s.current.assign(hidp, 0);
    s.v.assign(hidp, 0);
    s.counts.assign(hidp, 0);
    s.spikes.resize(hidp);
    s.u.assign(lab, 0);
    quantise_avx2(x.data(), n, s.q.data());
    currents_avx2(w_.data(), s.q.data(), n, hid, s.current.data());
    Run out;
    out.scores.assign(lab, 0);
    out.label_spikes.assign(lab, 0);
    out.total = lif_avx2(p_, hidp, rp_.data(), s.current.data(), s.v.data(), s.counts.data(),
                         s.spikes.data(), s.u.data(), out.scores.data(), out.label_spikes.data());
    out.counts.assign(s.counts.begin(), s.counts.begin() + static_cast<std::ptrdiff_t>(hid));
    std::uint32_t best = 0;
    for (std::uint32_t k = 1; k < lab; ++k)
        if (out.scores[k] > out.scores[best]) best = k;
    out.label = best;
    return out;
}
#endif

Reasoning Model::reason(span<const float> x) const {
    Run r = run(x);
    Reasoning out;
    out.label = r.label;
    out.confidence = confidence_of(r.scores, r.label);
    out.total_spikes = r.total;
    out.result_digest = result_digest(r.label, r.total, r.scores, r.label_spikes);
    out.scores = std::move(r.scores);
    out.label_spikes = std::move(r.label_spikes);
    out.model_version = version_;
    out.model_digest = digest_;
    return out;
}

std::uint32_t Model::learn(span<const float> x, std::uint32_t label) {
    if (label >= p_.labels) {
        throw EngineError(ErrorCode::InvalidInput, "label " + std::to_string(label) +
                                                       " is out of range: the model has labels 0.." +
                                                       std::to_string(p_.labels));
    }
    // 1. The hidden counts (they do not depend on the readout) and the learning scores
    //    g[k] = sum_j R[k][j] * count[j], with R, not the served readout.
    Run r = run(x);
    const std::size_t hid = p_.hidden, lab = p_.labels;
    std::vector<std::int64_t> g(lab, 0);
    std::int64_t total = 0;
    for (std::size_t j = 0; j < hid; ++j) total += r.counts[j];
    for (std::size_t k = 0; k < lab; ++k) {
        const std::int16_t* row = r_.data() + k * hid;
        std::int64_t sum = 0;
        for (std::size_t j = 0; j < hid; ++j) sum += std::int64_t{row[j]} * r.counts[j];
        g[k] = sum;
    }
    // 2. The rival: the highest g[k] for k != label, the lowest index on a tie. R moves only
    //    when the label does not lead it by a margin of 16 per hidden spike.
    std::size_t rival = label == 0 ? 1 : 0;
    for (std::size_t k = rival + 1; k < lab; ++k)
        if (k != label && g[k] > g[rival]) rival = k;
    if (g[label] - g[rival] < 16 * total) {
        auto clamp = [](std::int32_t v) -> std::int16_t {
            return static_cast<std::int16_t>(v > 32767 ? 32767 : (v < -32767 ? -32767 : v));
        };
        std::int16_t* up = r_.data() + static_cast<std::size_t>(label) * hid;
        std::int16_t* down = r_.data() + rival * hid;
        for (std::size_t j = 0; j < hid; ++j) {
            auto c = static_cast<std::int32_t>(r.counts[j]);
            up[j] = clamp(up[j] + c);
            down[j] = clamp(down[j] - c);
        }
    }
    // 3. The served readout moves toward R * 256 by 1/2^s, on every step: s = floor(log2(
    //    version + 1)) for the first 255 steps (a warm start), then 8. Each step moves A toward
    //    R * 256 and never past it, so A keeps within +-32767 * 256 and the difference fits i32.
    std::uint32_t shift = 8;
    if (version_ < 255) {
        shift = 0;
        while ((version_ + 1) >> (shift + 1) != 0) ++shift;
    }
    for (std::size_t i = 0; i < a_.size(); ++i)
        a_[i] += asr(std::int32_t{r_[i]} * 256 - a_[i], shift);
    // 4. The next version.
    version_ += 1;
    rehash();
    return r.label;
}

// ---- safetensors ----

namespace {
std::int64_t parse_i64(const std::string& s, bool& ok) {
    // The loader's rule: a decimal integer that fits i64 (an optional sign, digits only).
    ok = false;
    if (s.empty()) return 0;
    std::size_t i = 0;
    bool neg = false;
    if (s[0] == '+' || s[0] == '-') {
        neg = s[0] == '-';
        i = 1;
    }
    if (i == s.size()) return 0;
    std::uint64_t v = 0;
    const std::uint64_t limit = neg ? (std::uint64_t{1} << 63) : (std::uint64_t{1} << 63) - 1;
    for (; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') return 0;
        std::uint64_t d = static_cast<std::uint64_t>(s[i] - '0');
        if (v > (limit - d) / 10) return 0;
        v = v * 10 + d;
    }
    ok = true;
    if (neg) return v == (std::uint64_t{1} << 63) ? std::numeric_limits<std::int64_t>::min()
                                                  : -static_cast<std::int64_t>(v);
    return static_cast<std::int64_t>(v);
}

// The rule for `version` (docs/engine.md §8, rule 6): an optional `+`, then decimal digits,
// at most 2^64 - 1.
bool parse_u64(const std::string& s, std::uint64_t& out) {
    std::size_t i = !s.empty() && s[0] == '+' ? 1 : 0;
    if (i == s.size()) return false;
    std::uint64_t v = 0;
    const std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
    for (; i < s.size(); ++i) {
        if (s[i] < '0' || s[i] > '9') return false;
        const auto d = static_cast<std::uint64_t>(s[i] - '0');
        if (v > (max - d) / 10) return false;
        v = v * 10 + d;
    }
    out = v;
    return true;
}
}  // namespace

Model Model::load(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) model_file(path, "cannot be read");
    std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(f)),
                                    std::istreambuf_iterator<char>());
    if (bytes.size() < 8) model_file(path, "is not a safetensors file: shorter than 8 bytes");
    std::uint64_t hlen = le::u64(bytes.data());
    if (hlen > bytes.size() - 8)
        model_file(path, "is not a safetensors file: header length beyond the file");
    auto header = nlohmann::json::parse(bytes.begin() + 8,
                                        bytes.begin() + 8 + static_cast<std::ptrdiff_t>(hlen),
                                        nullptr, false);
    if (header.is_discarded() || !header.is_object())
        model_file(path, "is not a safetensors file: the header is not a JSON object");
    const std::uint8_t* data = bytes.data() + 8 + hlen;
    const std::size_t data_len = bytes.size() - 8 - static_cast<std::size_t>(hlen);

    nlohmann::json meta = header.value("__metadata__", nlohmann::json::object());
    auto fieldv = [&](const char* key) -> std::string {
        auto it = meta.find(key);
        if (it == meta.end() || !it->is_string())
            model_file(path, std::string("metadata has no `") + key + "`");
        return it->get<std::string>();
    };
    auto number = [&](const char* key) -> std::int64_t {
        bool ok;
        std::int64_t v = parse_i64(fieldv(key), ok);
        if (!ok) model_file(path, std::string("metadata `") + key + "` is not an integer");
        return v;
    };
    std::string format = fieldv("format");
    if (format != "qnllm-spiking-v1")
        model_file(path, "format is `" + format + "`, expected `qnllm-spiking-v1`");
    auto unsigned_ = [&](const char* key) -> std::uint32_t {
        std::int64_t v = number(key);
        if (v < 0 || v > 0xffffffffll) model_file(path, std::string("metadata `") + key + "` is out of range");
        return static_cast<std::uint32_t>(v);
    };
    auto signed_ = [&](const char* key) -> std::int32_t {
        std::int64_t v = number(key);
        if (v < std::numeric_limits<std::int32_t>::min() || v > I32_MAX)
            model_file(path, std::string("metadata `") + key + "` is out of range");
        return static_cast<std::int32_t>(v);
    };
    Params p;
    p.inputs = unsigned_("inputs");
    p.hidden = unsigned_("hidden");
    p.steps = unsigned_("steps");
    p.labels = unsigned_("labels");
    p.hidden_leak_shift = unsigned_("hidden_leak_shift");
    p.hidden_threshold = signed_("hidden_threshold");
    p.output_leak_shift = unsigned_("output_leak_shift");
    p.output_threshold = signed_("output_threshold");
    std::string why = p.check();
    if (!why.empty()) invalid_params(why);
    std::uint64_t version = 0;
    if (!parse_u64(fieldv("version"), version))
        model_file(path, "metadata `version` is not an integer from 0 to 2^64 - 1");

    auto tensor = [&](const char* name, const char* dtype, std::size_t width, std::uint64_t a,
                      std::uint64_t b) -> std::vector<std::uint8_t> {
        auto it = header.find(name);
        if (it == header.end() || !it->is_object())
            model_file(path, std::string("no tensor `") + name + "`");
        const auto& t = *it;
        std::string dt = t.value("dtype", "");
        auto shape = t.value("shape", nlohmann::json::array());
        bool shape_ok = shape.is_array() && shape.size() == 2 && shape[0].is_number_unsigned() &&
                        shape[1].is_number_unsigned() && shape[0].get<std::uint64_t>() == a &&
                        shape[1].get<std::uint64_t>() == b;
        if (dt != dtype || !shape_ok) {
            model_file(path, std::string("tensor `") + name + "` is " + dt + " " + shape.dump() +
                                 ", expected " + dtype + " [" + std::to_string(a) + ", " +
                                 std::to_string(b) + "]");
        }
        auto off = t.value("data_offsets", nlohmann::json::array());
        if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
            !off[1].is_number_unsigned())
            model_file(path, std::string("tensor `") + name + "` has no data_offsets");
        std::uint64_t lo = off[0].get<std::uint64_t>(), hi = off[1].get<std::uint64_t>();
        if (lo > hi || hi > data_len || hi - lo != a * b * width)
            model_file(path, std::string("tensor `") + name + "` has invalid data_offsets");
        return std::vector<std::uint8_t>(data + lo, data + hi);
    };
    auto wb = tensor("input_weights", "I8", 1, p.hidden, p.inputs);
    auto rb = tensor("readout_weights", "I16", 2, p.labels, p.hidden);
    std::vector<std::int8_t> w(wb.size());
    for (std::size_t i = 0; i < wb.size(); ++i) w[i] = static_cast<std::int8_t>(wb[i]);
    std::vector<std::int16_t> r(rb.size() / 2);
    for (std::size_t i = 0; i < r.size(); ++i)
        r[i] = static_cast<std::int16_t>(le::u16(rb.data() + 2 * i));
    // The served readout A (docs/engine.md §2, §8); a file without it loads with A = R * 256.
    std::vector<std::int32_t> a;
    if (header.contains("served_readout")) {
        auto ab = tensor("served_readout", "I32", 4, p.labels, p.hidden);
        a.resize(ab.size() / 4);
        for (std::size_t i = 0; i < a.size(); ++i)
            a[i] = static_cast<std::int32_t>(le::u32(ab.data() + 4 * i));
    }
    // The bounds, in the loader's order: R within +-32767 (rule 8), then A (rule 9).
    for (auto v : r)
        if (v == std::numeric_limits<std::int16_t>::min())
            model_file(path, "readout weights must lie within +-32767");
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (a[i] < -SERVED_LIMIT || a[i] > SERVED_LIMIT) {
            model_file(path, "served readout value " + std::to_string(a[i]) + " at [" +
                                 std::to_string(i / p.hidden) + ", " +
                                 std::to_string(i % p.hidden) +
                                 "] lies outside ±8388352 (32767 · 256)");
        }
    }
    return from_parts(fieldv("name"), p, std::move(w), std::move(r),
                      version, std::move(a));
}

Model Model::open(const std::string& spec) {
    if (spec.rfind("seed:", 0) == 0) {
        std::string n = spec.substr(5);
        bool ok = !n.empty();
        std::uint64_t seed = 0;
        for (char c : n) {
            if (c < '0' || c > '9') ok = false;
            else seed = seed * 10 + static_cast<std::uint64_t>(c - '0');
        }
        if (!ok || n.size() > 20) throw EngineError(ErrorCode::InvalidInput, "bad model `" + spec + "`: expected seed:N or a file");
        return from_seed(seed);
    }
    return load(spec);
}

Reasoning ReferenceEngine::reason(span<const float> x) {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return model_.reason(x);
}

EngineInfo ReferenceEngine::info() {
    std::shared_lock<std::shared_mutex> lock(mu_);
    EngineInfo i;
    i.name = model_.name();
    i.model_digest = model_.digest();
    i.model_version = model_.version();
    i.input_size = model_.params().inputs;
    i.hidden = model_.params().hidden;
    i.steps = model_.params().steps;
    i.labels = model_.params().labels;
    return i;
}

Learned ReferenceEngine::learn(span<const float> x, std::uint32_t label,
                               std::uint64_t base_version) {
    std::unique_lock<std::shared_mutex> lock(mu_);
    if (base_version != model_.version()) {
        throw EngineError(ErrorCode::VersionConflict,
                          "learn names model version " + std::to_string(base_version) +
                              ", the engine is at " + std::to_string(model_.version()));
    }
    model_.learn(x, label);
    return Learned{model_.version(), model_.digest()};
}

}  // namespace qnllm
