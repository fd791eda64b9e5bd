// test_protocol.cpp: golden frames byte for byte, invalid frames with their named errors, and a
// seeded property test of the incremental decoder (every split, arbitrary bytes).
#include <doctest/doctest.h>

#include <algorithm>
#include <dirent.h>
#include <fstream>
#include <random>
#include <sstream>

#include "qnllm/protocol.hpp"

using namespace qnllm;

namespace {

struct HexFile {
    std::string name;
    std::vector<std::uint8_t> bytes;
    std::string expect;
};

std::vector<std::string> list(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = opendir(dir.c_str());
    REQUIRE(d != nullptr);
    while (dirent* e = readdir(d)) {
        std::string n = e->d_name;
        if (n.size() > 4 && n.substr(n.size() - 4) == ".hex") out.push_back(n);
    }
    closedir(d);
    std::sort(out.begin(), out.end());
    return out;
}

HexFile read_hex(const std::string& dir, const std::string& name) {
    std::ifstream f(dir + "/" + name);
    REQUIRE(f.good());
    HexFile h{name, {}, ""};
    std::string line, digits;
    while (std::getline(f, line)) {
        if (!line.empty() && line[0] == '#') {
            auto at = line.find("expect:");
            if (at != std::string::npos) {
                std::string e = line.substr(at + 7);
                e.erase(0, e.find_first_not_of(' '));
                e.erase(e.find_last_not_of(" \r") + 1);
                h.expect = e;
            }
            continue;
        }
        for (char c : line)
            if (!std::isspace(static_cast<unsigned char>(c))) digits.push_back(c);
    }
    REQUIRE(digits.size() % 2 == 0);
    for (std::size_t i = 0; i < digits.size(); i += 2)
        h.bytes.push_back(static_cast<std::uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
    return h;
}

const std::string GOLDEN = std::string(QNLLM_TESTDATA) + "/protocol";

// Decodes every frame of `bytes` fed in the given chunk sizes; returns the frames.
std::vector<Frame> decode_all(const std::vector<std::uint8_t>& bytes,
                              const std::vector<std::size_t>& cuts) {
    FrameDecoder d;
    std::vector<Frame> out;
    std::size_t at = 0;
    for (std::size_t cut : cuts) {
        d.feed(bytes.data() + at, cut - at);
        at = cut;
        while (auto f = d.next()) out.push_back(std::move(*f));
    }
    d.feed(bytes.data() + at, bytes.size() - at);
    while (auto f = d.next()) out.push_back(std::move(*f));
    return out;
}

}  // namespace

TEST_CASE("every golden frame decodes into one message and re-encodes byte for byte") {
    auto names = list(GOLDEN);
    REQUIRE(names.size() >= 35);
    std::vector<bool> seen(256, false);
    for (const auto& name : names) {
        CAPTURE(name);
        HexFile h = read_hex(GOLDEN, name);
        FrameDecoder d(1u << 20);
        d.feed(h.bytes.data(), h.bytes.size());
        auto frame = d.next();
        REQUIRE(frame.has_value());
        CHECK(d.buffered() == 0);
        CHECK_FALSE(d.next().has_value());
        Message m = frame->message();
        CHECK(kind_of(m) == frame->kind());
        seen[frame->header.kind] = true;
        std::vector<std::uint8_t> again =
            frame_bytes(m, frame->header.request_id, frame->header.deadline_us, frame->header.flags);
        CHECK(again == h.bytes);
        // The name of the file is NN-kind.hex: the kind's catalog name.
        std::string stem = name.substr(3, name.size() - 7);
        CHECK(stem.rfind(kind_name(frame->kind()), 0) == 0);
    }
    // Every kind of the catalog has a golden frame.
    for (int k = 0; k < 256; ++k)
        if (kind_known(static_cast<std::uint8_t>(k))) CHECK_MESSAGE(seen[k], "kind " << k);
}

TEST_CASE("every invalid golden frame fails with the error it names") {
    auto names = list(GOLDEN + "/invalid");
    REQUIRE(names.size() >= 11);
    for (const auto& name : names) {
        CAPTURE(name);
        HexFile h = read_hex(GOLDEN + "/invalid", name);
        REQUIRE_FALSE(h.expect.empty());
        std::string got = "no error";
        try {
            FrameDecoder d(1u << 20);
            d.feed(h.bytes.data(), h.bytes.size());
            auto frame = d.next();
            if (frame) frame->message();
            else got = "incomplete";
        } catch (const ProtocolError& e) {
            got = failure_name(e.failure());
        }
        CHECK(got == h.expect);
    }
}

TEST_CASE("the decoder refuses a stranger on its first byte and a bad version on the fifth") {
    FrameDecoder d;
    const std::uint8_t g = 'G';
    d.feed(&g, 1);
    CHECK_THROWS_AS(d.next(), ProtocolError);
    FrameDecoder v;
    const std::uint8_t head[5] = {'Q', 'N', 'L', 'M', 2};
    v.feed(head, 4);
    CHECK_FALSE(v.next().has_value());
    v.feed(head + 4, 1);
    try {
        v.next();
        FAIL("accepted version 2");
    } catch (const ProtocolError& e) {
        CHECK(e.failure() == DecodeFailure::UnsupportedVersion);
        CHECK(e.code() == ErrorCode::UnsupportedVersion);
    }
}

TEST_CASE("a header claiming 4 GiB is refused before anything is reserved, echoing the id") {
    Header h;
    h.kind = static_cast<std::uint8_t>(Kind::Reason);
    h.request_id = 42;
    h.payload_len = 0xffffffffu;
    std::vector<std::uint8_t> bytes;
    h.write(bytes);
    FrameDecoder d(1u << 20);
    d.feed(bytes.data(), bytes.size());
    try {
        d.next();
        FAIL("accepted");
    } catch (const ProtocolError& e) {
        CHECK(e.failure() == DecodeFailure::FrameTooLarge);
        CHECK(e.request_id() == 42);
    }
    CHECK(d.buffered() == 24);
}

TEST_CASE("a result claiming 2^32-1 labels is Truncated without allocating for them") {
    std::vector<std::uint8_t> body;
    le::put_u32(body, 0);
    le::put_f32(body, 0.5f);
    le::put_u32(body, 0);
    le::put_u32(body, 0xffffffffu);
    try {
        decode_body(Kind::Result, body.data(), body.size());
        FAIL("accepted");
    } catch (const ProtocolError& e) {
        CHECK(e.failure() == DecodeFailure::Truncated);
    }
}

TEST_CASE("JSON bodies: wrong types and missing fields are Malformed, unknown fields ignored") {
    auto dec = [](Kind k, const std::string& s) {
        return decode_body(k, reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
    };
    auto failure = [&](Kind k, const std::string& s) -> std::string {
        try {
            dec(k, s);
            return "ok";
        } catch (const ProtocolError& e) {
            return failure_name(e.failure());
        }
    };
    CHECK(failure(Kind::Heartbeat, R"({"in_flight":-1,"served":0})") == "Malformed");
    CHECK(failure(Kind::Heartbeat, R"({"in_flight":1.0,"served":0})") == "Malformed");
    CHECK(failure(Kind::Heartbeat, R"({"in_flight":4294967296,"served":0})") == "Malformed");
    CHECK(failure(Kind::Heartbeat, R"({"served":0})") == "Malformed");
    CHECK(failure(Kind::Heartbeat, R"([1,2])") == "Malformed");
    CHECK(failure(Kind::Hello, "{\"protocol\":1,\"role\":\"c\",\"name\":\"\xff\"}") == "Malformed");
    auto hb = std::get<Heartbeat>(dec(Kind::Heartbeat, R"({"in_flight":3,"served":9,"new":[1]})"));
    CHECK(hb.in_flight == 3);
    CHECK(hb.served == 9);
    auto hello = std::get<Hello>(dec(Kind::Hello, R"({"protocol":1,"role":"c","name":"n","token":null})"));
    CHECK_FALSE(hello.token.has_value());
}

TEST_CASE("property: every split of a valid stream gives the same frames (seeded)") {
    std::vector<std::uint8_t> stream;
    std::vector<std::vector<std::uint8_t>> frames;
    for (const auto& name : list(GOLDEN)) {
        HexFile h = read_hex(GOLDEN, name);
        frames.push_back(h.bytes);
        stream.insert(stream.end(), h.bytes.begin(), h.bytes.end());
    }
    auto check = [&](const std::vector<Frame>& got) {
        REQUIRE(got.size() == frames.size());
        for (std::size_t i = 0; i < got.size(); ++i) {
            std::vector<std::uint8_t> again;
            got[i].encode(again);
            CHECK(again == frames[i]);
        }
    };
    // Every single cut point, then byte by byte, then random cuts.
    for (std::size_t cut = 0; cut <= stream.size(); ++cut) check(decode_all(stream, {cut}));
    std::vector<std::size_t> each;
    for (std::size_t i = 1; i < stream.size(); ++i) each.push_back(i);
    check(decode_all(stream, each));
    std::mt19937_64 rng(12);
    for (int round = 0; round < 500; ++round) {
        std::vector<std::size_t> cuts;
        std::size_t n = rng() % 40;
        for (std::size_t i = 0; i < n; ++i) cuts.push_back(rng() % (stream.size() + 1));
        std::sort(cuts.begin(), cuts.end());
        check(decode_all(stream, cuts));
    }
}

TEST_CASE("property: arbitrary bytes never crash the decoder or the body parsers (seeded)") {
    std::mt19937_64 rng(7);
    std::vector<std::vector<std::uint8_t>> seeds;
    for (const auto& name : list(GOLDEN)) seeds.push_back(read_hex(GOLDEN, name).bytes);
    std::size_t frames = 0, errors = 0;
    for (int round = 0; round < 20000; ++round) {
        std::vector<std::uint8_t> bytes;
        if (round % 2 == 0) {
            // A mutated golden frame: flip, insert or drop bytes.
            bytes = seeds[rng() % seeds.size()];
            std::size_t edits = 1 + rng() % 4;
            for (std::size_t e = 0; e < edits && !bytes.empty(); ++e) {
                std::size_t at = rng() % bytes.size();
                switch (rng() % 3) {
                    case 0: bytes[at] = static_cast<std::uint8_t>(rng()); break;
                    case 1: bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(at),
                                         static_cast<std::uint8_t>(rng()));
                        break;
                    default: bytes.erase(bytes.begin() + static_cast<std::ptrdiff_t>(at));
                }
            }
        } else {
            // A valid header of a random kind with random body bytes.
            Header h;
            h.kind = static_cast<std::uint8_t>(rng());
            std::size_t len = rng() % 200;
            h.payload_len = static_cast<std::uint32_t>(len);
            h.write(bytes);
            for (std::size_t i = 0; i < len; ++i) bytes.push_back(static_cast<std::uint8_t>(rng()));
        }
        FrameDecoder d(4096);
        std::size_t at = 0;
        try {
            while (at < bytes.size()) {
                std::size_t n = 1 + rng() % (bytes.size() - at);
                d.feed(bytes.data() + at, n);
                at += n;
                while (auto f = d.next()) {
                    ++frames;
                    try {
                        Message m = f->message();
                        // Whatever decodes re-encodes and decodes to the same kind.
                        auto again = frame_bytes(m, f->header.request_id);
                        FrameDecoder d2(1u << 24);
                        d2.feed(again.data(), again.size());
                        auto f2 = d2.next();
                        REQUIRE(f2.has_value());
                        CHECK(kind_of(f2->message()) == kind_of(m));
                    } catch (const ProtocolError&) {
                        ++errors;
                    }
                }
            }
        } catch (const ProtocolError&) {
            ++errors;
        }
    }
    CHECK(frames > 1000);
    CHECK(errors > 1000);
}
