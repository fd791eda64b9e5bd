// protocol.cpp: encoding and decoding of every message of docs/protocol.md, and the frame decoder.
#include "qnllm/protocol.hpp"

#include <cmath>
#include <type_traits>

namespace qnllm {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

struct KindEntry {
    Kind kind;
    const char* name;
};
constexpr KindEntry KINDS[] = {
    {Kind::Hello, "hello"},
    {Kind::Welcome, "welcome"},
    {Kind::Ping, "ping"},
    {Kind::Pong, "pong"},
    {Kind::Goodbye, "goodbye"},
    {Kind::Error, "error"},
    {Kind::Register, "register"},
    {Kind::Registered, "registered"},
    {Kind::Heartbeat, "heartbeat"},
    {Kind::Drain, "drain"},
    {Kind::Unregister, "unregister"},
    {Kind::Status, "status"},
    {Kind::Reason, "reason"},
    {Kind::Result, "result"},
    {Kind::Batch, "batch"},
    {Kind::BatchResult, "batch_result"},
    {Kind::Cancel, "cancel"},
    {Kind::Coordinate, "coordinate"},
    {Kind::CoordinationResult, "coordination_result"},
    {Kind::Learn, "learn"},
    {Kind::Learned, "learned"},
    {Kind::ModelQuery, "model_query"},
    {Kind::ModelInfo, "model_info"},
    {Kind::CacheQuery, "cache_query"},
    {Kind::CacheStats, "cache_stats"},
    {Kind::CacheClear, "cache_clear"},
    {Kind::MetricsQuery, "metrics_query"},
    {Kind::Metrics, "metrics"},
    {Kind::Subscribe, "subscribe"},
    {Kind::Event, "event"},
    {Kind::Config, "config"},
    {Kind::Shutdown, "shutdown"},
    {Kind::Call, "call"},
    {Kind::Reply, "reply"},
    {Kind::Broadcast, "broadcast"},
};

// The kind of each alternative of Message, in variant order.
constexpr Kind VARIANT_KINDS[] = {
    Kind::Hello,        Kind::Welcome,      Kind::Ping,        Kind::Pong,
    Kind::Goodbye,      Kind::Error,        Kind::Register,    Kind::Registered,
    Kind::Heartbeat,    Kind::Drain,        Kind::Unregister,  Kind::Status,
    Kind::Reason,       Kind::Result,       Kind::Batch,       Kind::BatchResult,
    Kind::Cancel,       Kind::Coordinate,   Kind::CoordinationResult, Kind::Learn,
    Kind::Learned,      Kind::ModelQuery,   Kind::ModelInfo,   Kind::CacheQuery,
    Kind::CacheStats,   Kind::CacheClear,   Kind::MetricsQuery, Kind::Metrics,
    Kind::Subscribe,    Kind::Event,        Kind::Config,      Kind::Shutdown,
    Kind::Call,         Kind::Reply,        Kind::Broadcast,
};
static_assert(sizeof(VARIANT_KINDS) / sizeof(VARIANT_KINDS[0]) == std::variant_size_v<Message>,
              "one kind per Message alternative");

[[noreturn]] void malformed(Kind kind, const std::string& why) {
    throw ProtocolError(DecodeFailure::Malformed,
                        std::string("malformed ") + kind_name(kind) + " body: " + why);
}

/// A cursor over a body that turns short reads into Truncated.
class Reader {
public:
    Reader(Kind kind, const std::uint8_t* p, std::size_t len) : kind_(kind), p_(p), len_(len) {}
    const std::uint8_t* take(std::size_t n) {
        if (n > len_ - at_) {
            throw ProtocolError(DecodeFailure::Truncated,
                                std::string("truncated ") + kind_name(kind_) + " body: needed " +
                                    std::to_string(at_ + n) + " bytes, got " +
                                    std::to_string(len_));
        }
        const std::uint8_t* r = p_ + at_;
        at_ += n;
        return r;
    }
    std::uint8_t u8() { return *take(1); }
    std::uint16_t u16() { return le::u16(take(2)); }
    std::uint32_t u32() { return le::u32(take(4)); }
    std::uint64_t u64() { return le::u64(take(8)); }
    float f32() { return le::f32(take(4)); }
    Digest digest() {
        Digest d;
        std::memcpy(d.data(), take(32), 32);
        return d;
    }
    std::string text(std::size_t n) {
        const std::uint8_t* b = take(n);
        std::string s(reinterpret_cast<const char*>(b), n);
        if (!valid_utf8(s)) malformed(kind_, "text is not valid UTF-8");
        return s;
    }
    std::size_t left() const { return len_ - at_; }
    const std::uint8_t* rest_ptr() const { return p_ + at_; }
    std::vector<std::uint8_t> rest() {
        std::vector<std::uint8_t> v(p_ + at_, p_ + len_);
        at_ = len_;
        return v;
    }
    void finish() const {
        if (at_ != len_) {
            malformed(kind_, std::to_string(len_ - at_) + " trailing bytes after the body");
        }
    }
    static bool valid_utf8(const std::string& s) {
        const auto* b = reinterpret_cast<const unsigned char*>(s.data());
        std::size_t i = 0, n = s.size();
        while (i < n) {
            unsigned c = b[i];
            std::size_t len;
            std::uint32_t cp;
            if (c < 0x80) {
                ++i;
                continue;
            } else if ((c & 0xe0) == 0xc0) {
                len = 2;
                cp = c & 0x1f;
            } else if ((c & 0xf0) == 0xe0) {
                len = 3;
                cp = c & 0x0f;
            } else if ((c & 0xf8) == 0xf0) {
                len = 4;
                cp = c & 0x07;
            } else {
                return false;
            }
            if (n - i < len) return false;
            for (std::size_t k = 1; k < len; ++k) {
                if ((b[i + k] & 0xc0) != 0x80) return false;
                cp = (cp << 6) | (b[i + k] & 0x3f);
            }
            if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
                cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
                return false;
            }
            i += len;
        }
        return true;
    }

private:
    Kind kind_;
    const std::uint8_t* p_;
    std::size_t len_;
    std::size_t at_ = 0;
};

