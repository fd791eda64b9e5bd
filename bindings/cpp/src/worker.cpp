// worker.cpp: the worker loop: one session per connection to the hub, a pool of engine threads,
// heartbeats, cancels and deadlines, drain on a stop request, reconnect with jittered backoff.
#include "qnllm/worker.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fcntl.h>
#include <memory>
#include <poll.h>
#include <random>
#include <thread>
#include <unistd.h>
#include <unordered_set>

#include "qnllm/net.hpp"

namespace qnllm {

namespace {

using Clock = std::chrono::steady_clock;

// The stop pipe: a signal handler (or request_worker_stop) writes one byte; loops poll it.
int g_stop_pipe[2] = {-1, -1};
std::atomic<bool> g_stop{false};

void ensure_stop_pipe() {
    static std::once_flag once;
    std::call_once(once, [] {
        if (::pipe2(g_stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
            g_stop_pipe[0] = g_stop_pipe[1] = -1;
        }
    });
}

extern "C" void on_stop_signal(int) { request_worker_stop(); }

struct Session {
    explicit Session(Connection c) : conn(std::move(c)) {}
    Connection conn;
    std::atomic<bool> alive{true};
    std::mutex mu;
    std::unordered_set<std::uint64_t> active;     // requests read and not yet finished
    std::unordered_set<std::uint64_t> cancelled;  // a subset of active: cancelled ones

    void send(const Message& m, std::uint64_t id) {
        if (!alive.load()) return;
        try {
            conn.send(m, id);
        } catch (const NetError&) {
            alive.store(false);
        }
    }
    bool take_cancel(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mu);
        return cancelled.erase(id) > 0;
    }
    void started(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mu);
        active.insert(id);
    }
    void finished(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mu);
        active.erase(id);
        cancelled.erase(id);
    }
    /// A cancel for a request already answered (or never seen) is forgotten at once, so the
    /// set cannot grow with the hub's late cancels.
    void cancel(std::uint64_t id) {
        std::lock_guard<std::mutex> lock(mu);
        if (active.count(id)) cancelled.insert(id);
    }
};

struct Job {
    std::shared_ptr<Session> session;
    Kind kind;
    std::uint64_t id;
    std::optional<Clock::time_point> expires;
    Message message;
};

class Worker {
public:
    Worker(Engine& engine, const WorkerOptions& o) : engine_(engine), o_(o) {
        if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
        unsigned n = o.threads ? o.threads : std::max(1u, std::thread::hardware_concurrency());
        for (unsigned i = 0; i < n; ++i) pool_.emplace_back([this] { run_pool(); });
        info_ = engine_.info();
        describe_by_probe();
    }
    ~Worker() {
        {
            std::lock_guard<std::mutex> lock(qmu_);
            quit_ = true;
        }
        qcv_.notify_all();
        for (auto& t : pool_) t.join();
        if (wake_[0] >= 0) ::close(wake_[0]);
        if (wake_[1] >= 0) ::close(wake_[1]);
    }

    int run();

private:
    enum class End { Stopped, Lost, Fatal };

