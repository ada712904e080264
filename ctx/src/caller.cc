#include "framekit/ctx/caller.h"

#include <utility>

namespace framekit {

std::string CallerContext::DebugString() const {
  std::string out = "caller{";
  const auto add = [&out](const char* label, const std::string& value) {
    if (value.empty()) return;
    if (out.back() != '{') out.append(", ");
    out.append(label).append("=").append(value);
  };
  add("user", user_id);
  add("role", role);
  add("tenant", tenant_id);
  add("email", email);
  std::string joined;
  for (const std::string& group : groups) joined.append(joined.empty() ? "" : "|").append(group);
  add("groups", joined);
  out.push_back('}');
  return out;
}

const Key<CallerContext>& CallerKey() {
  static const Key<CallerContext> key{"framekit.caller", /*inherit=*/true};
  return key;
}

Frame WithCaller(const Frame& frame, CallerContext caller) {
  return frame.With(CallerKey(), std::move(caller));
}

const CallerContext* CallerOf(const Frame& frame) { return frame.Find(CallerKey()); }

}  // namespace framekit
