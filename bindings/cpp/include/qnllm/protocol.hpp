// qnllm/protocol.hpp: the qnllm wire protocol v1 (docs/protocol.md): header, every message
// kind, the incremental frame decoder and the error codes. Sans-IO: no sockets, no clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "qnllm/common.hpp"

namespace qnllm {

constexpr std::uint8_t PROTOCOL_VERSION = 1;
constexpr std::size_t HEADER_BYTES = 24;
constexpr std::uint32_t DEFAULT_MAX_FRAME_BYTES = 16u * 1024u * 1024u;
constexpr std::uint16_t FLAG_NO_CACHE = 1;

/// Message kind ids, from the catalog.
enum class Kind : std::uint8_t {
    Hello = 0x01,
    Welcome = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    Goodbye = 0x05,
    Error = 0x06,
    Register = 0x10,
    Registered = 0x11,
    Heartbeat = 0x12,
    Drain = 0x13,
    Unregister = 0x14,
    Status = 0x15,
    Reason = 0x20,
    Result = 0x21,
    Batch = 0x22,
    BatchResult = 0x23,
    Cancel = 0x24,
    Coordinate = 0x30,
    CoordinationResult = 0x31,
    Learn = 0x32,
    Learned = 0x33,
    ModelQuery = 0x34,
    ModelInfo = 0x35,
    CacheQuery = 0x40,
    CacheStats = 0x41,
    CacheClear = 0x42,
    MetricsQuery = 0x50,
    Metrics = 0x51,
    Subscribe = 0x52,
    Event = 0x53,
    Config = 0x60,
    Shutdown = 0x61,
    Call = 0x70,
    Reply = 0x71,
    Broadcast = 0x80,
};

/// True if `id` is a kind of the catalog.
bool kind_known(std::uint8_t id);
/// The catalog name (`hello`, `batch_result`, ...), or "unknown".
const char* kind_name(Kind kind);

/// Error codes of `error` frames.
enum class ErrorCode : std::uint16_t {
    BadMagic = 1,
    UnsupportedVersion = 2,
    UnknownKind = 3,
    FrameTooLarge = 4,
    TruncatedBody = 5,
    MalformedBody = 6,
    UnexpectedMessage = 7,
    Unauthorized = 16,
    HelloTimeout = 17,
    TooManyConnections = 18,
    IdleTimeout = 19,
    InvalidInput = 32,
    DeadlineExceeded = 33,
    NoEngineAvailable = 34,
    EngineFailed = 35,
    Cancelled = 36,
    Overloaded = 37,
    UnknownHandler = 38,
    ShuttingDown = 39,
    VersionConflict = 40,
    Disagreement = 41,
    Internal = 255,
};
/// The table name of a code (`InvalidInput`), or "Unknown(N)" for codes this SDK does not know.
std::string error_code_name(std::uint16_t code);

/// The fixed 24-byte header.
struct Header {
    std::uint8_t kind = 0;
    std::uint16_t flags = 0;
    std::uint64_t request_id = 0;
    std::uint32_t deadline_us = 0;
    std::uint32_t payload_len = 0;

