// qnllm/client.hpp: a client of the hub: reason, batch, metrics, ping, with many requests in
// flight on one connection (replies matched by request id on a reader thread).
#pragma once

#include <atomic>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "qnllm/net.hpp"
#include "qnllm/protocol.hpp"

namespace qnllm {

struct ClientOptions {
    std::string name = "cpp-client";
    std::string token;  // empty: none
    /// Deadline sent with every request, microseconds (0: the hub's default).
    std::uint32_t deadline_us = 0;
};

/// One connection to a hub. Thread-safe: any thread may start requests; each `*_async` call
/// returns a future completed by the reader thread (RemoteError for an `error` reply, NetError
/// if the connection is lost).
class Client {
public:
    /// Connects and says hello; throws NetError, or RemoteError if the hub refuses.
    static std::unique_ptr<Client> connect(const std::string& address, ClientOptions options = {});
    ~Client();
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    std::future<Reasoning> reason_async(span<const float> encoding, std::uint16_t flags = 0);
    std::future<std::vector<Reasoning>> batch_async(span<const float> values, std::uint32_t dim);
    std::future<Message> request_async(const Message& m, std::uint16_t flags = 0);

    Reasoning reason(span<const float> encoding, std::uint16_t flags = 0) {
        return reason_async(encoding, flags).get();
    }
    std::vector<Reasoning> batch(span<const float> values, std::uint32_t dim) {
        return batch_async(values, dim).get();
    }
    /// The hub's metrics snapshot.
    nlohmann::json metrics();
    /// A round trip.
    void ping();
    /// The session id from `welcome`.
    std::uint64_t session() const { return session_; }
    /// Says goodbye and closes (also done by the destructor).
    void close();

private:
    explicit Client(Connection c, ClientOptions o) : conn_(std::move(c)), o_(std::move(o)) {}
    void read_loop();
    std::uint64_t start(std::promise<Message> p);
    void send_or_fail(std::uint64_t id, const std::vector<std::uint8_t>& bytes);

    Connection conn_;
    ClientOptions o_;
    std::uint64_t session_ = 0;
    std::mutex mu_;
    std::map<std::uint64_t, std::promise<Message>> pending_;
    std::atomic<std::uint64_t> next_id_{1};
    bool broken_ = false;
    std::string broken_why_;
    std::thread reader_;
    std::atomic<bool> closed_{false};
};

}  // namespace qnllm
