// AsAbsl / AsStd: the one bridge between std::string_view and absl::string_view.
//
// Debian 12's abseil (20220623) is built without ABSL_USES_STD_STRING_VIEW, so
// absl::string_view is its own type and the project's std::string_view values must be
// converted where they meet abseil (StrCat, Status payload URLs, flat_hash_map lookups).
// Every module uses this helper instead of spelling the conversion out.
//
// AppendUint32Le: the 4-byte little-endian length every wire format of the project writes.
#ifndef FRAMEKIT_BASE_INTERNAL_STRINGS_H_
#define FRAMEKIT_BASE_INTERNAL_STRINGS_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/strings/string_view.h"

namespace framekit::base_internal {

// `s` as an absl::string_view over the same characters. No copy; `s`'s storage must outlive
// the result.
constexpr absl::string_view AsAbsl(std::string_view s) noexcept {
  return absl::string_view(s.data(), s.size());
}

// `s` as a std::string_view over the same characters (for example an absl::Status message).
constexpr std::string_view AsStd(absl::string_view s) noexcept {
  return std::string_view(s.data(), s.size());
}

// Appends `v` to `out` as 4 bytes, least significant first, in one append.
inline void AppendUint32Le(std::string& out, std::uint32_t v) {
  const char le[4] = {static_cast<char>(v & 0xff), static_cast<char>((v >> 8) & 0xff),
                      static_cast<char>((v >> 16) & 0xff), static_cast<char>((v >> 24) & 0xff)};
  out.append(le, 4);
}

}  // namespace framekit::base_internal

#endif  // FRAMEKIT_BASE_INTERNAL_STRINGS_H_
