// bench.cpp: qnllm-cpp-bench, the C++ reference engine's reason time (scalar kernel) per call.
#include <chrono>
#include <cstdio>
#include <string>

#include <qnllm/qnllm.hpp>

int main(int argc, char** argv) {
    std::size_t n = argc > 1 ? std::stoul(argv[1]) : 2000;
    qnllm::Model m = qnllm::Model::from_seed(1);
    auto xs = qnllm::reference_inputs(0, 64, 768);
    std::uint64_t sink = 0;
    for (std::size_t i = 0; i < 50; ++i) sink += m.reason(qnllm::span<const float>(xs.data() + (i % 64) * 768, 768)).label;
    auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < n; ++i) sink += m.reason(qnllm::span<const float>(xs.data() + (i % 64) * 768, 768)).label;
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / static_cast<double>(n);
    std::printf("cpp reason (scalar) %.2f us/call over %zu calls (checksum %llu)\n", us, n,
                static_cast<unsigned long long>(sink));
    return 0;
}
