// The hash and equality of FunctionExecutor's function table (internal; a header so that tests
// reach them directly: a broken equality hides behind the hash in a whole-table test).
#ifndef FRAMEKIT_DISPATCH_INTERNAL_FUNCTION_NAMES_H_
#define FRAMEKIT_DISPATCH_INTERNAL_FUNCTION_NAMES_H_

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "absl/strings/string_view.h"

namespace framekit::dispatch_internal {

// Function names are short: hashed inline, a word at a time. absl::Hash's out-of-line
// combine and its equality's memcmp call were 15% of an Invoke's overhead. The names are the
// application's (Register's), so a weak hash cannot be flooded by callers: a caller's
// unknown name costs its own lookup one probe sequence.
struct NameHash {
  static std::uint64_t Mix(std::uint64_t h) {
    h ^= h >> 33;  // MurmurHash3's 64-bit finaliser
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
  }
  std::size_t operator()(absl::string_view name) const noexcept {
    const char* p = name.data();
    std::size_t n = name.size();
    std::uint64_t h = 0x9e3779b97f4a7c15ULL ^ n;
    for (; n >= 8; n -= 8, p += 8) {
      std::uint64_t word;
      std::memcpy(&word, p, 8);
      h = (h ^ word) * 0x100000001b3ULL;
      h ^= h >> 29;
    }
    std::uint64_t tail = 0;
    if (n >= 4) {
      std::uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + n - 4, 4);
      tail = (std::uint64_t{hi} << 32) | lo;
    } else if (n > 0) {
      tail = (std::uint64_t{static_cast<unsigned char>(p[0])} << 16) |
             (std::uint64_t{static_cast<unsigned char>(p[n / 2])} << 8) |
             static_cast<unsigned char>(p[n - 1]);
    }
    return Mix(h ^ tail);
  }
};
struct NameEq {
  template <class T>
  static T Load(const char* p) noexcept {
    T word;
    std::memcpy(&word, p, sizeof(T));
    return word;
  }
  bool operator()(absl::string_view a, absl::string_view b) const noexcept {
    if (a.size() != b.size()) return false;
    // Names up to 16 bytes compare inline: two overlapping loads of each cover 4 to 16 bytes (a
    // byte loop cost 7 instructions a byte), shorter ones byte by byte; memcmp beyond.
    const std::size_t n = a.size();
    const char* x = a.data();
    const char* y = b.data();
    if (n >= 8 && n <= 16) {
      return Load<std::uint64_t>(x) == Load<std::uint64_t>(y) &&
             Load<std::uint64_t>(x + n - 8) == Load<std::uint64_t>(y + n - 8);
    }
    if (n >= 4 && n < 8) {
      return Load<std::uint32_t>(x) == Load<std::uint32_t>(y) &&
             Load<std::uint32_t>(x + n - 4) == Load<std::uint32_t>(y + n - 4);
    }
    if (n < 4) {
      for (std::size_t i = 0; i < n; ++i) {
        if (x[i] != y[i]) return false;
      }
      return true;
    }
    return std::memcmp(x, y, n) == 0;
  }
};

}  // namespace framekit::dispatch_internal

#endif  // FRAMEKIT_DISPATCH_INTERNAL_FUNCTION_NAMES_H_