void put_floats(std::vector<std::uint8_t>& out, const float* v, std::size_t n) {
    std::size_t at = out.size();
    out.resize(at + n * 4);
    for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t bits;
        std::memcpy(&bits, v + i, 4);
        out[at + 4 * i] = static_cast<std::uint8_t>(bits);
        out[at + 4 * i + 1] = static_cast<std::uint8_t>(bits >> 8);
        out[at + 4 * i + 2] = static_cast<std::uint8_t>(bits >> 16);
        out[at + 4 * i + 3] = static_cast<std::uint8_t>(bits >> 24);
    }
}

std::vector<float> read_floats(Kind kind, const std::uint8_t* p, std::size_t len) {
    if (len % 4 != 0) {
        malformed(kind, "encoding of " + std::to_string(len) +
                            " bytes is not a whole number of f32 values");
    }
    std::vector<float> v(len / 4);
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = le::f32(p + 4 * i);
    return v;
}

void put_short_text(std::vector<std::uint8_t>& out, const std::string& s) {
    std::size_t len = s.size() < 65535 ? s.size() : 65535;
    // Cut at a UTF-8 character boundary.
    while (len > 0 && len < s.size() && (static_cast<unsigned char>(s[len]) & 0xc0) == 0x80) --len;
    le::put_u16(out, static_cast<std::uint16_t>(len));
    out.insert(out.end(), s.begin(), s.begin() + static_cast<std::ptrdiff_t>(len));
}

void write_result(const ResultBody& r, std::vector<std::uint8_t>& out) {
    std::size_t n = r.scores.size() > r.label_spikes.size() ? r.scores.size() : r.label_spikes.size();
    le::put_u32(out, r.label);
    le::put_f32(out, r.confidence);
    le::put_u32(out, r.total_spikes);
    le::put_u32(out, static_cast<std::uint32_t>(n));
    for (std::size_t i = 0; i < n; ++i) le::put_i32(out, i < r.scores.size() ? r.scores[i] : 0);
    for (std::size_t i = 0; i < n; ++i)
        le::put_u32(out, i < r.label_spikes.size() ? r.label_spikes[i] : 0);
    le::put_u64(out, r.model_version);
    out.insert(out.end(), r.model_digest.begin(), r.model_digest.end());
    out.insert(out.end(), r.result_digest.begin(), r.result_digest.end());
    le::put_u64(out, r.compute_ns);
    put_short_text(out, r.engine);
}

