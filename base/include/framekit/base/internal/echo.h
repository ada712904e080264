// Echo: a bounded, printable rendering of an untrusted string (an option key or value, a name)
// for an error message. A hostile caller controls these strings; an error echoing them whole
// would let it write megabytes, newlines or terminal escapes into every log that records it.
#ifndef FRAMEKIT_BASE_INTERNAL_ECHO_H_
#define FRAMEKIT_BASE_INTERNAL_ECHO_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace framekit::base_internal {

// The longest prefix of an untrusted string an error message echoes.
inline constexpr std::size_t kEchoBytes = 48;

// At most `max_bytes` bytes of `text`, C-escaped (control bytes, quotes, backslashes and
// non-ASCII bytes come out as \n, \", \\, \xff), then "...(N bytes)" when `text` was cut.
// The result never holds a control byte and is at most 4 * max_bytes + 32 bytes long.
inline std::string Echo(std::string_view text, std::size_t max_bytes = kEchoBytes) {
  const bool cut = text.size() > max_bytes;
  std::string out = absl::CHexEscape(absl::string_view(text.data(), cut ? max_bytes : text.size()));
  if (cut) absl::StrAppend(&out, "...(", text.size(), " bytes)");
  return out;
}

}  // namespace framekit::base_internal

#endif  // FRAMEKIT_BASE_INTERNAL_ECHO_H_
