// qnllm/worker.hpp: serve an Engine to a hub as a worker (hello, register, heartbeats, reason
// and batch on a thread pool, cancel, deadlines, drain on SIGTERM, reconnect with backoff).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "qnllm/engine.hpp"

namespace qnllm {

struct WorkerOptions {
    /// `host:port` or a Unix socket path.
    std::string connect = "127.0.0.1:9999";
    /// The worker's name in `hello` and `register`.
    std::string name = "cpp-worker";
    /// Auth token (empty: none).
    std::string token = "";
    /// Requests the worker offers to hold at once (`register.max_in_flight`).
    std::uint32_t max_in_flight = 64;
    /// Register as a teacher (`register.role`): the hub's coordinator asks it in every
    /// `coordinate`, and no `reason` is routed to it.
    bool teacher = false;
    /// Threads running the engine (0: one per core).
    unsigned threads = 0;
    /// Failed connection attempts in a row before giving up with exit code 1 (-1: forever).
    int max_retries = -1;
    /// Install SIGTERM/SIGINT handlers that drain and exit 0.
    bool handle_signals = true;
    /// How long a drain waits for in-flight work before leaving anyway.
    std::uint64_t grace_ms = 10000;
    /// Log connection events to stderr.
    bool verbose = true;
    /// Called (on the worker's thread) each time the hub answers `registered`, with the engine id.
    std::function<void(std::uint64_t)> on_registered = nullptr;
};

/// Serves `engine` until SIGTERM/SIGINT (or request_worker_stop()): then unregisters, finishes
/// what is in flight, says goodbye and returns 0. Returns 1 on a fatal refusal (bad token or
/// protocol version) or when `max_retries` connection attempts failed in a row.
int serve_worker(Engine& engine, const WorkerOptions& options = {});

/// Asks a running serve_worker to drain and return (async-signal-safe).
void request_worker_stop();

}  // namespace qnllm