ResultBody read_result(Reader& r) {
    ResultBody b;
    b.label = r.u32();
    b.confidence = r.f32();
    b.total_spikes = r.u32();
    std::uint32_t n = r.u32();
    // Both lists are checked against the bytes left before anything is allocated for them.
    const std::uint64_t need = static_cast<std::uint64_t>(n) * 8;
    if (need > r.left()) r.take(static_cast<std::size_t>(need));
    const std::uint8_t* s = r.take(static_cast<std::size_t>(n) * 4);
    const std::uint8_t* l = r.take(static_cast<std::size_t>(n) * 4);
    b.scores.resize(n);
    b.label_spikes.resize(n);
    for (std::uint32_t i = 0; i < n; ++i) {
        b.scores[i] = static_cast<std::int32_t>(le::u32(s + 4 * i));
        b.label_spikes[i] = le::u32(l + 4 * i);
    }
    b.model_version = r.u64();
    b.model_digest = r.digest();
    b.result_digest = r.digest();
    b.compute_ns = r.u64();
    std::uint16_t elen = r.u16();
    b.engine = r.text(elen);
    return b;
}

// ---- JSON ----

std::string dump(const ojson& j) {
    return j.dump(-1, ' ', false, nlohmann::detail::error_handler_t::replace);
}
void put_json(std::vector<std::uint8_t>& out, const ojson& j) {
    std::string s = dump(j);
    out.insert(out.end(), s.begin(), s.end());
}
// One field of a JSON body: its key and its value.
using Field = std::pair<const char*, ojson>;
// A JSON body's object: its fields in the order given, which is the order on the wire.
ojson object_of(std::initializer_list<Field> fields) {
    ojson j = ojson::object();
    for (const auto& f : fields) j[f.first] = f.second;
    return j;
}

json parse_json(Kind kind, const std::uint8_t* p, std::size_t len) {
    json j = json::parse(p, p + len, nullptr, false);
    if (j.is_discarded()) malformed(kind, "not valid JSON");
    return j;
}
const json& object(Kind kind, const json& j) {
    if (!j.is_object()) malformed(kind, "not a JSON object");
    return j;
}
const json& field(Kind kind, const json& j, const char* name) {
    auto it = j.find(name);
    if (it == j.end()) malformed(kind, std::string("missing field `") + name + "`");
    return *it;
}
template <class T>
T uint_field(Kind kind, const json& j, const char* name) {
    const json& v = field(kind, j, name);
    // Integers only (no 1.0, no negatives), within the field's width.
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0)) {
        malformed(kind, std::string("field `") + name + "` is not an unsigned integer");
    }
    std::uint64_t x = v.get<std::uint64_t>();
    if (x > static_cast<std::uint64_t>(std::numeric_limits<T>::max())) {
        malformed(kind, std::string("field `") + name + "` is out of range");
    }
    return static_cast<T>(x);
}
std::string str_field(Kind kind, const json& j, const char* name) {
    const json& v = field(kind, j, name);
    if (!v.is_string()) malformed(kind, std::string("field `") + name + "` is not a string");
    return v.get<std::string>();
}
double num_field(Kind kind, const json& j, const char* name) {
    const json& v = field(kind, j, name);
    if (!v.is_number()) malformed(kind, std::string("field `") + name + "` is not a number");
    return v.get<double>();
}
bool bool_field(Kind kind, const json& j, const char* name) {
    const json& v = field(kind, j, name);
    if (!v.is_boolean()) malformed(kind, std::string("field `") + name + "` is not a boolean");
    return v.get<bool>();
}

void empty(Kind kind, std::size_t len) {
    if (len != 0) malformed(kind, "the body must be empty, got " + std::to_string(len) + " bytes");
}

template <class... F>
struct overload : F... {
    using F::operator()...;
};
template <class... F>
overload(F...) -> overload<F...>;

}  // namespace

bool kind_known(std::uint8_t id) {
    for (const auto& k : KINDS)
        if (static_cast<std::uint8_t>(k.kind) == id) return true;
    return false;
}

const char* kind_name(Kind kind) {
    for (const auto& k : KINDS)
        if (k.kind == kind) return k.name;
    return "unknown";
}

