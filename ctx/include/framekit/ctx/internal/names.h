// The one name grammar for everything a host registers by name (functions, processes, frame
// resolvers, interceptors), and the bounded echo of user input in error messages.
// NOTE: temporary home; the base/ module takes it over (base/internal), and the executor's own
// copy in function_executor.cc is to be replaced by this one.
#ifndef FRAMEKIT_CTX_INTERNAL_NAMES_H_
#define FRAMEKIT_CTX_INTERNAL_NAMES_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace framekit::ctx_internal {

inline constexpr std::size_t kMaxNameLength = 128;
inline constexpr std::size_t kEchoPrefix = 64;

// 1-128 of [A-Za-z0-9_.-], starting with a letter or a digit.
constexpr bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  const auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(name.front())) return false;
  for (char c : name) {
    if (!alnum(c) && c != '_' && c != '.' && c != '-') return false;
  }
  return true;
}

// `input` for an error message: at most kEchoPrefix bytes, then "..." when it was longer;
// control and non-ASCII bytes as \xNN, so a message stays one printable line.
std::string EchoPrefix(std::string_view input);

// "KIND name \"ECHO\" is invalid: 1-128 of [A-Za-z0-9_.-], starting with a letter or digit".
std::string InvalidNameMessage(std::string_view kind, std::string_view name);

}  // namespace framekit::ctx_internal

#endif  // FRAMEKIT_CTX_INTERNAL_NAMES_H_
