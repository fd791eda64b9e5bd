// test_worker.cpp: the worker against a scripted hub on a real 127.0.0.1 socket: the handshake,
// heartbeats, cancel of a queued request, deadlines, bad batch replies, a stop that drains, and
// reconnecting after the hub closes or sends an undecodable frame.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <condition_variable>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>

#include <qnllm/qnllm.hpp>

using namespace qnllm;

namespace {

/// An engine whose `reason` waits until released, counting the calls it started.
struct GatedEngine : Engine {
    Model model = Model::from_seed(1);
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    int started = 0;
    int learned = 0;
    bool short_batches = false;

    Reasoning reason(span<const float> x) override {
        std::unique_lock<std::mutex> lock(mu);
        ++started;
        cv.notify_all();
        cv.wait(lock, [&] { return open; });
        return model.reason(x);
    }
    std::vector<Reasoning> reason_batch(span<const float> values, std::size_t dim) override {
        auto out = Engine::reason_batch(values, dim);
        if (short_batches && !out.empty()) out.pop_back();
        return out;
    }
    Learned learn(span<const float>, std::uint32_t, std::uint64_t base_version) override {
        std::lock_guard<std::mutex> lock(mu);
        ++learned;
        return Learned{base_version + 1, model.digest()};
    }
    EngineInfo info() override {
        EngineInfo i;
        i.name = "gated";
        i.model_digest = model.digest();
        return i;
    }
    void release() {
        std::lock_guard<std::mutex> lock(mu);
        open = true;
        cv.notify_all();
    }
    bool wait_started(int n) {
        std::unique_lock<std::mutex> lock(mu);
        return cv.wait_for(lock, std::chrono::seconds(10), [&] { return started >= n; });
    }
};

/// A listening socket on 127.0.0.1, port 0, playing the hub.
struct FakeHub {
    int fd = -1;
    std::string addr;
    FakeHub() {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
        REQUIRE(::listen(fd, 4) == 0);
        socklen_t len = sizeof sa;
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
        addr = "127.0.0.1:" + std::to_string(ntohs(sa.sin_port));
    }
    ~FakeHub() { ::close(fd); }
    /// The next worker connection; reads on it fail after 10 s instead of hanging the test.
    std::unique_ptr<Connection> accept() {
        pollfd p{fd, POLLIN, 0};
        REQUIRE(::poll(&p, 1, 10000) == 1);
        int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
        REQUIRE(c >= 0);
        timeval tv{10, 0};
        ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return std::make_unique<Connection>(c);
    }
};

/// Reads frames, skipping heartbeats (counted), until one of another kind arrives; fails the
/// test after 10 s of heartbeats alone (the worker sends them forever).
Frame next(Connection& c, int* heartbeats = nullptr) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
        REQUIRE(std::chrono::steady_clock::now() < give_up);
        auto f = c.read_frame();
        REQUIRE(f.has_value());
        if (f->kind() == Kind::Heartbeat) {
            CHECK(f->header.request_id == 0);
            std::get<Heartbeat>(f->message());  // a well-formed body
            if (heartbeats) ++*heartbeats;
            continue;
        }
        return std::move(*f);
    }
}

/// Plays the hub's side of hello/welcome/register/registered.
void handshake(Connection& c, std::uint64_t heartbeat_ms = 20) {
    Frame hello = next(c);
    REQUIRE(hello.kind() == Kind::Hello);
    auto h = std::get<Hello>(hello.message());
    CHECK(h.role == "worker");
    CHECK(h.protocol == 1);
    c.send(Welcome{1, "fake", DEFAULT_MAX_FRAME_BYTES, heartbeat_ms}, 0);
    Frame reg = next(c);
    REQUIRE(reg.kind() == Kind::Register);
    auto r = std::get<Register>(reg.message());
    CHECK(r.model_digest == to_hex(Model::from_seed(1).digest()));
    CHECK(r.input_size == 768);
    CHECK(r.labels == 10);
    CHECK(r.max_in_flight == 64);
    c.send(Registered{7, heartbeat_ms}, 0);
}

struct Running {
    std::thread t;
    int code = -1;
    Running(Engine& e, const std::string& addr) {
        WorkerOptions o;
        o.connect = addr;
        o.name = "w";
        o.threads = 1;
        o.handle_signals = false;
        o.verbose = false;
        t = std::thread([this, &e, o] { code = serve_worker(e, o); });
    }
    ~Running() {
        request_worker_stop();
        if (t.joinable()) t.join();
    }
    int stop() {
        request_worker_stop();
        t.join();
        return code;
    }
};

}  // namespace