std::string error_code_name(std::uint16_t code) {
    switch (code) {
        case 1: return "BadMagic";
        case 2: return "UnsupportedVersion";
        case 3: return "UnknownKind";
        case 4: return "FrameTooLarge";
        case 5: return "TruncatedBody";
        case 6: return "MalformedBody";
        case 7: return "UnexpectedMessage";
        case 16: return "Unauthorized";
        case 17: return "HelloTimeout";
        case 18: return "TooManyConnections";
        case 19: return "IdleTimeout";
        case 32: return "InvalidInput";
        case 33: return "DeadlineExceeded";
        case 34: return "NoEngineAvailable";
        case 35: return "EngineFailed";
        case 36: return "Cancelled";
        case 37: return "Overloaded";
        case 38: return "UnknownHandler";
        case 39: return "ShuttingDown";
        case 40: return "VersionConflict";
        case 41: return "Disagreement";
        case 255: return "Internal";
        default: return "Unknown(" + std::to_string(code) + ")";
    }
}

const char* failure_name(DecodeFailure f) {
    switch (f) {
        case DecodeFailure::BadMagic: return "BadMagic";
        case DecodeFailure::UnsupportedVersion: return "UnsupportedVersion";
        case DecodeFailure::UnknownKind: return "UnknownKind";
        case DecodeFailure::FrameTooLarge: return "FrameTooLarge";
        case DecodeFailure::Truncated: return "Truncated";
        case DecodeFailure::Malformed: return "Malformed";
    }
    return "Malformed";
}

ErrorCode ProtocolError::code() const noexcept {
    switch (failure_) {
        case DecodeFailure::BadMagic: return ErrorCode::BadMagic;
        case DecodeFailure::UnsupportedVersion: return ErrorCode::UnsupportedVersion;
        case DecodeFailure::UnknownKind: return ErrorCode::UnknownKind;
        case DecodeFailure::FrameTooLarge: return ErrorCode::FrameTooLarge;
        case DecodeFailure::Truncated: return ErrorCode::TruncatedBody;
        case DecodeFailure::Malformed: return ErrorCode::MalformedBody;
    }
    return ErrorCode::MalformedBody;
}

void Header::write(std::vector<std::uint8_t>& out) const {
    out.insert(out.end(), {'Q', 'N', 'L', 'M', PROTOCOL_VERSION, kind});
    le::put_u16(out, flags);
    le::put_u64(out, request_id);
    le::put_u32(out, deadline_us);
    le::put_u32(out, payload_len);
}

Header Header::read(const std::uint8_t* p) {
    Header h;
    h.kind = p[5];
    h.flags = le::u16(p + 6);
    h.request_id = le::u64(p + 8);
    h.deadline_us = le::u32(p + 16);
    h.payload_len = le::u32(p + 20);
    return h;
}

Kind kind_of(const Message& m) { return VARIANT_KINDS[m.index()]; }

