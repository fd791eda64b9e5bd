// qnllm/qnllm.hpp: the whole C++ SDK (protocol, reference engine, worker, client).
#pragma once

#include "qnllm/client.hpp"
#include "qnllm/common.hpp"
#include "qnllm/engine.hpp"
#include "qnllm/net.hpp"
#include "qnllm/protocol.hpp"
#include "qnllm/sha256.hpp"
#include "qnllm/worker.hpp"
