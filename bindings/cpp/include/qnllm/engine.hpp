// qnllm/engine.hpp: the reference engine of docs/engine.md (integer LIF network), bit-identical
// to the Rust crate qnllm-engine, and the Engine interface a worker serves.
#pragma once

#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "qnllm/common.hpp"
#include "qnllm/protocol.hpp"

namespace qnllm {

/// Why an engine refused or failed. `code()` is the wire error code for the request.
class EngineError : public std::runtime_error {
public:
    EngineError(ErrorCode code, const std::string& message)
        : std::runtime_error(message), code_(code) {}
    ErrorCode code() const noexcept { return code_; }

private:
    ErrorCode code_;
};

/// What a worker needs to know to register an engine.
struct EngineInfo {
    std::string name = "cpp";
    Digest model_digest{};
    std::uint64_t model_version = 0;
    std::uint32_t input_size = 768;
    std::uint32_t hidden = 0;
    std::uint32_t steps = 0;
    std::uint32_t labels = 10;
};

/// A reasoning engine a worker serves. Only `reason` is required: an engine whose `info()`
/// leaves the model digest all-zero is registered under the model its answer to one zero
/// encoding names. The worker fills a result's
/// `result_digest` (if left all-zero), `model_digest`/`model_version` (from `info()` if the
/// digest is left all-zero), `compute_ns` and `engine`.
struct Engine {
    virtual ~Engine() = default;
    virtual Reasoning reason(span<const float> x) = 0;
    /// Several encodings of `dim` values each; by default `reason` on each in order.
    virtual std::vector<Reasoning> reason_batch(span<const float> values, std::size_t dim);
    /// Identity for `register` and `model_info`.
    virtual EngineInfo info() { return EngineInfo{}; }
    /// Applies a learning step to a model at `base_version`; returns the new version and
    /// digest. The default refuses (EngineFailed).
    virtual Learned learn(span<const float> x, std::uint32_t label, std::uint64_t base_version);
};

/// The parameters of docs/engine.md.
struct Params {
    std::uint32_t inputs = 768;
    std::uint32_t hidden = 512;
    std::uint32_t steps = 16;
    std::uint32_t labels = 10;
    std::uint32_t hidden_leak_shift = 2;
    std::int32_t hidden_threshold = 32768;
    std::uint32_t output_leak_shift = 2;
    std::int32_t output_threshold = 1024;

    /// Empty if the parameters are valid, otherwise the reason they are refused.
    std::string check() const;
};

/// SplitMix64.
class SplitMix64 {
public:
    explicit SplitMix64(std::uint64_t seed) : s_(seed) {}
    std::uint64_t next() {
        s_ += 0x9e3779b97f4a7c15ull;
        std::uint64_t z = s_;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    std::int8_t next_i8() { return static_cast<std::int8_t>(static_cast<std::uint8_t>(next() >> 56)); }

private:
    std::uint64_t s_;
};

/// `count` reference inputs of `inputs` values from input seed `seed` (docs/engine.md §9).
std::vector<float> reference_inputs(std::uint64_t seed, std::size_t count, std::size_t inputs);

/// The result digest of docs/engine.md §6.
Digest result_digest(std::uint32_t label, std::uint32_t total_spikes,
                     const std::vector<std::int32_t>& scores,
                     const std::vector<std::uint32_t>& label_spikes);

/// Confidence from integer scores (docs/engine.md §5).
float confidence_of(const std::vector<std::int32_t>& scores, std::uint32_t label);

/// How the input currents are computed. Both give the same integers (tested).
enum class Kernel { Scalar, Avx2 };
/// The best kernel this CPU runs (`QNLLM_KERNEL=scalar` in the environment forces Scalar).
Kernel best_kernel();
/// True if this CPU can run `k`.
bool kernel_available(Kernel k);
const char* kernel_name(Kernel k);

/// The model: parameters, weights and version.
class Model {
public:
    /// Chooses the kernel for later calls (default: best_kernel()); false if unavailable.
    bool set_kernel(Kernel k);
    Kernel kernel() const { return kernel_; }

    /// The model `seed:N`.
    static Model from_seed(std::uint64_t seed, const Params& params = Params{});
    /// A safetensors file written by `qnllm export`; throws EngineError naming what is wrong.
    static Model load(const std::string& path);
    /// `seed:N` or a file path.
    static Model open(const std::string& spec);
    /// From parts; throws EngineError if they do not fit together. `served` is the served
    /// readout A (labels x hidden, within +-32767 * 256); empty means A = R * 256.
    static Model from_parts(std::string name, const Params& params, std::vector<std::int8_t> w,
                            std::vector<std::int16_t> r, std::uint64_t version,
                            std::vector<std::int32_t> served = {});

    const Params& params() const { return p_; }
    const std::string& name() const { return name_; }
    std::uint64_t version() const { return version_; }
    const Digest& digest() const { return digest_; }
    const std::vector<std::int8_t>& input_weights() const { return w_; }
    /// The readout R, the weights learning changes (docs/engine.md §2, §7).
    const std::vector<std::int16_t>& readout() const { return r_; }
    /// The served readout A (docs/engine.md §7): reasoning uses A >> 8 in place of R.
    const std::vector<std::int32_t>& served_readout() const { return a_; }

    /// Refuses an encoding of the wrong length or with a non-finite value (InvalidInput).
    void validate(span<const float> x) const;
    /// The reasoning for one encoding (model fields filled, compute_ns 0, engine empty).
    Reasoning reason(span<const float> x) const;
    /// One learning step (docs/engine.md §7: the margin update of R against the rival, then
    /// the moving average A); returns the label the model predicted before learning.
    std::uint32_t learn(span<const float> x, std::uint32_t label);

private:
    struct Run {
        std::uint32_t label;
        std::uint32_t total;
        std::vector<std::int32_t> scores;
        std::vector<std::uint32_t> label_spikes;
        std::vector<std::uint32_t> counts;
    };
    Run run(span<const float> x) const;
    Run run_avx2(span<const float> x) const;
    std::size_t padded_hidden() const { return (std::size_t{p_.hidden} + 15) / 16 * 16; }
    void rehash();

    std::string name_;
    Params p_;
    std::vector<std::int8_t> w_;
    std::vector<std::int16_t> r_;
    std::vector<std::int32_t> a_;   // the served readout A, labels x hidden
    // S = A >> 8, the readout reasoning uses, in the two layouts the kernels read:
    std::vector<std::int16_t> rt_;  // S transposed (hidden x labels), for the scalar readout
    std::vector<std::int16_t> rp_;  // S with rows padded with zeros to a multiple of 16 (AVX2)
    std::uint64_t version_ = 0;
    Kernel kernel_ = best_kernel();
    Digest input_digest_{};
    Digest digest_{};
};

/// The reference engine as an Engine a worker can serve (learning is serialised).
class ReferenceEngine : public Engine {
public:
    explicit ReferenceEngine(Model model) : model_(std::move(model)) {}
    Reasoning reason(span<const float> x) override;
    EngineInfo info() override;
    Learned learn(span<const float> x, std::uint32_t label, std::uint64_t base_version) override;

private:
    std::shared_mutex mu_;
    Model model_;
};

}  // namespace qnllm
