// qnllm/sha256.hpp: SHA-256 (FIPS 180-4), the hash behind model and result digests.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qnllm/common.hpp"

namespace qnllm {

/// Incremental SHA-256.
class Sha256 {
public:
    Sha256();
    void update(const void* data, std::size_t len);
    Digest finish();
    static Digest of(const void* data, std::size_t len);

private:
    void block(const std::uint8_t* p);
    std::uint32_t h_[8];
    std::uint8_t buf_[64];
    std::size_t used_ = 0;
    std::uint64_t total_ = 0;
};

}  // namespace qnllm
