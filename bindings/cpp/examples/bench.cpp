// bench.cpp: qnllm-cpp-bench, the C++ reference engine's `reason` at the default size per
// kernel, p50 and p99 per call, sampled like `cargo bench -p qnllm-engine` (QNLLM_BENCH_MS).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <qnllm/qnllm.hpp>

int main() {
    using Clock = std::chrono::steady_clock;
    const char* env = std::getenv("QNLLM_BENCH_MS");
    const long ms = env ? std::atol(env) : 1000;
    auto xs = qnllm::reference_inputs(7, 64, 768);
    for (qnllm::Kernel k : {qnllm::Kernel::Scalar, qnllm::Kernel::Avx2}) {
        qnllm::Model m = qnllm::Model::from_seed(1);
        if (!m.set_kernel(k)) continue;
        std::uint64_t sink = 0;
        auto one = [&](std::size_t i) {
            sink += m.reason(qnllm::span<const float>(xs.data() + (i % 64) * 768, 768)).label;
        };
        for (std::size_t i = 0; i < 10; ++i) one(i);
        std::vector<double> times;
        auto start = Clock::now();
        for (std::size_t i = 0;
             Clock::now() - start < std::chrono::milliseconds(ms) || times.size() < 20; ++i) {
            auto t = Clock::now();
            one(i);
            times.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
        }
        std::sort(times.begin(), times.end());
        auto q = [&](double p) {
            return times[static_cast<std::size_t>(static_cast<double>(times.size() - 1) * p + 0.5)];
        };
        std::printf("reason, cpp %-6s kernel:   p50 %8.2f µs  p99 %8.2f µs  (%zu calls, checksum %llu)\n",
                    qnllm::kernel_name(k), q(0.5), q(0.99), times.size(),
                    static_cast<unsigned long long>(sink));
    }
    return 0;
}