TEST_CASE("worker: cancel drops a queued request, deadlines, heartbeats, batch count, drain") {
    FakeHub hub;
    GatedEngine engine;
    Running worker(engine, hub.addr);
    auto c = hub.accept();
    handshake(*c);
    auto xs = reference_inputs(3, 4, 768);
    auto x = [&](int i) { return std::vector<float>(xs.begin() + i * 768, xs.begin() + (i + 1) * 768); };
    // A blocks the only engine thread; B, and D (expiring at once), queue behind it.
    c->send(Reason{x(0)}, 100);
    REQUIRE(engine.wait_started(1));
    c->send(Reason{x(1)}, 101);
    c->send(Reason{x(2)}, 102, /*deadline_us*/ 1);
    c->send(Cancel{}, 101);
    // The worker reads frames in order: once it answers this ping it has seen the cancel.
    c->send(Ping{}, 103);
    int heartbeats = 0;
    Frame pong = next(*c, &heartbeats);
    CHECK(pong.kind() == Kind::Pong);
    CHECK(pong.header.request_id == 103);
    // The deadline of D passes while A still runs (A waits on the gate, D's budget is 1 µs).
    engine.release();
    Frame a = next(*c, &heartbeats);
    REQUIRE(a.kind() == Kind::Result);
    CHECK(a.header.request_id == 100);
    auto ra = std::get<ResultBody>(a.message());
    CHECK(ra.result_digest == Model::from_seed(1).reason(x(0)).result_digest);
    CHECK(ra.model_digest == Model::from_seed(1).digest());
    Frame d = next(*c, &heartbeats);
    REQUIRE(d.kind() == Kind::Error);
    CHECK(d.header.request_id == 102);
    CHECK(std::get<WireError>(d.message()).code == static_cast<std::uint16_t>(ErrorCode::DeadlineExceeded));
    // C comes after B in the queue: its answer proves B was dropped, never computed.
    c->send(Reason{x(3)}, 104);
    Frame cc = next(*c, &heartbeats);
    CHECK(cc.header.request_id == 104);
    CHECK(cc.kind() == Kind::Result);
    {
        std::lock_guard<std::mutex> lock(engine.mu);
        CHECK(engine.started == 2);  // A and C only
    }
    // A batch whose engine returns one result short is an error, not a shifted reply.
    engine.short_batches = true;
    Batch b{2, 768, x(0)};
    b.values.insert(b.values.end(), xs.begin() + 768, xs.begin() + 2 * 768);
    c->send(b, 105);
    Frame br = next(*c, &heartbeats);
    REQUIRE(br.kind() == Kind::Error);
    CHECK(br.header.request_id == 105);
    CHECK(std::get<WireError>(br.message()).code == static_cast<std::uint16_t>(ErrorCode::EngineFailed));
    engine.short_batches = false;
    c->send(b, 106);
    Frame bok = next(*c, &heartbeats);
    REQUIRE(bok.kind() == Kind::BatchResult);
    CHECK(std::get<BatchResult>(bok.message()).results.size() == 2);
    // model_query is answered from info().
    c->send(ModelQuery{}, 107);
    Frame mi = next(*c, &heartbeats);
    REQUIRE(mi.kind() == Kind::ModelInfo);
    CHECK(std::get<ModelInfo>(mi.message()).model_digest == to_hex(Model::from_seed(1).digest()));
    // Heartbeats keep coming while we wait for them (20 ms interval).
    while (heartbeats < 2) next(*c, &heartbeats);
    // Stop: unregister first, then goodbye once nothing is in flight, then exit 0.
    request_worker_stop();
    Frame u = next(*c);
    CHECK(u.kind() == Kind::Unregister);
    Frame g = next(*c);
    CHECK(g.kind() == Kind::Goodbye);
    CHECK(worker.stop() == 0);
}

TEST_CASE("worker: a learn is applied in the order read, never queued behind reasons or dropped") {
    // Every replica must apply the same updates in the same order, as the Rust and Python
    // workers do: a learn is not queued on the pool (whose threads could reorder two), and a
    // cancel or a spent deadline does not drop it.
    FakeHub hub;
    GatedEngine engine;
    Running worker(engine, hub.addr);
    auto c = hub.accept();
    handshake(*c);
    auto x = reference_inputs(6, 1, 768);
    c->send(Reason{x}, 200);  // blocks the only engine thread
    REQUIRE(engine.wait_started(1));
    c->send(Learn{3, 41, x}, 201, /*deadline_us*/ 1);
    c->send(Cancel{}, 201);
    c->send(Ping{}, 202);
    // Both come while the reason read before them still runs: the learn did not wait for it.
    Frame l = next(*c);
    CHECK(l.header.request_id == 201);
    REQUIRE(l.kind() == Kind::Learned);
    CHECK(std::get<Learned>(l.message()).model_version == 42);
    CHECK(next(*c).kind() == Kind::Pong);
    {
        std::lock_guard<std::mutex> lock(engine.mu);
        CHECK(engine.learned == 1);
    }
    engine.release();
    Frame r = next(*c);
    CHECK(r.header.request_id == 200);
    CHECK(r.kind() == Kind::Result);
    // The late cancel for the learn is forgotten: it cancels nothing read after it.
    c->send(Reason{x}, 201);
    Frame again = next(*c);
    CHECK(again.header.request_id == 201);
    CHECK(again.kind() == Kind::Result);
    request_worker_stop();
    CHECK(next(*c).kind() == Kind::Unregister);
    CHECK(next(*c).kind() == Kind::Goodbye);
    CHECK(worker.stop() == 0);
}

