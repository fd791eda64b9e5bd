// qnllm/net.hpp: POSIX socket plumbing shared by the worker and the client: connect to
// `host:port` or a Unix socket path, write whole frames, read frames through the decoder.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "qnllm/protocol.hpp"

namespace qnllm {

/// A connection that could not be made or broke.
class NetError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// An error frame received in answer to a request.
class RemoteError : public std::runtime_error {
public:
    RemoteError(std::uint16_t code, const std::string& message)
        : std::runtime_error(error_code_name(code) + ": " + message), code_(code), message_(message) {}
    std::uint16_t code() const noexcept { return code_; }
    const std::string& message() const noexcept { return message_; }

private:
    std::uint16_t code_;
    std::string message_;
};

/// A connected stream socket (TCP with TCP_NODELAY, or Unix) that frames go through.
class Connection {
public:
    /// `host:port` (IPv4, IPv6 in brackets, or a name), `unix:PATH`, or a path containing '/'.
    static Connection open(const std::string& address);
    explicit Connection(int fd, std::uint32_t max_frame_bytes = DEFAULT_MAX_FRAME_BYTES);
    Connection(Connection&& o) noexcept;
    Connection& operator=(Connection&& o) noexcept;
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;
    ~Connection();

    int fd() const { return fd_; }
    /// Writes all of `bytes` (thread-safe); throws NetError if the peer is gone.
    void write(const std::vector<std::uint8_t>& bytes);
    void send(const Message& m, std::uint64_t request_id, std::uint32_t deadline_us = 0,
              std::uint16_t flags = 0);
    /// The next frame, blocking; nullopt at end of stream. Throws ProtocolError or NetError.
    std::optional<Frame> read_frame();
    /// A frame already buffered, without reading the socket.
    std::optional<Frame> buffered_frame() { return decoder_.next(); }
    /// Reads what the socket has (one recv); false at end of stream.
    bool fill();
    /// Shuts both directions down (wakes a thread blocked in read_frame).
    void shutdown();

private:
    int fd_ = -1;
    FrameDecoder decoder_;
    std::mutex write_mu_;
};

}  // namespace qnllm