    void log(const std::string& s) const {
        if (o_.verbose) std::fprintf(stderr, "qnllm-cpp-worker %s: %s\n", o_.name.c_str(), s.c_str());
    }
    End session(const std::shared_ptr<Session>& s, std::uint64_t heartbeat_ms);
    std::optional<Frame> handshake_read(Connection& c, int timeout_ms, bool& stop);
    void handle(const std::shared_ptr<Session>& s, const Frame& f, bool draining);
    void run_pool();
    void execute(Job& job);
    void learn(Session& s, std::uint64_t id, const Learn& l);
    void finish_result(Reasoning& r, std::uint64_t ns);
    void fail(Session& s, std::uint64_t id, ErrorCode code, const std::string& msg) {
        s.send(WireError{static_cast<std::uint16_t>(code), msg}, id);
    }
    EngineInfo info() {
        std::lock_guard<std::mutex> lock(info_mu_);
        return info_;
    }
    /// An engine whose `info()` names no model is described by its answer to one zero
    /// encoding: the hub checks every reply's model digest against the registered one.
    void describe_by_probe() {
        const bool unnamed = std::all_of(info_.model_digest.begin(), info_.model_digest.end(),
                                         [](std::uint8_t b) { return b == 0; });
        if (!unnamed) return;
        try {
            std::vector<float> zeros(info_.input_size, 0.0f);
            Reasoning r = engine_.reason(span<const float>(zeros.data(), zeros.size()));
            info_.model_digest = r.model_digest;
            info_.model_version = r.model_version;
            if (!r.scores.empty()) info_.labels = static_cast<std::uint32_t>(r.scores.size());
        } catch (const std::exception& e) {
            log(std::string("cannot describe the engine by a probe: ") + e.what());
        }
    }

    Engine& engine_;
    WorkerOptions o_;
    int wake_[2];
    std::vector<std::thread> pool_;
    std::mutex qmu_;
    std::condition_variable qcv_;
    std::deque<Job> queue_;
    bool quit_ = false;
    std::atomic<std::uint32_t> in_flight_{0};
    std::atomic<std::uint64_t> served_{0};
    std::mutex info_mu_;
    EngineInfo info_;
};

void Worker::run_pool() {
    for (;;) {
        Job job;
        {
            std::unique_lock<std::mutex> lock(qmu_);
            qcv_.wait(lock, [this] { return quit_ || !queue_.empty(); });
            if (quit_ && queue_.empty()) return;
            job = std::move(queue_.front());
            queue_.pop_front();
        }
        execute(job);
        if (job.session) job.session->finished(job.id);
        job = Job{};
        in_flight_.fetch_sub(1);
        served_.fetch_add(1);
        if (wake_[1] >= 0) {
            const char b = 1;
            [[maybe_unused]] auto n = ::write(wake_[1], &b, 1);
        }
    }
}

void Worker::finish_result(Reasoning& r, std::uint64_t ns) {
    static const Digest zero{};
    if (r.scores.size() != r.label_spikes.size() || r.label >= r.scores.size()) {
        throw EngineError(ErrorCode::EngineFailed,
                          "the engine returned an inconsistent result (label " +
                              std::to_string(r.label) + ", " + std::to_string(r.scores.size()) +
                              " scores, " + std::to_string(r.label_spikes.size()) +
                              " label spikes)");
    }
    if (r.result_digest == zero)
        r.result_digest = result_digest(r.label, r.total_spikes, r.scores, r.label_spikes);
    if (r.model_digest == zero) {
        EngineInfo i = info();
        r.model_digest = i.model_digest;
        r.model_version = i.model_version;
    }
    r.compute_ns = ns;
}