void encode_body(const Message& m, std::vector<std::uint8_t>& out) {
    std::visit(
        overload{
            [&](const Hello& b) {
                ojson j = object_of({{"protocol", b.protocol}, {"role", b.role}, {"name", b.name}});
                if (b.token) j["token"] = *b.token;
                put_json(out, j);
            },
            [&](const Welcome& b) {
                put_json(out, object_of({{"session", b.session},
                                         {"server", b.server},
                                         {"max_frame_bytes", b.max_frame_bytes},
                                         {"heartbeat_interval_ms", b.heartbeat_interval_ms}}));
            },
            [&](const Ping&) {}, [&](const Pong&) {}, [&](const Cancel&) {},
            [&](const ModelQuery&) {}, [&](const CacheQuery&) {}, [&](const CacheClear&) {},
            [&](const MetricsQuery&) {},
            [&](const Goodbye& b) { put_json(out, object_of({{"reason", b.reason}})); },
            [&](const Unregister& b) { put_json(out, object_of({{"reason", b.reason}})); },
            [&](const WireError& b) {
                le::put_u16(out, b.code);
                out.insert(out.end(), b.message.begin(), b.message.end());
            },
            [&](const Register& b) {
                ojson j = object_of({{"name", b.name},
                                     {"model_digest", b.model_digest},
                                     {"model_version", b.model_version},
                                     {"input_size", b.input_size},
                                     {"labels", b.labels},
                                     {"max_in_flight", b.max_in_flight}});
                if (b.teacher) j["role"] = "teacher";
                put_json(out, j);
            },
            [&](const Registered& b) {
                put_json(out, object_of({{"engine_id", b.engine_id},
                                         {"heartbeat_interval_ms", b.heartbeat_interval_ms}}));
            },
            [&](const Heartbeat& b) {
                put_json(out, object_of({{"in_flight", b.in_flight}, {"served", b.served}}));
            },
            [&](const Drain& b) { put_json(out, object_of({{"grace_ms", b.grace_ms}})); },
            [&](const Shutdown& b) { put_json(out, object_of({{"grace_ms", b.grace_ms}})); },
            [&](const Status& b) {
                put_json(out, object_of({{"state", b.state},
                                         {"in_flight", b.in_flight},
                                         {"served", b.served},
                                         {"model_version", b.model_version}}));
            },
            [&](const Reason& b) { put_floats(out, b.values.data(), b.values.size()); },
            [&](const ResultBody& b) { write_result(b, out); },
            [&](const Batch& b) {
                le::put_u32(out, b.count);
                le::put_u32(out, b.dim);
                put_floats(out, b.values.data(), b.values.size());
            },
            [&](const BatchResult& b) {
                le::put_u32(out, static_cast<std::uint32_t>(b.results.size()));
                for (const auto& r : b.results) {
                    std::size_t at = out.size();
                    le::put_u32(out, 0);
                    write_result(r, out);
                    auto len = static_cast<std::uint32_t>(out.size() - at - 4);
                    for (int i = 0; i < 4; ++i)
                        out[at + static_cast<std::size_t>(i)] =
                            static_cast<std::uint8_t>(len >> (8 * i));
                }
            },
            [&](const Coordinate& b) {
                le::put_u8(out, b.teachers);
                le::put_u8(out, b.learn ? 1 : 0);
                le::put_u16(out, 0);
                put_floats(out, b.values.data(), b.values.size());
            },
            [&](const CoordinationResult& b) {
                ojson teachers = ojson::array();
                for (const auto& t : b.teachers) {
                    teachers.push_back(object_of({{"engine", t.engine},
                                                  {"label", t.label},
                                                  {"confidence", t.confidence},
                                                  {"reliability", t.reliability}}));
                }
                put_json(out, object_of({{"consensus", b.consensus},
                                         {"agreement", b.agreement},
                                         {"learned", b.learned},
                                         {"teachers", std::move(teachers)}}));
            },
            [&](const Learn& b) {
                le::put_u32(out, b.label);
                le::put_u64(out, b.base_version);
                put_floats(out, b.values.data(), b.values.size());
            },
            [&](const Learned& b) {
                le::put_u64(out, b.model_version);
                out.insert(out.end(), b.model_digest.begin(), b.model_digest.end());
            },
            [&](const ModelInfo& b) {
                put_json(out, object_of({{"name", b.name},
                                         {"input_size", b.input_size},
                                         {"hidden", b.hidden},
                                         {"steps", b.steps},
                                         {"labels", b.labels},
                                         {"model_version", b.model_version},
                                         {"model_digest", b.model_digest}}));
            },
            [&](const CacheStats& b) {
                put_json(out, object_of({{"entries", b.entries},
                                         {"capacity", b.capacity},
                                         {"hits", b.hits},
                                         {"misses", b.misses},
                                         {"evictions", b.evictions}}));
            },
            [&](const Metrics& b) { put_json(out, ojson::parse(b.value.dump())); },
            [&](const Config& b) { put_json(out, ojson::parse(b.value.dump())); },
            [&](const Subscribe& b) { put_json(out, object_of({{"topics", b.topics}})); },
            [&](const Event& b) {
                put_json(out, object_of({{"topic", b.topic}, {"data", ojson::parse(b.data.dump())}}));
            },
            [&](const Call& b) {
                put_short_text(out, b.handler);
                out.insert(out.end(), b.payload.begin(), b.payload.end());
            },
            [&](const Reply& b) { out.insert(out.end(), b.payload.begin(), b.payload.end()); },
            [&](const Broadcast& b) {
                put_short_text(out, b.topic);
                out.insert(out.end(), b.payload.begin(), b.payload.end());
            },
        },
        m);
}

