#include "framekit/base/internal/name.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace framekit::base_internal {
namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

}  // namespace

bool IsValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength || !IsAlnum(name.front())) return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return IsAlnum(c) || c == '_' || c == '.' || c == '-'; });
}

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

}  // namespace framekit::base_internal