void Worker::execute(Job& job) {
    Session& s = *job.session;
    if (!s.alive.load()) return;
    if (s.take_cancel(job.id)) return;  // cancelled before it started: no answer at all
    if (job.expires && Clock::now() > *job.expires) {
        fail(s, job.id, ErrorCode::DeadlineExceeded, "the deadline passed before the engine started");
        return;
    }
    try {
        auto t0 = Clock::now();
        if (auto* r = std::get_if<Reason>(&job.message)) {
            Reasoning out = engine_.reason(span<const float>(r->values.data(), r->values.size()));
            auto ns = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
            finish_result(out, ns);
            if (!s.take_cancel(job.id)) s.send(out, job.id);
        } else if (auto* b = std::get_if<Batch>(&job.message)) {
            std::vector<Reasoning> outs =
                engine_.reason_batch(span<const float>(b->values.data(), b->values.size()), b->dim);
            if (outs.size() != b->count) {
                throw EngineError(ErrorCode::EngineFailed,
                                  "the engine returned " + std::to_string(outs.size()) +
                                      " results for a batch of " + std::to_string(b->count));
            }
            auto ns = static_cast<std::uint64_t>(
                std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
            for (auto& o : outs) finish_result(o, ns / (b->count ? b->count : 1));
            if (!s.take_cancel(job.id)) s.send(BatchResult{std::move(outs)}, job.id);
        }
    } catch (const EngineError& e) {
        fail(s, job.id, e.code(), e.what());
    } catch (const std::exception& e) {
        fail(s, job.id, ErrorCode::EngineFailed, std::string("the engine failed: ") + e.what());
    } catch (...) {
        fail(s, job.id, ErrorCode::EngineFailed, "the engine failed with an unknown exception");
    }
}

void Worker::learn(Session& s, std::uint64_t id, const Learn& l) {
    std::optional<Learned> done;
    try {
        done = engine_.learn(span<const float>(l.values.data(), l.values.size()), l.label,
                             l.base_version);
    } catch (const EngineError& e) {
        fail(s, id, e.code(), e.what());
    } catch (const std::exception& e) {
        fail(s, id, ErrorCode::EngineFailed, std::string("the engine failed: ") + e.what());
    } catch (...) {
        fail(s, id, ErrorCode::EngineFailed, "the engine failed with an unknown exception");
    }
    if (!done) return;
    // The update is applied: a failure to describe the engine afterwards must not say it
    // was not. The registration keeps the last description that worked.
    try {
        EngineInfo now = engine_.info();
        std::lock_guard<std::mutex> lock(info_mu_);
        info_ = std::move(now);
    } catch (const std::exception& e) {
        log(std::string("cannot describe the engine after learning: ") + e.what());
    }
    s.send(*done, id);
}

void Worker::handle(const std::shared_ptr<Session>& s, const Frame& f, bool draining) {
    Message m = f.message();  // throws ProtocolError: the caller answers and closes
    const std::uint64_t id = f.header.request_id;
    switch (f.kind()) {
        case Kind::Learn:
            // Applied here, on the session's thread, in the order read: updates must not
            // overtake each other (the pool's threads could), and none is dropped for a
            // `cancel` or a deadline. Every replica applies the same updates, as the Rust and
            // Python workers do (docs/protocol.md, `cancel`).
            learn(*s, id, std::get<Learn>(m));
            return;
        case Kind::Reason:
        case Kind::Batch: {
            Job job{s, f.kind(), id, std::nullopt, std::move(m)};
            if (f.header.deadline_us > 0)
                job.expires = Clock::now() + std::chrono::microseconds(f.header.deadline_us);
            in_flight_.fetch_add(1);
            s->started(id);
            {
                std::lock_guard<std::mutex> lock(qmu_);
                queue_.push_back(std::move(job));
            }
            qcv_.notify_one();
            (void)draining;  // requests already on their way after `unregister` are still served
            return;
        }
        case Kind::Cancel: s->cancel(id); return;
        case Kind::Ping: s->send(Pong{}, id); return;
        case Kind::Pong: return;
        case Kind::ModelQuery: {
            EngineInfo i = info();
            s->send(ModelInfo{i.name, i.input_size, i.hidden, i.steps, i.labels, i.model_version,
                              to_hex(i.model_digest)},
                    id);
            return;
        }
        case Kind::Config: s->send(Config{nlohmann::json::object()}, id); return;
        case Kind::Broadcast: return;
        case Kind::Error: {
            const auto& e = std::get<WireError>(m);
            log("hub error " + error_code_name(e.code) + ": " + e.message);
            if (e.code < 16) s->alive.store(false);
            return;
        }
        default:
            fail(*s, id, ErrorCode::UnexpectedMessage,
                 std::string("a worker does not take `") + kind_name(f.kind()) + "`");
            s->alive.store(false);
            return;
    }
}

Worker::End Worker::session(const std::shared_ptr<Session>& s, std::uint64_t heartbeat_ms) {
    bool draining = false;
    bool goodbye_from_hub = false;
    auto next_beat = Clock::now() + std::chrono::milliseconds(heartbeat_ms);
    Clock::time_point drain_deadline{};
    for (;;) {
        if (draining && in_flight_.load() == 0) {
            s->send(Goodbye{"worker stopped"}, 0);
            s->alive.store(false);
            return End::Stopped;
        }
        if (draining && Clock::now() > drain_deadline) {
            log("grace period over with " + std::to_string(in_flight_.load()) + " in flight");
            s->alive.store(false);
            return End::Stopped;
        }
        if (!s->alive.load()) return End::Lost;
        auto now = Clock::now();
        if (now >= next_beat) {
            s->send(Heartbeat{in_flight_.load(), served_.load()}, 0);
            next_beat = now + std::chrono::milliseconds(heartbeat_ms);
        }
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_beat - now).count();
        pollfd fds[3] = {{s->conn.fd(), POLLIN, 0}, {g_stop_pipe[0], POLLIN, 0}, {wake_[0], POLLIN, 0}};
        int rc = ::poll(fds, 3, static_cast<int>(std::max<long long>(1, wait + 1)));
        if (rc < 0 && errno != EINTR) return End::Lost;
        if (fds[2].revents & POLLIN) {
            char buf[256];
            while (::read(wake_[0], buf, sizeof buf) > 0) {
            }
        }
        if ((fds[1].revents & POLLIN) || (g_stop.load() && !draining)) {
            char buf[16];
            while (::read(g_stop_pipe[0], buf, sizeof buf) > 0) {
            }
            if (!draining) {
                draining = true;
                drain_deadline = Clock::now() + std::chrono::milliseconds(o_.grace_ms);
                log("stopping: unregistering, finishing " + std::to_string(in_flight_.load()) +
                    " in flight");
                s->send(Unregister{"worker stopping"}, 0);
            }
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            try {
                if (!s->conn.fill()) {
                    s->alive.store(false);
                    if (!goodbye_from_hub) log("the hub closed the connection");
                    return draining ? End::Stopped : End::Lost;
                }
                while (auto f = s->conn.buffered_frame()) {
                    if (f->kind() == Kind::Goodbye) {
                        goodbye_from_hub = true;
                        log("the hub said goodbye");
                        continue;
                    }
                    if (f->kind() == Kind::Shutdown) {
                        request_worker_stop();
                        continue;
                    }
                    if (f->kind() == Kind::Drain) {
                        s->send(Status{"draining", in_flight_.load(), served_.load(), info().model_version}, 0);
                        continue;
                    }
                    try {
                        handle(s, *f, draining);
                    } catch (const ProtocolError& e) {
                        fail(*s, f->header.request_id, e.code(), e.what());
                        s->alive.store(false);
                    }
                }
            } catch (const ProtocolError& e) {
                // Header-level: the stream cannot be resynchronised.
                fail(*s, e.request_id(), e.code(), e.what());
                s->alive.store(false);
            } catch (const NetError& e) {
                log(e.what());
                s->alive.store(false);
            }
        }
    }
}

