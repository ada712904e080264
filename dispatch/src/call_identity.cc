#include "framekit/dispatch/internal/call_identity.h"

#include <algorithm>
#include <string>
#include <variant>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/ctx/caller.h"
#include "framekit/dispatch/function_executor.h"

namespace framekit::dispatch_internal {
namespace {

using base_internal::Echo;

bool TraceIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == ':' || c == '-';
}

bool CallerChar(char c) { return TraceIdChar(c) || c == '@' || c == '+'; }

// The string value of option `key`, checked: nullopt when absent.
absl::Status ReadBounded(const Options& options, std::string_view key, std::size_t max_bytes,
                         bool (*allowed)(char), std::optional<std::string_view>& out) {
  const OptionValue* value = options.Get(key);
  if (value == nullptr) return absl::OkStatus();
  const absl::string_view name(key.data(), key.size());
  const std::string* text = std::get_if<std::string>(value);
  if (text == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("option \"", name, "\" must be a string"));
  }
  if (text->empty() || text->size() > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("option \"", name, "\" must be 1-", max_bytes, " bytes, not ", text->size()));
  }
  if (!std::all_of(text->begin(), text->end(), allowed)) {
    return absl::InvalidArgumentError(absl::StrCat("option \"", name, "\" = \"", Echo(*text),
                                                   "\" holds a character it does not allow"));
  }
  out = *text;
  return absl::OkStatus();
}

}  // namespace

absl::Status ReadCallIdentity(const Frame& frame, const Options& options, bool allow_caller_option,
                              CallIdentity& identity) {
  using dispatch::kCallerOption;
  using dispatch::kTraceIdOption;
  if (absl::Status s =
          ReadBounded(options, kTraceIdOption, kMaxTraceIdBytes, TraceIdChar, identity.trace_id);
      !s.ok()) {
    return s;
  }
  if (absl::Status s =
          ReadBounded(options, kCallerOption, kMaxCallerBytes, CallerChar, identity.caller);
      !s.ok()) {
    return s;
  }
  if (!identity.caller.has_value()) return absl::OkStatus();
  if (CallerOf(frame) != nullptr) {
    return absl::PermissionDeniedError(
        "option \"caller\": the call's frame carries a caller already; an option cannot "
        "replace it");
  }
  if (!allow_caller_option) {
    return absl::PermissionDeniedError(
        "option \"caller\": naming the caller by option is not allowed (allow_caller_option)");
  }
  return absl::OkStatus();
}

absl::Status AppendCallIdentity(const CallIdentity& identity, PairList& pairs) {
  if (identity.caller.has_value()) {
    const bool resolved = std::any_of(pairs.begin(), pairs.end(),
                                      [](const Pair& p) { return p.As(CallerKey()) != nullptr; });
    if (resolved) {
      return absl::PermissionDeniedError(
          "option \"caller\": a frame resolver set the caller; an option cannot replace it");
    }
    pairs.push_back(Pair::Of(CallerKey(), CallerContext{.user_id = std::string(*identity.caller)}));
  }
  if (identity.trace_id.has_value()) {
    pairs.push_back(Pair::Of(dispatch::TraceIdKey(), std::string(*identity.trace_id)));
  }
  return absl::OkStatus();
}

}  // namespace framekit::dispatch_internal
