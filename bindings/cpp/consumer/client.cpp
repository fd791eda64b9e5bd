// client.cpp: the client snippet of docs/cpp.md, built against the installed SDK. Prints the
// result digest of reference input seed 4 and checks that 64 answers in flight and a batch agree.
#include <qnllm/qnllm.hpp>

#include <cstdio>
#include <future>
#include <vector>

int main(int argc, char** argv) {
    auto hub = qnllm::Client::connect(argc > 1 ? argv[1] : "127.0.0.1:9999");
    auto x = qnllm::reference_inputs(/*seed*/ 4, /*count*/ 1, /*inputs*/ 768);
    auto xs = qnllm::reference_inputs(/*seed*/ 4, /*count*/ 3, /*inputs*/ 768);
    qnllm::Reasoning r = hub->reason(x);                       // one round trip
    std::vector<std::future<qnllm::Reasoning>> many;
    for (int i = 0; i < 64; ++i) many.push_back(hub->reason_async(x));   // 64 in flight
    auto results = hub->batch(xs, 768);                        // one frame, results in order
    nlohmann::json m = hub->metrics();
    hub->ping();

    int bad = 0;
    for (auto& f : many) bad += f.get().result_digest != r.result_digest;
    bad += results.size() != 3 || results[0].result_digest != r.result_digest;
    bad += !m.contains("engines");
    std::printf("%s\n", qnllm::to_hex(r.result_digest).c_str());
    return bad == 0 ? 0 : 1;
}
