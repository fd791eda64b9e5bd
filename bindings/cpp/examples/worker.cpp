// worker.cpp: qnllm-cpp-worker, the C++ reference engine served to a hub.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

#include <qnllm/qnllm.hpp>

namespace {
int usage() {
    std::fprintf(stderr,
                 "usage: qnllm-cpp-worker --connect ADDR [--model seed:N|FILE] [--name NAME]\n"
                 "                        [--token T] [--max-in-flight N] [--threads N]\n"
                 "                        [--max-retries N] [--quiet] [--teacher]\n");
    return 2;
}
}  // namespace

int main(int argc, char** argv) {
    qnllm::WorkerOptions o;
    std::string model = "seed:1";
    o.name = "cpp-worker-" + std::to_string(::getpid());
    if (const char* t = std::getenv("QNLLM_TOKEN")) o.token = t;
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "%s needs a value\n", a.c_str());
                std::exit(usage());
            }
            return argv[++i];
        };
        try {
            if (a == "--connect") o.connect = value();
            else if (a == "--model") model = value();
            else if (a == "--name") o.name = value();
            else if (a == "--token") o.token = value();
            else if (a == "--max-in-flight") o.max_in_flight = static_cast<std::uint32_t>(std::stoul(value()));
            else if (a == "--threads") o.threads = static_cast<unsigned>(std::stoul(value()));
            else if (a == "--max-retries") o.max_retries = std::stoi(value());
            else if (a == "--quiet") o.verbose = false;
            else if (a == "--teacher") o.teacher = true;
            else if (a == "--help" || a == "-h") return usage() - 2;
            else {
                std::fprintf(stderr, "unknown argument %s\n", a.c_str());
                return usage();
            }
        } catch (const std::logic_error&) {
            std::fprintf(stderr, "%s: not a number\n", a.c_str());
            return usage();
        }
    }
    try {
        qnllm::ReferenceEngine engine(qnllm::Model::open(model));
        return qnllm::serve_worker(engine, o);
    } catch (const qnllm::EngineError& e) {
        std::fprintf(stderr, "qnllm-cpp-worker: %s\n", e.what());
        return 1;
    }
}