    void write(std::vector<std::uint8_t>& out) const;
    static Header read(const std::uint8_t* p);
};

/// Why bytes could not become a frame or a message.
enum class DecodeFailure { BadMagic, UnsupportedVersion, UnknownKind, FrameTooLarge, Truncated, Malformed };
/// `BadMagic`, ..., `Truncated`, `Malformed` (the names the invalid golden vectors use).
const char* failure_name(DecodeFailure f);

/// A decode failure; `code()` is the error code to send before closing.
class ProtocolError : public std::runtime_error {
public:
    ProtocolError(DecodeFailure failure, std::string message, std::uint64_t request_id = 0)
        : std::runtime_error(std::move(message)), failure_(failure), request_id_(request_id) {}
    DecodeFailure failure() const noexcept { return failure_; }
    ErrorCode code() const noexcept;
    /// The request id the error frame should carry (0 = the connection).
    std::uint64_t request_id() const noexcept { return request_id_; }

private:
    DecodeFailure failure_;
    std::uint64_t request_id_;
};

// ---- bodies ------------------------------------------------------------------------------

struct Hello {
    std::uint8_t protocol = PROTOCOL_VERSION;
    std::string role;
    std::string name;
    std::optional<std::string> token;
};
struct Welcome {
    std::uint64_t session = 0;
    std::string server;
    std::uint32_t max_frame_bytes = DEFAULT_MAX_FRAME_BYTES;
    std::uint64_t heartbeat_interval_ms = 0;
};
struct Ping {};
struct Pong {};
struct Goodbye {
    std::string reason;
};
struct WireError {
    std::uint16_t code = 0;
    std::string message;
};
struct Register {
    std::string name;
    std::string model_digest;  // 64 lowercase hex digits
    std::uint64_t model_version = 0;
    std::uint32_t input_size = 0;
    std::uint32_t labels = 0;
    std::uint32_t max_in_flight = 0;
    /// `role` on the wire: "teacher" when set, absent (an engine) otherwise.
    bool teacher = false;
};
struct Registered {
    std::uint64_t engine_id = 0;
    std::uint64_t heartbeat_interval_ms = 0;
};
struct Heartbeat {
    std::uint32_t in_flight = 0;
    std::uint64_t served = 0;
};
struct Drain {
    std::uint64_t grace_ms = 0;
};
struct Unregister {
    std::string reason;
};
struct Status {
    std::string state;  // serving, draining, stopped
    std::uint32_t in_flight = 0;
    std::uint64_t served = 0;
    std::uint64_t model_version = 0;
};
struct Reason {
    std::vector<float> values;
};
/// The `result` body: the reasoning for one encoding.
struct ResultBody {
    std::uint32_t label = 0;
    float confidence = 0;
    std::uint32_t total_spikes = 0;
    std::vector<std::int32_t> scores;
    std::vector<std::uint32_t> label_spikes;
    std::uint64_t model_version = 0;
    Digest model_digest{};
    Digest result_digest{};
    std::uint64_t compute_ns = 0;
    std::string engine;
};
/// What an engine answers for one encoding (the `result` body).
using Reasoning = ResultBody;
struct Batch {
    std::uint32_t count = 0;
    std::uint32_t dim = 0;
    std::vector<float> values;  // count * dim, encoding after encoding
};
struct BatchResult {
    std::vector<ResultBody> results;
};
struct Cancel {};
struct Coordinate {
    std::uint8_t teachers = 0;
    bool learn = false;
    std::vector<float> values;
};
struct TeacherVote {
    std::string engine;
    std::uint32_t label = 0;
    double confidence = 0;
    double reliability = 0;
};
struct CoordinationResult {
    std::uint32_t consensus = 0;
    double agreement = 0;
    bool learned = false;
    std::vector<TeacherVote> teachers;
};
struct Learn {
    std::uint32_t label = 0;
    std::uint64_t base_version = 0;
    std::vector<float> values;
};
struct Learned {
    std::uint64_t model_version = 0;
    Digest model_digest{};
};
struct ModelQuery {};
struct ModelInfo {
    std::string name;
    std::uint32_t input_size = 0;
    std::uint32_t hidden = 0;
    std::uint32_t steps = 0;
    std::uint32_t labels = 0;
    std::uint64_t model_version = 0;
    std::string model_digest;
};
struct CacheQuery {};
struct CacheStats {
    std::uint64_t entries = 0, capacity = 0, hits = 0, misses = 0, evictions = 0;
};
struct CacheClear {};
struct MetricsQuery {};
struct Metrics {
    nlohmann::json value;
};
struct Subscribe {
    std::vector<std::string> topics;
};
struct Event {
    std::string topic;
    nlohmann::json data;
};
struct Config {
    nlohmann::json value;
};
struct Shutdown {
    std::uint64_t grace_ms = 0;
};
struct Call {
    std::string handler;
    std::vector<std::uint8_t> payload;
};
struct Reply {
    std::vector<std::uint8_t> payload;
};
struct Broadcast {
    std::string topic;
    std::vector<std::uint8_t> payload;
};

/// One decoded message of any kind.
using Message =
    std::variant<Hello, Welcome, Ping, Pong, Goodbye, WireError, Register, Registered, Heartbeat,
                 Drain, Unregister, Status, Reason, ResultBody, Batch, BatchResult, Cancel,
                 Coordinate, CoordinationResult, Learn, Learned, ModelQuery, ModelInfo, CacheQuery,
                 CacheStats, CacheClear, MetricsQuery, Metrics, Subscribe, Event, Config, Shutdown,
                 Call, Reply, Broadcast>;

/// The kind of a message.
Kind kind_of(const Message& m);

/// Appends the body bytes of `m`.
void encode_body(const Message& m, std::vector<std::uint8_t>& out);
/// Decodes a body of `kind`; throws ProtocolError (Truncated or Malformed).
Message decode_body(Kind kind, const std::uint8_t* body, std::size_t len);

/// Appends a whole frame (header and body).
void encode_frame(const Message& m, std::uint64_t request_id, std::uint32_t deadline_us,
                  std::vector<std::uint8_t>& out, std::uint16_t flags = 0);
/// A whole frame as new bytes.
std::vector<std::uint8_t> frame_bytes(const Message& m, std::uint64_t request_id,
                                      std::uint32_t deadline_us = 0, std::uint16_t flags = 0);

/// Appends the frame of a `reason` for `values` without copying them into a Message first.
void encode_reason_frame(span<const float> values, std::uint64_t request_id,
                         std::uint32_t deadline_us, std::vector<std::uint8_t>& out,
                         std::uint16_t flags = 0);

/// One frame cut from the stream: its header and raw payload.
struct Frame {
    Header header;
    std::vector<std::uint8_t> payload;

    Kind kind() const { return static_cast<Kind>(header.kind); }
    /// The typed message; throws ProtocolError (Truncated or Malformed).
    Message message() const { return decode_body(kind(), payload.data(), payload.size()); }
    void encode(std::vector<std::uint8_t>& out) const;
};

/// Cuts a byte stream into frames. It never trusts a length it reads: the payload length is
/// compared with the limit before anything is reserved for it.
class FrameDecoder {
public:
    explicit FrameDecoder(std::uint32_t max_frame_bytes = DEFAULT_MAX_FRAME_BYTES)
        : max_(max_frame_bytes) {}

    /// Appends received bytes.
    void feed(const std::uint8_t* data, std::size_t len);
    /// The next whole frame, or nullopt if more bytes are needed. Throws ProtocolError on a
    /// header-level failure (BadMagic, UnsupportedVersion, UnknownKind, FrameTooLarge); after
    /// one the stream cannot be resynchronised.
    std::optional<Frame> next();
    /// Bytes buffered and not yet returned as frames.
    std::size_t buffered() const { return buf_.size() - at_; }
    std::uint32_t max_frame_bytes() const { return max_; }

private:
    std::uint32_t max_;
    std::vector<std::uint8_t> buf_;
    std::size_t at_ = 0;
};

}  // namespace qnllm
