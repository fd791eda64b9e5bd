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

// A model whose hidden counts are known: 16 inputs, 8 hidden, 3 labels, 4 steps, threshold
// 2000, leak shift 1. On the input all 1.0 (q = 127), a neuron whose input weights are all 1
// gets 16 * 127 = 2032 per step and fires on every step (count 4); one whose weights are all
// 0 never fires. `firing` names the neurons with weights 1.
Params tiny_params() {
    Params p;
    p.inputs = 16;
    p.hidden = 8;
    p.labels = 3;
    p.steps = 4;
    p.hidden_leak_shift = 1;
    p.hidden_threshold = 2000;
    p.output_leak_shift = 1;
    p.output_threshold = 100;
    return p;
}
Model tiny(const std::vector<std::int16_t>& r, std::uint64_t version = 0,
           std::vector<std::int32_t> served = {}, std::uint32_t firing = 8) {
    std::vector<std::int8_t> w(8 * 16, 0);
    for (std::size_t j = 0; j < firing; ++j)
        for (std::size_t i = 0; i < 16; ++i) w[j * 16 + i] = 1;
    return Model::from_parts("tiny", tiny_params(), std::move(w), r, version, std::move(served));
}
const std::vector<float> ONES(16, 1.0f);
// A tiny model's 3 x 8 readout with every value of row 0 equal to a, of row 1 to b, of row 2
// to c: R through rows(), A through served_rows().
template <class T>
std::vector<T> rows_of(T a, T b, T c) {
    std::vector<T> v(24);
    for (std::size_t j = 0; j < 8; ++j) {
        v[j] = a;
        v[8 + j] = b;
        v[16 + j] = c;
    }
    return v;
}
std::vector<std::int16_t> rows(std::int16_t a, std::int16_t b, std::int16_t c) {
    return rows_of(a, b, c);
}
std::vector<std::int32_t> served_rows(std::int32_t a, std::int32_t b, std::int32_t c) {
    return rows_of(a, b, c);
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

TEST_CASE("a correct prediction within the margin still moves R, against the rival") {
    // Every neuron fires 4 times: total 32, margin 16 * 32 = 512. g = 32 * (row value).
    Model m = tiny(rows(15, 0, 0));
    REQUIRE(m.reason(ONES).label == 0);
    // g = 480, 0, 0: label 0 leads by 480 < 512, so R moves although the prediction is
    // right; the rival is label 1 (g ties with label 2, the lowest index wins).
    CHECK(m.learn(ONES, 0) == 0);
    CHECK(m.readout() == rows(19, -4, 0));
    // g = 608, -128, 0: the lead over the rival (label 2) is 608 >= 512: R stays.
    m.learn(ONES, 0);
    CHECK(m.readout() == rows(19, -4, 0));
    // Label 2 (g 0) against the rival label 0 (g 608): R[2] += 4, R[0] -= 4.
    CHECK(m.learn(ONES, 2) == 0);
    CHECK(m.readout() == rows(15, -4, 4));
    // All g equal (0): label 2's rival is label 0, the lowest index.
    Model z = tiny(rows(0, 0, 0));
    z.learn(ONES, 2);
    CHECK(z.readout() == rows(-4, 0, 4));
    // Only spiking neurons move: with neurons 0..3 firing (total 16, margin 256), label 1's
    // rival is label 0; neurons 4..7 have count 0.
    Model half = tiny(rows(0, 0, 0), 0, {}, 4);
    half.learn(ONES, 1);
    std::vector<std::int16_t> want(24, 0);
    for (std::size_t j = 0; j < 4; ++j) {
        want[j] = -4;
        want[8 + j] = 4;
    }
    CHECK(half.readout() == want);
}

TEST_CASE("R is clamped to +-32767 by the margin update") {
    // Labels 0 and 1 tie (lead 0 < 512): R[0] = min(32765 + 4, 32767), R[1] (rival) -= 4.
    Model up = tiny(rows(32765, 32765, -32767));
    up.learn(ONES, 0);
    CHECK(up.readout() == rows(32767, 32761, -32767));
    // All tie: label 2's rival is label 0, R[0] = max(-32765 - 4, -32767).
    Model down = tiny(rows(-32765, -32765, -32765));
    down.learn(ONES, 2);
    CHECK(down.readout() == rows(-32767, -32765, -32761));
}

TEST_CASE("reasoning uses the served readout A >> 8, not R") {
    // R says label 0; A says label 1 (S = 50 on row 1, -1 on row 2: the shift is arithmetic).
    Model m = tiny(rows(100, 0, 0), 7, served_rows(0, 50 * 256 + 255, -1));
    for (Kernel k : {Kernel::Scalar, Kernel::Avx2}) {
        if (!m.set_kernel(k)) continue;
        CAPTURE(kernel_name(k));
        Reasoning r = m.reason(ONES);
        CHECK(r.label == 1);
        // 8 neurons fire on each of 4 steps: scores = 32 * S.
        CHECK(r.scores == std::vector<std::int32_t>{0, 1600, -32});
        CHECK(r.total_spikes == 32);
    }
    // A model made without A serves R (A = R * 256).
    Model plain = tiny(rows(100, 0, 0));
    CHECK(plain.served_readout() == served_rows(25600, 0, 0));
    CHECK(plain.reason(ONES).scores == std::vector<std::int32_t>{3200, 0, 0});
    // learn() returns the served prediction, and R's g decides the update: R leads with
    // label 0 (g 3200 >= 512), so R stays although the served label is 1.
    CHECK(m.learn(ONES, 0) == 1);
    CHECK(m.readout() == rows(100, 0, 0));
}

TEST_CASE("the served readout follows R with the warm-start shift, on every step") {
    // R stays (label 0 leads by 3200 >= 512); A moves by ((R << 8) - A) >> s, s = floor(
    // log2(version + 1)) below version 255, else 8.
    auto step = [](std::uint64_t version, std::vector<std::int32_t> a) {
        Model m = tiny(rows(100, -1, 0), version, std::move(a));
        m.learn(ONES, 0);
        CHECK(m.readout() == rows(100, -1, 0));
        CHECK(m.version() == version + 1);
        return m.served_readout();
    };
    // Version 0: s = 0, A = R * 256 at once.
    CHECK(step(0, served_rows(0, 0, 0)) == served_rows(25600, -256, 0));
    CHECK(step(1, served_rows(0, 0, 0)) == served_rows(12800, -128, 0));    // s = 1
    CHECK(step(2, served_rows(0, 0, 0)) == served_rows(12800, -128, 0));    // s = 1
    CHECK(step(3, served_rows(0, 0, 0)) == served_rows(6400, -64, 0));      // s = 2
    CHECK(step(126, served_rows(0, 0, 0)) == served_rows(400, -4, 0));      // s = 6
    CHECK(step(127, served_rows(0, 0, 0)) == served_rows(200, -2, 0));      // s = 7
    CHECK(step(254, served_rows(0, 0, 0)) == served_rows(200, -2, 0));      // s = 7
    CHECK(step(255, served_rows(0, 0, 0)) == served_rows(100, -1, 0));      // s = 8
    CHECK(step(std::uint64_t{1} << 40, served_rows(0, 0, 0)) == served_rows(100, -1, 0)); // s = 8
    // The shift is arithmetic (floor): (0 - 1) >> 8 = -1 takes A = 1 to 0, and (0 + 1) >> 8 = 0
    // leaves A = -1; A = R * 256 stays put.
    CHECK(step(300, served_rows(25600, 0, 1)) == served_rows(25600, -1, 0));
    CHECK(step(300, served_rows(25600, -256, -1)) == served_rows(25600, -256, -1));
    // From the bounds toward R * 256: (25600 + 8388352) >> 8 = 32867, (-256 - 8388352) >> 8
    // = -32768 (the difference fits i32).
    CHECK(step(300, served_rows(-8388352, 8388352, 0)) ==
          served_rows(-8388352 + 32867, 8388352 - 32768, 0));
}

TEST_CASE("the model digest covers the served readout") {
    Model a = tiny(rows(100, 0, 0), 3), b = tiny(rows(100, 0, 0), 3, served_rows(25600, 0, 0));
    Model c = tiny(rows(100, 0, 0), 3, served_rows(25600, 0, 1));
    CHECK(a.digest() == b.digest());
    CHECK(a.digest() != c.digest());
    // v2: "qnllm-model-v2\0", the parameters and version, SHA-256 of W, R as i16 LE, A as
    // i32 LE, written out here from docs/engine.md.
    std::vector<std::uint8_t> bytes;
    const char tag[] = "qnllm-model-v2";
    bytes.insert(bytes.end(), tag, tag + 15);  // with the NUL
    for (std::uint32_t v : {16u, 8u, 4u, 3u, 1u, 2000u, 1u, 100u}) le::put_u32(bytes, v);
    le::put_u64(bytes, 3);
    Digest wd = Sha256::of(c.input_weights().data(), c.input_weights().size());
    bytes.insert(bytes.end(), wd.begin(), wd.end());
    for (auto r : c.readout()) le::put_u16(bytes, static_cast<std::uint16_t>(r));
    for (auto v : c.served_readout()) le::put_u32(bytes, static_cast<std::uint32_t>(v));
    REQUIRE(bytes.size() == 15 + 40 + 32 + 48 + 96);
    CHECK(c.digest() == Sha256::of(bytes.data(), bytes.size()));
}

TEST_CASE("a served readout out of range or of the wrong size is refused by from_parts") {
    CHECK_THROWS_WITH_AS(tiny(rows(0, 0, 0), 0, served_rows(0, 8388353, 0)),
                         doctest::Contains("within ±8388352 (32767 · 256), got"), EngineError);
    CHECK_THROWS_WITH_AS(tiny(rows(0, 0, 0), 0, served_rows(0, -8388353, 0)),
                         doctest::Contains("within ±8388352 (32767 · 256), got"), EngineError);
    CHECK_THROWS_WITH_AS(tiny(rows(0, 0, 0), 0, std::vector<std::int32_t>(23, 0)),
                         doctest::Contains("23 served readout values"), EngineError);
    CHECK_NOTHROW(tiny(rows(0, 0, 0), 0, served_rows(-8388352, 8388352, 0)));
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

namespace {
// A safetensors file: the header's length (u64 LE), the header, the data.
void write_safetensors(const std::string& path, const std::string& header,
                       const std::vector<std::uint8_t>& data) {
    std::ofstream f(path, std::ios::binary);
    std::vector<std::uint8_t> len;
    le::put_u64(len, header.size());
    f.write(reinterpret_cast<const char*>(len.data()), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}
// "ok" if the file loads, else the loader's message.
std::string load_error(const std::string& path) {
    try {
        Model::load(path);
        return "ok";
    } catch (const EngineError& e) {
        return e.what();
    }
}
// The metadata of a model with tiny_params() at version 3.
const json TINY_META = {{"format", "qnllm-spiking-v1"}, {"name", "tiny"}, {"version", "3"},
                        {"inputs", "16"}, {"hidden", "8"}, {"steps", "4"}, {"labels", "3"},
                        {"hidden_leak_shift", "1"}, {"hidden_threshold", "2000"},
                        {"output_leak_shift", "1"}, {"output_threshold", "100"}};
}  // namespace

TEST_CASE("the safetensors loader refuses what is wrong, naming it") {
    std::string path = "qnllm-test-bad.safetensors";
    auto write = [&](const std::string& header, const std::vector<std::uint8_t>& data) {
        write_safetensors(path, header, data);
    };
    auto error = [&]() { return load_error(path); };
    const json& meta = TINY_META;
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
    // The version is a u64 (docs/engine.md §8, rule 6): 2^63 and 2^64 - 1 load.
    for (const char* v : {"9223372036854775808", "18446744073709551615", "+5"}) {
        m2 = meta;
        m2["version"] = v;
        file(m2);
        CAPTURE(v);
        REQUIRE(error() == "ok");
        CHECK(std::to_string(Model::load(path).version()) == (v[0] == '+' ? v + 1 : v));
    }
    for (const char* v : {"18446744073709551616", "-1", "", "+", "1e3", " 1"}) {
        m2 = meta;
        m2["version"] = v;
        file(m2);
        CAPTURE(v);
        CHECK(error().find("metadata `version` is not an integer from 0 to 2^64 - 1") !=
              std::string::npos);
    }
    m2 = meta;
    m2["format"] = "other";
    file(m2);
    CHECK(error().find("format is `other`") != std::string::npos);
    write("{", {});
    CHECK(error().find("not a safetensors file") != std::string::npos);
    std::remove(path.c_str());
}

TEST_CASE("the served_readout tensor loads; a file without it serves R; a wrong one is refused") {
    const std::string path = "qnllm-test-served.safetensors";
    // Input weights all 1 (every neuron fires 4 times on ONES), R = 7 (but R[0][0] = r0), and A (when
    // present) of `dtype` and `shape` at offsets 176.. of `bytes` bytes, `a` on row 1.
    auto file = [&](bool with_a, const char* dtype, const json& shape, std::size_t bytes,
                    std::int32_t a, std::int16_t r0 = 7) {
        json h = {{"__metadata__", TINY_META},
                  {"input_weights", {{"dtype", "I8"}, {"shape", {8, 16}}, {"data_offsets", {0, 128}}}},
                  {"readout_weights", {{"dtype", "I16"}, {"shape", {3, 8}}, {"data_offsets", {128, 176}}}}};
        std::vector<std::uint8_t> data(128, 1);
        for (std::size_t i = 0; i < 24; ++i)
            le::put_u16(data, static_cast<std::uint16_t>(i == 0 ? r0 : 7));
        if (with_a) {
            h["served_readout"] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {176, 176 + bytes}}};
            for (std::size_t i = 0; i < bytes / 4; ++i)
                le::put_u32(data, static_cast<std::uint32_t>(i >= 8 && i < 16 ? a : 0));
        }
        write_safetensors(path, h.dump(), data);
    };
    file(false, "", json::array(), 0, 0);
    REQUIRE(load_error(path) == "ok");
    Model plain = Model::load(path);
    CHECK(plain.served_readout() == std::vector<std::int32_t>(24, 7 * 256));
    CHECK(plain.reason(ONES).scores == std::vector<std::int32_t>{224, 224, 224});
    CHECK(plain.digest() == Model::from_parts("tiny", tiny_params(), plain.input_weights(),
                                              plain.readout(), 3).digest());

    file(true, "I32", {3, 8}, 96, -8388352);
    REQUIRE(load_error(path) == "ok");
    Model served = Model::load(path);
    CHECK(served.readout() == std::vector<std::int16_t>(24, 7));
    CHECK(served.served_readout() == served_rows(0, -8388352, 0));
    CHECK(served.reason(ONES).scores == std::vector<std::int32_t>{0, -32 * 32767, 0});
    CHECK(served.digest() != plain.digest());
    CHECK(served.digest() == Model::from_parts("tiny", tiny_params(), served.input_weights(),
                                               served.readout(), 3, served_rows(0, -8388352, 0))
                                 .digest());
    file(true, "I32", {3, 8}, 96, 8388352);
    CHECK(load_error(path) == "ok");

    // Refusals, each naming the tensor and what is wrong.
    file(true, "I16", {3, 8}, 48, 0);
    CHECK(load_error(path).find("tensor `served_readout` is I16 [3,8], expected I32 [3, 8]") !=
          std::string::npos);
    file(true, "I32", {8, 3}, 96, 0);
    CHECK(load_error(path).find("tensor `served_readout` is I32 [8,3], expected I32 [3, 8]") !=
          std::string::npos);
    file(true, "I32", {3, 7}, 84, 0);
    CHECK(load_error(path).find("tensor `served_readout` is I32 [3,7], expected I32 [3, 8]") !=
          std::string::npos);
    file(true, "I32", {3, 8}, 92, 0);
    CHECK(load_error(path).find("tensor `served_readout` has invalid data_offsets") != std::string::npos);
    file(true, "I32", {3, 8}, 96, 8388353);
    CHECK(load_error(path) == "model file " + path + ": served readout value 8388353 at [1, 0] "
                              "lies outside ±8388352 (32767 · 256)");
    file(true, "I32", {3, 8}, 96, -8388353);
    CHECK(load_error(path).find("served readout value -8388353 at [1, 0] lies outside") !=
          std::string::npos);
    file(true, "I32", {3, 8}, 96, std::numeric_limits<std::int32_t>::min());
    CHECK(load_error(path).find("served readout value -2147483648 at [1, 0] lies outside") !=
          std::string::npos);
    // R is checked before A (docs/engine.md §8, rules 8 and 9).
    file(true, "I32", {3, 8}, 96, 8388353, -32768);
    CHECK(load_error(path) == "model file " + path + ": readout weights must lie within +-32767");
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
        CHECK(a.served_readout() == b.served_readout());
    }
}
