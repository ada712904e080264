#include "framekit/ctx/internal/names.h"

#include "absl/strings/str_cat.h"

namespace framekit::ctx_internal {

std::string EchoPrefix(std::string_view input) {
  static constexpr char kHex[] = "0123456789abcdef";
  const std::string_view head = input.substr(0, kEchoPrefix);
  std::string out;
  out.reserve(head.size() + 3);
  for (char c : head) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f || c == '"' || c == '\\') {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else {
      out += c;
    }
  }
  if (input.size() > head.size()) out += "...";
  return out;
}

std::string InvalidNameMessage(std::string_view kind, std::string_view name) {
  const std::string echo = EchoPrefix(name);
  return absl::StrCat(absl::string_view(kind.data(), kind.size()), " name \"", echo,
                      "\" is invalid: use 1-128 of [A-Za-z0-9_.-], starting with a letter or digit");
}

}  // namespace framekit::ctx_internal