std::optional<Frame> Worker::handshake_read(Connection& c, int timeout_ms, bool& stop) {
    auto until = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        if (auto f = c.buffered_frame()) return f;
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
        if (left <= 0) throw NetError("no answer from the hub within the handshake timeout");
        pollfd fds[2] = {{c.fd(), POLLIN, 0}, {g_stop_pipe[0], POLLIN, 0}};
        if (::poll(fds, 2, static_cast<int>(left)) < 0 && errno != EINTR) throw NetError("poll failed");
        if (g_stop.load()) {
            stop = true;
            return std::nullopt;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!c.fill()) throw NetError("the hub closed the connection during the handshake");
        }
    }
}

int Worker::run() {
    std::mt19937_64 rng(std::random_device{}());
    std::uint64_t delay_ms = 50;
    int failures = 0;
    for (;;) {
        if (g_stop.load()) return 0;
        std::string fatal;
        try {
            Connection c = Connection::open(o_.connect);
            Hello h{PROTOCOL_VERSION, "worker", o_.name, std::nullopt};
            if (!o_.token.empty()) h.token = o_.token;
            c.send(h, 1);
            bool stop = false;
            std::uint64_t heartbeat_ms = 500;
            auto expect = [&](Kind want) -> std::optional<Message> {
                for (;;) {
                    auto f = handshake_read(c, 5000, stop);
                    if (!f) return std::nullopt;
                    Message m = f->message();
                    if (f->kind() == want) return m;
                    if (f->kind() == Kind::Error) {
                        const auto& e = std::get<WireError>(m);
                        if (e.code == static_cast<std::uint16_t>(ErrorCode::Unauthorized) ||
                            e.code == static_cast<std::uint16_t>(ErrorCode::UnsupportedVersion)) {
                            fatal = error_code_name(e.code) + ": " + e.message;
                        }
                        throw RemoteError(e.code, e.message);
                    }
                    if (f->kind() == Kind::Ping) c.send(Pong{}, f->header.request_id);
                }
            };
            auto welcome = expect(Kind::Welcome);
            if (!welcome) return 0;
            heartbeat_ms = std::get<Welcome>(*welcome).heartbeat_interval_ms;
            EngineInfo i = info();
            c.send(Register{o_.name, to_hex(i.model_digest), i.model_version, i.input_size,
                            i.labels, o_.max_in_flight, o_.teacher},
                   2);
            auto registered = expect(Kind::Registered);
            if (!registered) return 0;
            const auto& r = std::get<Registered>(*registered);
            if (r.heartbeat_interval_ms > 0) heartbeat_ms = r.heartbeat_interval_ms;
            if (heartbeat_ms == 0) heartbeat_ms = 500;
            log("registered as engine " + std::to_string(r.engine_id) + " at " + o_.connect);
            failures = 0;
            delay_ms = 50;
            if (o_.on_registered) o_.on_registered(r.engine_id);
            auto s = std::make_shared<Session>(std::move(c));
            End end = session(s, heartbeat_ms);
            s->alive.store(false);
            if (end == End::Stopped) return 0;
        } catch (const std::exception& e) {
            if (!fatal.empty()) {
                log("refused: " + fatal);
                return 1;
            }
            log(std::string("cannot serve: ") + e.what());
        }
        ++failures;
        if (o_.max_retries >= 0 && failures > o_.max_retries) {
            log("giving up after " + std::to_string(failures) + " failed attempts");
            return 1;
        }
        std::uniform_int_distribution<std::uint64_t> pick(delay_ms / 2, delay_ms - 1);
        std::uint64_t wait = pick(rng);
        delay_ms = std::min<std::uint64_t>(delay_ms * 2, 5000);
        pollfd fd{g_stop_pipe[0], POLLIN, 0};
        ::poll(&fd, 1, static_cast<int>(wait));
    }
}

}  // namespace

void request_worker_stop() {
    g_stop.store(true);
    if (g_stop_pipe[1] >= 0) {
        const char b = 1;
        [[maybe_unused]] auto n = ::write(g_stop_pipe[1], &b, 1);
    }
}

int serve_worker(Engine& engine, const WorkerOptions& options) {
    ensure_stop_pipe();
    // A stop asked of an earlier serve_worker does not stop this one.
    g_stop.store(false);
    char buf[64];
    while (g_stop_pipe[0] >= 0 && ::read(g_stop_pipe[0], buf, sizeof buf) > 0) {
    }
    if (options.handle_signals) {
        struct sigaction sa{};
        sa.sa_handler = on_stop_signal;
        sigemptyset(&sa.sa_mask);
        ::sigaction(SIGTERM, &sa, nullptr);
        ::sigaction(SIGINT, &sa, nullptr);
        std::signal(SIGPIPE, SIG_IGN);
    }
    Worker w(engine, options);
    return w.run();
}

}  // namespace qnllm
