// main.cpp: the worker snippet of docs/cpp.md, built against the installed SDK. MyEngine answers
// with the reference model seed:1, so its answers can be checked against `qnllm reason --json`.
#include <qnllm/qnllm.hpp>

#include <string>

struct MyEngine : qnllm::Engine {
    qnllm::Reasoning reason(std::span<const float> x) override;
};

qnllm::Reasoning MyEngine::reason(std::span<const float> x) {
    static const qnllm::Model model = qnllm::Model::from_seed(1);
    return model.reason(x);
}

int main(int argc, char** argv) {
    MyEngine e;
    if (argc > 1) return qnllm::serve_worker(e, {.connect = argv[1]});
    return qnllm::serve_worker(e, {.connect = "127.0.0.1:9999"});
}
