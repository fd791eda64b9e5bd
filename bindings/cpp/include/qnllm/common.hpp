// qnllm/common.hpp: the small vocabulary types every part of the SDK shares (views, digests,
// little-endian byte access).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#if __cplusplus >= 202002L
#include <span>
#endif

namespace qnllm {

#if __cplusplus >= 202002L
/// A read-only view of contiguous values (std::span under C++20).
template <class T>
using span = std::span<T>;
#else
/// A view of contiguous values: the part of C++20's std::span the SDK needs.
template <class T>
class span {
public:
    constexpr span() noexcept = default;
    constexpr span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}
    template <class U, class A>
    span(const std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
    template <class U, class A>
    span(std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}
    template <class U, std::size_t N>
    constexpr span(const std::array<U, N>& a) noexcept : data_(a.data()), size_(N) {}
    constexpr T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
    constexpr T* begin() const noexcept { return data_; }
    constexpr T* end() const noexcept { return data_ + size_; }
    constexpr span subspan(std::size_t offset, std::size_t count) const noexcept {
        return span(data_ + offset, count);
    }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};
#endif

/// A SHA-256 value (model digest, result digest).
using Digest = std::array<std::uint8_t, 32>;

/// 64 lowercase hex digits.
std::string to_hex(const Digest& d);
/// Parses 64 hex digits; false if `text` is not exactly that.
bool from_hex(const std::string& text, Digest& out);

namespace le {
inline std::uint16_t u16(const std::uint8_t* p) {
    return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline std::uint32_t u32(const std::uint8_t* p) {
    return static_cast<std::uint32_t>(p[0]) | (static_cast<std::uint32_t>(p[1]) << 8) |
           (static_cast<std::uint32_t>(p[2]) << 16) | (static_cast<std::uint32_t>(p[3]) << 24);
}
inline std::uint64_t u64(const std::uint8_t* p) {
    return static_cast<std::uint64_t>(u32(p)) | (static_cast<std::uint64_t>(u32(p + 4)) << 32);
}
inline float f32(const std::uint8_t* p) {
    std::uint32_t bits = u32(p);
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline void put_u8(std::vector<std::uint8_t>& out, std::uint8_t v) { out.push_back(v); }
inline void put_u16(std::vector<std::uint8_t>& out, std::uint16_t v) {
    out.push_back(static_cast<std::uint8_t>(v));
    out.push_back(static_cast<std::uint8_t>(v >> 8));
}
inline void put_u32(std::vector<std::uint8_t>& out, std::uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
inline void put_u64(std::vector<std::uint8_t>& out, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
inline void put_i32(std::vector<std::uint8_t>& out, std::int32_t v) {
    put_u32(out, static_cast<std::uint32_t>(v));
}
inline void put_f32(std::vector<std::uint8_t>& out, float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    put_u32(out, bits);
}
}  // namespace le

}  // namespace qnllm