TEST_CASE("worker: an undecodable frame gets an error and a close; it reconnects") {
    FakeHub hub;
    GatedEngine engine;
    engine.release();
    Running worker(engine, hub.addr);
    auto c = hub.accept();
    handshake(*c);
    // A reason of 3 bytes: MalformedBody with the request id, then the connection closes.
    std::vector<std::uint8_t> bad;
    Header h;
    h.kind = static_cast<std::uint8_t>(Kind::Reason);
    h.request_id = 55;
    h.payload_len = 3;
    h.write(bad);
    bad.insert(bad.end(), {0, 0, 0});
    c->write(bad);
    Frame e = next(*c);
    REQUIRE(e.kind() == Kind::Error);
    CHECK(e.header.request_id == 55);
    CHECK(std::get<WireError>(e.message()).code == static_cast<std::uint16_t>(ErrorCode::MalformedBody));
    for (;;) {  // then end of stream (heartbeats may come first)
        auto f = c->read_frame();
        if (!f) break;
        CHECK(f->kind() == Kind::Heartbeat);
    }
    // The worker comes back by itself and serves on the new connection.
    auto again = hub.accept();
    handshake(*again);
    auto x = reference_inputs(5, 1, 768);
    again->send(Reason{x}, 9);
    Frame r = next(*again);
    CHECK(r.kind() == Kind::Result);
    CHECK(std::get<ResultBody>(r.message()).result_digest == Model::from_seed(1).reason(x).result_digest);
    request_worker_stop();
    CHECK(next(*again).kind() == Kind::Unregister);
    CHECK(next(*again).kind() == Kind::Goodbye);
    CHECK(worker.stop() == 0);
}

TEST_CASE("worker: a wrong token is fatal (exit 1), not retried") {
    FakeHub hub;
    GatedEngine engine;
    Running worker(engine, hub.addr);
    auto c = hub.accept();
    REQUIRE(next(*c).kind() == Kind::Hello);
    c->send(WireError{static_cast<std::uint16_t>(ErrorCode::Unauthorized), "wrong token"}, 0);
    worker.t.join();
    CHECK(worker.code == 1);
}

TEST_CASE("worker: after a learn, results, learned and model_info name the new model; a stale learn is refused") {
    // What a teacher (or a student) needs: every answer names the model that computed it.
    FakeHub hub;
    ReferenceEngine engine(Model::from_seed(1));
    Running worker(engine, hub.addr);
    auto c = hub.accept();
    handshake(*c);
    auto xs = reference_inputs(11, 2, 768);
    std::vector<float> x0(xs.begin(), xs.begin() + 768), x1(xs.begin() + 768, xs.end());
    Model expect = Model::from_seed(1);
    const auto label = (expect.reason(x0).label + 1) % 10;  // a label the model gets wrong
    expect.learn(x0, label);
    c->send(Learn{label, 0, x0}, 200);
    Frame l = next(*c);
    REQUIRE(l.kind() == Kind::Learned);
    CHECK(l.header.request_id == 200);
    auto learned = std::get<Learned>(l.message());
    CHECK(learned.model_version == 1);
    CHECK(learned.model_digest == expect.digest());
    CHECK(learned.model_digest != Model::from_seed(1).digest());
    auto check_result = [&](std::uint64_t id) {
        c->send(Reason{x1}, id);
        Frame r = next(*c);
        REQUIRE(r.kind() == Kind::Result);
        CHECK(r.header.request_id == id);
        auto body = std::get<ResultBody>(r.message());
        CHECK(body.model_version == 1);
        CHECK(body.model_digest == expect.digest());
        CHECK(body.result_digest == expect.reason(x1).result_digest);
    };
    check_result(201);
    c->send(ModelQuery{}, 202);
    Frame mi = next(*c);
    REQUIRE(mi.kind() == Kind::ModelInfo);
    CHECK(std::get<ModelInfo>(mi.message()).model_version == 1);
    CHECK(std::get<ModelInfo>(mi.message()).model_digest == to_hex(expect.digest()));
    // A learn for the old version is refused and changes nothing.
    c->send(Learn{label, 0, x0}, 203);
    Frame e = next(*c);
    REQUIRE(e.kind() == Kind::Error);
    CHECK(e.header.request_id == 203);
    CHECK(std::get<WireError>(e.message()).code == static_cast<std::uint16_t>(ErrorCode::VersionConflict));
    check_result(204);
    request_worker_stop();
    CHECK(next(*c).kind() == Kind::Unregister);
    CHECK(next(*c).kind() == Kind::Goodbye);
    CHECK(worker.stop() == 0);
}
