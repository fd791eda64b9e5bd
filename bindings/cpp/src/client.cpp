// client.cpp: the hub client: hello/welcome, then requests matched to replies by id.
#include "qnllm/client.hpp"

namespace qnllm {

std::unique_ptr<Client> Client::connect(const std::string& address, ClientOptions options) {
    Connection c = Connection::open(address);
    Hello h{PROTOCOL_VERSION, "client", options.name, std::nullopt};
    if (!options.token.empty()) h.token = options.token;
    c.send(h, 1);
    std::unique_ptr<Client> client(new Client(std::move(c), std::move(options)));
    for (;;) {
        auto f = client->conn_.read_frame();
        if (!f) throw NetError("the hub closed the connection during the handshake");
        Message m = f->message();
        if (auto* w = std::get_if<Welcome>(&m)) {
            client->session_ = w->session;
            break;
        }
        if (auto* e = std::get_if<WireError>(&m)) throw RemoteError(e->code, e->message);
    }
    client->next_id_ = 2;
    client->reader_ = std::thread([c = client.get()] { c->read_loop(); });
    return client;
}

Client::~Client() {
    close();
    if (reader_.joinable()) reader_.join();
}

void Client::close() {
    if (closed_.exchange(true)) return;
    try {
        conn_.send(Goodbye{"client closing"}, 0);
    } catch (const NetError&) {
    }
    conn_.shutdown();
}

void Client::read_loop() {
    std::string why = "connection closed";
    try {
        while (auto f = conn_.read_frame()) {
            Message m;
            try {
                m = f->message();
            } catch (const ProtocolError& e) {
                m = WireError{static_cast<std::uint16_t>(e.code()), e.what()};
            }
            std::promise<Message> p;
            {
                std::lock_guard<std::mutex> lock(mu_);
                auto it = pending_.find(f->header.request_id);
                if (it == pending_.end()) continue;  // goodbye, events, unknown ids
                p = std::move(it->second);
                pending_.erase(it);
            }
            p.set_value(std::move(m));
        }
    } catch (const std::exception& e) {
        why = e.what();
    }
    std::map<std::uint64_t, std::promise<Message>> left;
    {
        std::lock_guard<std::mutex> lock(mu_);
        broken_ = true;
        broken_why_ = why;
        left.swap(pending_);
    }
    for (auto& [id, p] : left) p.set_exception(std::make_exception_ptr(NetError(why)));
}

std::uint64_t Client::start(std::promise<Message> p) {
    std::uint64_t id = next_id_.fetch_add(1);
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) {
        p.set_exception(std::make_exception_ptr(NetError(broken_why_)));
        return 0;
    }
    pending_.emplace(id, std::move(p));
    return id;
}

void Client::send_or_fail(std::uint64_t id, const std::vector<std::uint8_t>& bytes) {
    try {
        conn_.write(bytes);
    } catch (const NetError& e) {
        std::promise<Message> p;
        {
            std::lock_guard<std::mutex> lock(mu_);
            auto it = pending_.find(id);
            if (it == pending_.end()) return;
            p = std::move(it->second);
            pending_.erase(it);
        }
        p.set_exception(std::make_exception_ptr(e));
    }
}

std::future<Message> Client::request_async(const Message& m, std::uint16_t flags) {
    std::promise<Message> p;
    auto fut = p.get_future();
    std::uint64_t id = start(std::move(p));
    if (id != 0) send_or_fail(id, frame_bytes(m, id, o_.deadline_us, flags));
    return fut;
}

namespace {
template <class T>
T expect(std::future<Message> f) {
    Message m = f.get();
    if (auto* e = std::get_if<WireError>(&m)) throw RemoteError(e->code, e->message);
    if (auto* t = std::get_if<T>(&m)) return std::move(*t);
    throw RemoteError(static_cast<std::uint16_t>(ErrorCode::UnexpectedMessage),
                      std::string("unexpected reply `") + kind_name(kind_of(m)) + "`");
}
}  // namespace

std::future<Reasoning> Client::reason_async(span<const float> encoding, std::uint16_t flags) {
    std::promise<Message> p;
    auto fut = p.get_future();
    std::uint64_t id = start(std::move(p));
    if (id != 0) {
        std::vector<std::uint8_t> bytes;
        encode_reason_frame(encoding, id, o_.deadline_us, bytes, flags);
        send_or_fail(id, bytes);
    }
    return std::async(std::launch::deferred,
                      [f = std::move(fut)]() mutable { return expect<ResultBody>(std::move(f)); });
}

std::future<std::vector<Reasoning>> Client::batch_async(span<const float> values, std::uint32_t dim) {
    Batch b;
    b.dim = dim;
    b.count = dim ? static_cast<std::uint32_t>(values.size() / dim) : 0;
    b.values.assign(values.begin(), values.end());
    auto fut = request_async(b);
    return std::async(std::launch::deferred, [f = std::move(fut)]() mutable {
        return expect<BatchResult>(std::move(f)).results;
    });
}

nlohmann::json Client::metrics() { return expect<Metrics>(request_async(MetricsQuery{})).value; }

void Client::ping() { expect<Pong>(request_async(Ping{})); }

}  // namespace qnllm
