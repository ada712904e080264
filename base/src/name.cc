#include "framekit/base/internal/name.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"

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

std::string InvalidNameMessage(std::string_view kind, std::string_view name) {
  const std::string echo = Echo(name);
  return absl::StrCat(
      absl::string_view(kind.data(), kind.size()), " name \"", echo,
      "\" is invalid: use 1-128 of [A-Za-z0-9_.-], starting with a letter or digit");
}

}  // namespace framekit::base_internal
