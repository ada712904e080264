// CallerContext: who is making a call, carried on the call's frame.
//
// Example:
//   framekit::Frame frame = framekit::WithCaller(parent, {.user_id = "u1", .tenant_id = "acme"});
//   if (const framekit::CallerContext* caller = framekit::CallerOf(frame)) {
//     Authorize(caller->role);
//   }
#ifndef FRAMEKIT_CTX_CALLER_H_
#define FRAMEKIT_CTX_CALLER_H_

#include <string>
#include <vector>

#include "framekit/ctx/frame.h"
#include "framekit/ctx/key.h"

namespace framekit {

// The identity of a call's originator. Empty fields are unknown.
struct CallerContext {
  // Default member initializers let callers name only the fields they know
  // (`{.user_id = "u1", .tenant_id = "acme"}`) without -Wmissing-field-initializers.
  std::string user_id = {};
  std::string role = {};
  std::string tenant_id = {};
  std::string email = {};
  std::vector<std::string> groups = {};

  // "caller{user=..., role=..., tenant=...}" (known fields only), for diagnostics.
  std::string DebugString() const;

  friend bool operator==(const CallerContext&, const CallerContext&) = default;
};

// The key the caller is stored under (inherited by forks: a nested call keeps its originator
// unless the dispatcher sets a new one).
const Key<CallerContext>& CallerKey();

// `frame` with `caller` set on it.
Frame WithCaller(const Frame& frame, CallerContext caller);
// The caller of `frame`, or nullptr when none was set.
const CallerContext* CallerOf(const Frame& frame);

}  // namespace framekit

#endif  // FRAMEKIT_CTX_CALLER_H_