Message decode_body(Kind kind, const std::uint8_t* p, std::size_t len) {
    auto obj = [&]() { return object(kind, parse_json(kind, p, len)); };
    switch (kind) {
        case Kind::Ping: empty(kind, len); return Ping{};
        case Kind::Pong: empty(kind, len); return Pong{};
        case Kind::Cancel: empty(kind, len); return Cancel{};
        case Kind::ModelQuery: empty(kind, len); return ModelQuery{};
        case Kind::CacheQuery: empty(kind, len); return CacheQuery{};
        case Kind::CacheClear: empty(kind, len); return CacheClear{};
        case Kind::MetricsQuery: empty(kind, len); return MetricsQuery{};
        case Kind::Hello: {
            json j = obj();
            Hello h;
            h.protocol = uint_field<std::uint8_t>(kind, j, "protocol");
            h.role = str_field(kind, j, "role");
            h.name = str_field(kind, j, "name");
            auto t = j.find("token");
            if (t != j.end() && !t->is_null()) {
                if (!t->is_string()) malformed(kind, "field `token` is not a string");
                h.token = t->get<std::string>();
            }
            return h;
        }
        case Kind::Welcome: {
            json j = obj();
            Welcome w;
            w.session = uint_field<std::uint64_t>(kind, j, "session");
            w.server = str_field(kind, j, "server");
            w.max_frame_bytes = uint_field<std::uint32_t>(kind, j, "max_frame_bytes");
            w.heartbeat_interval_ms = uint_field<std::uint64_t>(kind, j, "heartbeat_interval_ms");
            return w;
        }
        case Kind::Goodbye: return Goodbye{str_field(kind, obj(), "reason")};
        case Kind::Unregister: return Unregister{str_field(kind, obj(), "reason")};
        case Kind::Error: {
            Reader r(kind, p, len);
            WireError e;
            e.code = r.u16();
            e.message = r.text(r.left());
            return e;
        }
        case Kind::Register: {
            json j = obj();
            Register b;
            b.name = str_field(kind, j, "name");
            b.model_digest = str_field(kind, j, "model_digest");
            b.model_version = uint_field<std::uint64_t>(kind, j, "model_version");
            b.input_size = uint_field<std::uint32_t>(kind, j, "input_size");
            b.labels = uint_field<std::uint32_t>(kind, j, "labels");
            b.max_in_flight = uint_field<std::uint32_t>(kind, j, "max_in_flight");
            if (j.find("role") != j.end()) {
                const std::string role = str_field(kind, j, "role");
                if (role != "engine" && role != "teacher")
                    malformed(kind, "field `role` is neither `engine` nor `teacher`");
                b.teacher = role == "teacher";
            }
            return b;
        }
        case Kind::Registered: {
            json j = obj();
            return Registered{uint_field<std::uint64_t>(kind, j, "engine_id"),
                              uint_field<std::uint64_t>(kind, j, "heartbeat_interval_ms")};
        }
        case Kind::Heartbeat: {
            json j = obj();
            return Heartbeat{uint_field<std::uint32_t>(kind, j, "in_flight"),
                             uint_field<std::uint64_t>(kind, j, "served")};
        }
        case Kind::Drain: return Drain{uint_field<std::uint64_t>(kind, obj(), "grace_ms")};
        case Kind::Shutdown: return Shutdown{uint_field<std::uint64_t>(kind, obj(), "grace_ms")};
        case Kind::Status: {
            json j = obj();
            Status s;
            s.state = str_field(kind, j, "state");
            s.in_flight = uint_field<std::uint32_t>(kind, j, "in_flight");
            s.served = uint_field<std::uint64_t>(kind, j, "served");
            s.model_version = uint_field<std::uint64_t>(kind, j, "model_version");
            return s;
        }
        case Kind::Reason: return Reason{read_floats(kind, p, len)};
        case Kind::Result: {
            Reader r(kind, p, len);
            ResultBody b = read_result(r);
            r.finish();
            return b;
        }
        case Kind::Batch: {
            Reader r(kind, p, len);
            Batch b;
            b.count = r.u32();
            b.dim = r.u32();
            if (b.dim == 0) malformed(kind, "batch dimension is 0");
            std::uint64_t total = static_cast<std::uint64_t>(b.count) * b.dim;
            if (total > 0xffffffffu) {
                malformed(kind, std::to_string(b.count) + " x " + std::to_string(b.dim) +
                                    " values overflow");
            }
            const std::uint8_t* v = r.take(static_cast<std::size_t>(total) * 4);
            r.finish();
            b.values = read_floats(kind, v, static_cast<std::size_t>(total) * 4);
            return b;
        }
        case Kind::BatchResult: {
            Reader r(kind, p, len);
            std::uint32_t count = r.u32();
            BatchResult b;
            // Each entry needs at least its 4-byte length: that bounds the reservation.
            b.results.reserve(count < len / 4 ? count : len / 4);
            for (std::uint32_t i = 0; i < count; ++i) {
                std::uint32_t n = r.u32();
                const std::uint8_t* q = r.take(n);
                Reader inner(kind, q, n);
                b.results.push_back(read_result(inner));
                inner.finish();
            }
            r.finish();
            return b;
        }
        case Kind::Coordinate: {
            Reader r(kind, p, len);
            Coordinate c;
            c.teachers = r.u8();
            std::uint8_t options = r.u8();
            std::uint16_t reserved = r.u16();
            if ((options & ~1u) != 0 || reserved != 0)
                malformed(kind, "undefined option or reserved bits are set");
            c.learn = (options & 1) != 0;
            c.values = read_floats(kind, r.rest_ptr(), r.left());
            return c;
        }
        case Kind::CoordinationResult: {
            json j = obj();
            CoordinationResult c;
            c.consensus = uint_field<std::uint32_t>(kind, j, "consensus");
            c.agreement = num_field(kind, j, "agreement");
            c.learned = bool_field(kind, j, "learned");
            const json& t = field(kind, j, "teachers");
            if (!t.is_array()) malformed(kind, "field `teachers` is not a list");
            for (const auto& v : t) {
                object(kind, v);
                c.teachers.push_back(TeacherVote{str_field(kind, v, "engine"),
                                                 uint_field<std::uint32_t>(kind, v, "label"),
                                                 num_field(kind, v, "confidence"),
                                                 num_field(kind, v, "reliability")});
            }
            return c;
        }
        case Kind::Learn: {
            Reader r(kind, p, len);
            Learn l;
            l.label = r.u32();
            l.base_version = r.u64();
            l.values = read_floats(kind, r.rest_ptr(), r.left());
            return l;
        }
        case Kind::Learned: {
            Reader r(kind, p, len);
            Learned l;
            l.model_version = r.u64();
            l.model_digest = r.digest();
            r.finish();
            return l;
        }
        case Kind::ModelInfo: {
            json j = obj();
            ModelInfo m;
            m.name = str_field(kind, j, "name");
            m.input_size = uint_field<std::uint32_t>(kind, j, "input_size");
            m.hidden = uint_field<std::uint32_t>(kind, j, "hidden");
            m.steps = uint_field<std::uint32_t>(kind, j, "steps");
            m.labels = uint_field<std::uint32_t>(kind, j, "labels");
            m.model_version = uint_field<std::uint64_t>(kind, j, "model_version");
            m.model_digest = str_field(kind, j, "model_digest");
            return m;
        }
        case Kind::CacheStats: {
            json j = obj();
            CacheStats c;
            c.entries = uint_field<std::uint64_t>(kind, j, "entries");
            c.capacity = uint_field<std::uint64_t>(kind, j, "capacity");
            c.hits = uint_field<std::uint64_t>(kind, j, "hits");
            c.misses = uint_field<std::uint64_t>(kind, j, "misses");
            c.evictions = uint_field<std::uint64_t>(kind, j, "evictions");
            return c;
        }
        case Kind::Metrics: return Metrics{parse_json(kind, p, len)};
        case Kind::Config: return Config{parse_json(kind, p, len)};
        case Kind::Subscribe: {
            json j = obj();
            const json& t = field(kind, j, "topics");
            if (!t.is_array()) malformed(kind, "field `topics` is not a list");
            Subscribe s;
            for (const auto& v : t) {
                if (!v.is_string()) malformed(kind, "a topic is not a string");
                s.topics.push_back(v.get<std::string>());
            }
            return s;
        }
        case Kind::Event: {
            json j = obj();
            return Event{str_field(kind, j, "topic"), field(kind, j, "data")};
        }
        case Kind::Call:
        case Kind::Broadcast: {
            Reader r(kind, p, len);
            std::uint16_t n = r.u16();
            std::string name = r.text(n);
            std::vector<std::uint8_t> rest = r.rest();
            if (kind == Kind::Call) return Call{std::move(name), std::move(rest)};
            return Broadcast{std::move(name), std::move(rest)};
        }
        case Kind::Reply: return Reply{std::vector<std::uint8_t>(p, p + len)};
    }
    throw ProtocolError(DecodeFailure::UnknownKind,
                        "kind " + std::to_string(static_cast<int>(kind)) + " is not in the catalog");
}

