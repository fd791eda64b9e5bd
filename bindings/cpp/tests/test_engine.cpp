// test_engine.cpp: the C++ reference engine against every golden vector of
// testdata/engine/golden.json, plus the loader and input refusals.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "qnllm/engine.hpp"
#include "qnllm/sha256.hpp"

using namespace qnllm;
using nlohmann::json;

namespace {
json golden() {
    std::ifstream f(std::string(QNLLM_TESTDATA) + "/engine/golden.json");
    REQUIRE(f.good());
    return json::parse(f);
}
Params params_of(const json& j) {
    Params p;
    p.inputs = j.at("inputs").get<std::uint32_t>();
    p.hidden = j.at("hidden").get<std::uint32_t>();
    p.steps = j.at("steps").get<std::uint32_t>();
    p.labels = j.at("labels").get<std::uint32_t>();
    p.hidden_leak_shift = j.at("hidden_leak_shift").get<std::uint32_t>();
    p.hidden_threshold = j.at("hidden_threshold").get<std::int32_t>();
    p.output_leak_shift = j.at("output_leak_shift").get<std::uint32_t>();
    p.output_threshold = j.at("output_threshold").get<std::int32_t>();
    return p;
}
std::uint32_t bits(float f) {
    std::uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}
}  // namespace

TEST_CASE("SHA-256 of the FIPS examples") {
    CHECK(to_hex(Sha256::of("abc", 3)) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(to_hex(Sha256::of("", 0)) ==
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    std::string m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK(to_hex(Sha256::of(m.data(), m.size())) ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // Split updates agree with one update.
    std::string big(1000, 'x');
    Sha256 s;
    for (std::size_t i = 0; i < big.size(); i += 7) s.update(big.data() + i, std::min<std::size_t>(7, big.size() - i));
    CHECK(s.finish() == Sha256::of(big.data(), big.size()));
}

TEST_CASE("SplitMix64 seed 0 gives the three values of docs/engine.md") {
    SplitMix64 r(0);
    CHECK(r.next() == 0xe220a8397b1dcdafull);
    CHECK(r.next() == 0x6e789e6aa1b965f4ull);
    CHECK(r.next() == 0x06c45d188009454full);
}

TEST_CASE("every engine golden vector matches") {
    json g = golden();
    REQUIRE(g.at("cases").size() >= 10);
    for (const auto& c : g.at("cases")) {
        CAPTURE(c.dump());
        Params p = params_of(g.at(c.at("params").get<std::string>() + "_params"));
        Model m = Model::from_seed(c.at("model_seed").get<std::uint64_t>(), p);
        auto steps = c.at("learn_steps").get<std::size_t>();
        auto in_seed = c.at("input_seed").get<std::uint64_t>();
        if (steps > 0) {
            auto teach = reference_inputs(in_seed + 1000, steps, p.inputs);
            for (std::size_t s = 0; s < steps; ++s)
                m.learn(span<const float>(teach.data() + s * p.inputs, p.inputs),
                        static_cast<std::uint32_t>(s % p.labels));
        }
        auto index = c.at("input_index").get<std::size_t>();
        auto xs = reference_inputs(in_seed, index + 1, p.inputs);
        span<const float> x(xs.data() + index * p.inputs, p.inputs);
        for (std::size_t i = 0; i < 4; ++i)
            CHECK(bits(x[i]) == c.at("first_inputs")[i].get<std::uint32_t>());
        for (Kernel k : {Kernel::Scalar, Kernel::Avx2}) {
        if (!m.set_kernel(k)) continue;
        CAPTURE(kernel_name(k));
        Reasoning r = m.reason(x);
        CHECK(r.label == c.at("label").get<std::uint32_t>());
        CHECK(bits(r.confidence) == c.at("confidence_bits").get<std::uint32_t>());
        CHECK(r.scores == c.at("scores").get<std::vector<std::int32_t>>());
        CHECK(r.label_spikes == c.at("label_spikes").get<std::vector<std::uint32_t>>());
        CHECK(r.total_spikes == c.at("total_spikes").get<std::uint32_t>());
        CHECK(r.model_version == c.at("model_version").get<std::uint64_t>());
        CHECK(to_hex(r.model_digest) == c.at("model_digest").get<std::string>());
        CHECK(to_hex(r.result_digest) == c.at("result_digest").get<std::string>());
        }
    }
}

TEST_CASE("bad encodings are refused with the documented messages") {
    Model m = Model::from_seed(1);
    std::vector<float> x(767, 0.0f);
    auto message = [&](const std::vector<float>& v) -> std::string {
        try {
            m.reason(v);
            return "ok";
        } catch (const EngineError& e) {
            CHECK(e.code() == ErrorCode::InvalidInput);
            return e.what();
        }
    };
    CHECK(message(x) == "encoding has 767 values, the model takes 768");
    x.resize(768, 0.0f);
    CHECK(message(x) == "ok");
    x[5] = std::numeric_limits<float>::quiet_NaN();
    x[9] = std::numeric_limits<float>::infinity();
    CHECK(message(x) == "value at index 5 is NaN: encodings must be finite");
    x[5] = -std::numeric_limits<float>::infinity();
    CHECK(message(x) == "value at index 5 is -inf: encodings must be finite");
    x[5] = 0;
    CHECK(message(x) == "value at index 9 is inf: encodings must be finite");
}

TEST_CASE("extreme inputs saturate at the clamp without overflow") {
    Model m = Model::from_seed(3);
    std::vector<float> hi(768, std::numeric_limits<float>::max()), lo(768, -1e30f);
    Reasoning a = m.reason(hi), b = m.reason(lo);
    // x*128 saturates at +-127 exactly as 1.0 does (127/128 < 1).
    std::vector<float> one(768, 1.0f), minus(768, -1.0f);
    CHECK(a.result_digest == m.reason(one).result_digest);
    CHECK(b.result_digest == m.reason(minus).result_digest);
}

TEST_CASE("learning twice from the same stream gives identical models; versions count") {
    Model a = Model::from_seed(5), b = Model::from_seed(5);
    auto xs = reference_inputs(99, 20, 768);
    for (std::size_t s = 0; s < 20; ++s) {
        span<const float> x(xs.data() + s * 768, 768);
        a.learn(x, static_cast<std::uint32_t>(s % 10));
        b.learn(x, static_cast<std::uint32_t>(s % 10));
    }
    CHECK(a.version() == 20);
    CHECK(a.digest() == b.digest());
    CHECK(a.digest() != Model::from_seed(5).digest());
    CHECK_THROWS_AS(a.learn(span<const float>(xs.data(), 768), 10), EngineError);
}

TEST_CASE("invalid parameters are refused with the reason") {
    Params p;
    p.hidden = 511;
    CHECK_THROWS_WITH_AS(Model::from_seed(1, p), doctest::Contains("hidden must be even"), EngineError);
    p = Params{};
    p.inputs = 1u << 20;
    CHECK_THROWS_WITH_AS(Model::from_seed(1, p), doctest::Contains("overflow the membrane"), EngineError);
    p = Params{};
    p.steps = 1000;
    CHECK_THROWS_WITH_AS(Model::from_seed(1, p), doctest::Contains("overflow the scores"), EngineError);
}

TEST_CASE("the safetensors loader refuses what is wrong, naming it") {
    std::string path = "qnllm-test-bad.safetensors";
    auto write = [&](const std::string& header, const std::vector<std::uint8_t>& data) {
        std::ofstream f(path, std::ios::binary);
        std::vector<std::uint8_t> len;
        le::put_u64(len, header.size());
        f.write(reinterpret_cast<const char*>(len.data()), 8);
        f.write(header.data(), static_cast<std::streamsize>(header.size()));
        f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    };
    auto error = [&]() -> std::string {
        try {
            Model::load(path);
            return "ok";
        } catch (const EngineError& e) {
            return e.what();
        }
    };
    json meta = {{"format", "qnllm-spiking-v1"}, {"name", "tiny"}, {"version", "3"},
                 {"inputs", "16"}, {"hidden", "8"}, {"steps", "4"}, {"labels", "3"},
                 {"hidden_leak_shift", "1"}, {"hidden_threshold", "2000"},
                 {"output_leak_shift", "1"}, {"output_threshold", "100"}};
    auto file = [&](const json& m, const char* rdtype = "I16", std::int16_t r0 = 5) {
        json h = {{"__metadata__", m},
                  {"input_weights", {{"dtype", "I8"}, {"shape", {8, 16}}, {"data_offsets", {0, 128}}}},
                  {"readout_weights", {{"dtype", rdtype}, {"shape", {3, 8}}, {"data_offsets", {128, 176}}}}};
        std::vector<std::uint8_t> data(176, 1);
        data[128] = static_cast<std::uint8_t>(static_cast<std::uint16_t>(r0));
        data[129] = static_cast<std::uint8_t>(static_cast<std::uint16_t>(r0) >> 8);
        write(h.dump(), data);
    };
    file(meta);
    CHECK(error() == "ok");
    Model ok = Model::load(path);
    CHECK(ok.name() == "tiny");
    CHECK(ok.version() == 3);
    CHECK(ok.readout()[0] == 5);
    file(meta, "I32");
    CHECK(error().find("tensor `readout_weights` is I32") != std::string::npos);
    file(meta, "I16", -32768);
    CHECK(error().find("within +-32767") != std::string::npos);
    json m2 = meta;
    m2.erase("steps");
    file(m2);
    CHECK(error().find("metadata has no `steps`") != std::string::npos);
    m2 = meta;
    m2["version"] = "9223372036854775808";
    file(m2);
    CHECK(error().find("metadata `version` is not an integer") != std::string::npos);
    m2 = meta;
    m2["format"] = "other";
    file(m2);
    CHECK(error().find("format is `other`") != std::string::npos);
    write("{", {});
    CHECK(error().find("not a safetensors file") != std::string::npos);
    std::remove(path.c_str());
}

TEST_CASE("every kernel gives the same integers on random and extreme inputs") {
    if (!kernel_available(Kernel::Avx2)) {
        MESSAGE("AVX2 not available on this CPU: only the scalar kernel runs");
        return;
    }
    Params small;
    small.inputs = 37;  // not a multiple of 16: the tail loop runs too
    small.hidden = 8;
    small.labels = 3;
    small.steps = 4;
    small.hidden_threshold = 2000;
    small.output_threshold = 100;
    // 100 inputs: one 64-block, two 16-blocks and a tail of 4; 48 hidden: padded to 48, one
    // 32-block and one 16-block in the readout.
    Params mid = small;
    mid.inputs = 100;
    mid.hidden = 48;
    mid.labels = 5;
    mid.steps = 9;
    for (const Params& p : {Params{}, small, mid}) {
        Model a = Model::from_seed(9, p), b = Model::from_seed(9, p);
        REQUIRE(a.set_kernel(Kernel::Scalar));
        REQUIRE(b.set_kernel(Kernel::Avx2));
        auto xs = reference_inputs(31, 50, p.inputs);
        for (std::size_t k = 0; k < 50; ++k) {
            span<const float> x(xs.data() + k * p.inputs, p.inputs);
            CHECK(a.reason(x).result_digest == b.reason(x).result_digest);
        }
        for (float v : {1.0f, -1.0f, 0.5f, -0.0f}) {
            std::vector<float> x(p.inputs, v);
            for (std::size_t i = 0; i < x.size(); i += 3) x[i] = -v;
            CHECK(a.reason(x).result_digest == b.reason(x).result_digest);
            CHECK(a.reason(x).scores == b.reason(x).scores);
        }
        // Halves (ties to even in quantisation) and values around the +-127 clamp.
        std::vector<float> ties(p.inputs);
        for (std::size_t i = 0; i < ties.size(); ++i)
            ties[i] = (static_cast<float>(i % 259) - 129.0f + 0.5f) / 128.0f;
        CHECK(a.reason(ties).scores == b.reason(ties).scores);
        CHECK(a.reason(ties).result_digest == b.reason(ties).result_digest);
        // Learning uses each kernel's spike counts: the models stay identical.
        for (std::size_t k = 0; k < 20; ++k) {
            span<const float> x(xs.data() + k * p.inputs, p.inputs);
            auto label = static_cast<std::uint32_t>(k % p.labels);
            CHECK(a.learn(x, label) == b.learn(x, label));
        }
        CHECK(a.digest() == b.digest());
        CHECK(a.readout() == b.readout());
    }
}
