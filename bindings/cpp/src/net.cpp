// net.cpp: sockets for the worker and the client (connect, whole writes, framed reads).
#include "qnllm/net.hpp"

#include <cerrno>
#include <cstring>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace qnllm {

namespace {
std::string sys(const std::string& what) { return what + ": " + std::strerror(errno); }
}  // namespace

Connection Connection::open(const std::string& spec) {
    // `unix:PATH` (as the qnllm CLI spells it) or any address containing '/' is a Unix socket.
    const bool unix_prefix = spec.rfind("unix:", 0) == 0;
    const std::string address = unix_prefix ? spec.substr(5) : spec;
    if (unix_prefix || address.find('/') != std::string::npos) {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) throw NetError(sys("socket"));
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        if (address.size() >= sizeof(sa.sun_path)) {
            ::close(fd);
            throw NetError("unix socket path too long: " + address);
        }
        std::memcpy(sa.sun_path, address.c_str(), address.size() + 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
            std::string e = sys("connect " + address);
            ::close(fd);
            throw NetError(e);
        }
        return Connection(fd);
    }
    auto colon = address.rfind(':');
    if (colon == std::string::npos) throw NetError("address `" + address + "` is not host:port");
    std::string host = address.substr(0, colon), port = address.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) throw NetError("cannot resolve " + address + ": " + gai_strerror(rc));
    std::string last = "no address for " + address;
    for (addrinfo* a = res; a; a = a->ai_next) {
        int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            int one = 1;
            ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            ::freeaddrinfo(res);
            return Connection(fd);
        }
        last = sys("connect " + address);
        ::close(fd);
    }
    ::freeaddrinfo(res);
    throw NetError(last);
}

Connection::Connection(int fd, std::uint32_t max_frame_bytes) : fd_(fd), decoder_(max_frame_bytes) {}

Connection::Connection(Connection&& o) noexcept : fd_(o.fd_), decoder_(std::move(o.decoder_)) {
    o.fd_ = -1;
}

Connection& Connection::operator=(Connection&& o) noexcept {
    if (this != &o) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = o.fd_;
        decoder_ = std::move(o.decoder_);
        o.fd_ = -1;
    }
    return *this;
}

Connection::~Connection() {
    if (fd_ >= 0) ::close(fd_);
}

void Connection::write(const std::vector<std::uint8_t>& bytes) {
    std::lock_guard<std::mutex> lock(write_mu_);
    std::size_t at = 0;
    while (at < bytes.size()) {
        ssize_t n = ::send(fd_, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw NetError(sys("send"));
        }
        at += static_cast<std::size_t>(n);
    }
}

void Connection::send(const Message& m, std::uint64_t request_id, std::uint32_t deadline_us,
                      std::uint16_t flags) {
    write(frame_bytes(m, request_id, deadline_us, flags));
}

bool Connection::fill() {
    std::uint8_t buf[65536];
    for (;;) {
        ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw NetError(sys("recv"));
        }
        if (n == 0) return false;
        decoder_.feed(buf, static_cast<std::size_t>(n));
        return true;
    }
}

std::optional<Frame> Connection::read_frame() {
    for (;;) {
        if (auto f = decoder_.next()) return f;
        if (!fill()) return std::nullopt;
    }
}

void Connection::shutdown() {
    if (fd_ >= 0) ::shutdown(fd_, SHUT_RDWR);
}

}  // namespace qnllm