void encode_frame(const Message& m, std::uint64_t request_id, std::uint32_t deadline_us,
                  std::vector<std::uint8_t>& out, std::uint16_t flags) {
    std::size_t start = out.size();
    Header h;
    h.kind = static_cast<std::uint8_t>(kind_of(m));
    h.flags = flags;
    h.request_id = request_id;
    h.deadline_us = deadline_us;
    h.write(out);
    encode_body(m, out);
    auto len = static_cast<std::uint32_t>(out.size() - start - HEADER_BYTES);
    for (int i = 0; i < 4; ++i)
        out[start + 20 + static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(len >> (8 * i));
}

std::vector<std::uint8_t> frame_bytes(const Message& m, std::uint64_t request_id,
                                      std::uint32_t deadline_us, std::uint16_t flags) {
    std::vector<std::uint8_t> out;
    encode_frame(m, request_id, deadline_us, out, flags);
    return out;
}

void encode_reason_frame(span<const float> values, std::uint64_t request_id,
                         std::uint32_t deadline_us, std::vector<std::uint8_t>& out,
                         std::uint16_t flags) {
    Header h;
    h.kind = static_cast<std::uint8_t>(Kind::Reason);
    h.flags = flags;
    h.request_id = request_id;
    h.deadline_us = deadline_us;
    h.payload_len = static_cast<std::uint32_t>(values.size() * 4);
    out.reserve(out.size() + HEADER_BYTES + values.size() * 4);
    h.write(out);
    put_floats(out, values.data(), values.size());
}

void Frame::encode(std::vector<std::uint8_t>& out) const {
    Header h = header;
    h.payload_len = static_cast<std::uint32_t>(payload.size());
    h.write(out);
    out.insert(out.end(), payload.begin(), payload.end());
}

void FrameDecoder::feed(const std::uint8_t* data, std::size_t len) {
    if (at_ > 0 && at_ == buf_.size()) {
        buf_.clear();
        at_ = 0;
    } else if (at_ > 65536 && at_ * 2 > buf_.size()) {
        buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(at_));
        at_ = 0;
    }
    buf_.insert(buf_.end(), data, data + len);
}

