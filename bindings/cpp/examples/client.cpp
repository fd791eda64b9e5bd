// client.cpp: qnllm-cpp-client, reference encodings sent to a hub with many requests in flight;
// prints one JSON line per result (the fields of `qnllm reason --json` it can know).
#include <cstdio>
#include <deque>
#include <future>
#include <string>

#include <qnllm/qnllm.hpp>

int main(int argc, char** argv) {
    std::string connect = "127.0.0.1:9999";
    std::size_t count = 10, in_flight = 32, dim = 768;
    std::uint64_t seed = 0;
    bool metrics = false;
    for (int i = 1; i + 1 < argc || (i < argc && std::string(argv[i]) == "--metrics"); ++i) {
        std::string a = argv[i];
        if (a == "--metrics") { metrics = true; continue; }
        std::string v = argv[++i];
        if (a == "--connect") connect = v;
        else if (a == "--random") count = std::stoul(v);
        else if (a == "--seed") seed = std::stoull(v);
        else if (a == "--in-flight") in_flight = std::stoul(v);
        else if (a == "--dim") dim = std::stoul(v);
        else {
            std::fprintf(stderr, "usage: qnllm-cpp-client --connect ADDR [--random N] [--seed S] "
                                 "[--in-flight K] [--dim D] [--metrics]\n");
            return 2;
        }
    }
    try {
        auto client = qnllm::Client::connect(connect);
        client->ping();
        auto xs = qnllm::reference_inputs(seed, count, dim);
        std::deque<std::future<qnllm::Reasoning>> window;
        std::size_t next = 0, printed = 0;
        int failed = 0;
        while (printed < count) {
            while (next < count && window.size() < in_flight) {
                window.push_back(client->reason_async(qnllm::span<const float>(xs.data() + next * dim, dim)));
                ++next;
            }
            try {
                qnllm::Reasoning r = window.front().get();
                nlohmann::ordered_json j;
                j["index"] = printed;
                j["label"] = r.label;
                j["confidence"] = r.confidence;
                j["scores"] = r.scores;
                j["label_spikes"] = r.label_spikes;
                j["total_spikes"] = r.total_spikes;
                j["model_version"] = r.model_version;
                j["model_digest"] = qnllm::to_hex(r.model_digest);
                j["result_digest"] = qnllm::to_hex(r.result_digest);
                j["engine"] = r.engine;
                std::printf("%s\n", j.dump().c_str());
            } catch (const qnllm::RemoteError& e) {
                std::printf("{\"index\":%zu,\"error\":%s}\n", printed, nlohmann::json(e.what()).dump().c_str());
                ++failed;
            }
            window.pop_front();
            ++printed;
        }
        if (metrics) std::printf("%s\n", client->metrics().dump().c_str());
        return failed ? 1 : 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "qnllm-cpp-client: %s\n", e.what());
        return 1;
    }
}