std::optional<Frame> FrameDecoder::next() {
    const std::uint8_t* p = buf_.data() + at_;
    std::size_t have = buf_.size() - at_;
    static const std::uint8_t MAGIC[4] = {'Q', 'N', 'L', 'M'};
    std::size_t prefix = have < 4 ? have : 4;
    // A stranger is refused on its first byte, a wrong version on the fifth.
    if (prefix > 0 && std::memcmp(p, MAGIC, prefix) != 0) {
        throw ProtocolError(DecodeFailure::BadMagic, "the frame does not start with QNLM");
    }
    if (have > 4 && p[4] != PROTOCOL_VERSION) {
        throw ProtocolError(DecodeFailure::UnsupportedVersion,
                            "protocol version " + std::to_string(p[4]) + " is not supported (1)");
    }
    if (have < HEADER_BYTES) return std::nullopt;
    Header h = Header::read(p);
    if (!kind_known(h.kind)) {
        throw ProtocolError(DecodeFailure::UnknownKind,
                            "kind " + std::to_string(h.kind) + " is not in the catalog",
                            h.request_id);
    }
    if (h.payload_len > max_) {
        throw ProtocolError(DecodeFailure::FrameTooLarge,
                            "payload of " + std::to_string(h.payload_len) +
                                " bytes exceeds the maximum of " + std::to_string(max_),
                            h.request_id);
    }
    std::size_t need = HEADER_BYTES + h.payload_len;
    if (have < need) {
        buf_.reserve(buf_.size() + (need - have));
        return std::nullopt;
    }
    Frame f;
    f.header = h;
    f.payload.assign(p + HEADER_BYTES, p + need);
    at_ += need;
    return f;
}

}  // namespace qnllm
