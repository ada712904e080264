// The identity options of a call ("caller", "trace_id"), read and checked the same way by
// FunctionExecutor and ProcessManager. Options usually come from requests: an option must never
// replace an identity the frame already carries, and what it names is bounded and restricted
// before it reaches a frame, a record or a log.
#ifndef FRAMEKIT_DISPATCH_INTERNAL_CALL_IDENTITY_H_
#define FRAMEKIT_DISPATCH_INTERNAL_CALL_IDENTITY_H_

#include <cstddef>
#include <optional>
#include <string_view>

#include "absl/status/status.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/ctx/pair.h"

namespace framekit::dispatch_internal {

// Longest caller id and trace id an option may name.
inline constexpr std::size_t kMaxCallerBytes = 128;
inline constexpr std::size_t kMaxTraceIdBytes = 128;

// The identity options of one call, checked; views into the call's options.
struct CallIdentity {
  std::optional<std::string_view> caller;
  std::optional<std::string_view> trace_id;
};

// Reads and checks `options`' "caller" and "trace_id" for a call whose forked frame is `frame`:
//   InvalidArgument    either is not a string, or is empty, longer than 128 bytes, or holds a
//                      byte outside its charset (trace id [A-Za-z0-9._:-], caller
//                      [A-Za-z0-9._:@+-]); the message echoes at most an escaped prefix;
//   PermissionDenied   "caller" where `frame` already carries a caller (the frame's wins: the
//                      request tried to claim an identity), or where `allow_caller_option` is
//                      false.
absl::Status ReadCallIdentity(const Frame& frame, const Options& options, bool allow_caller_option,
                              CallIdentity& identity);

// Appends the pairs of `identity` to `pairs`, after the resolvers' pairs. PermissionDenied when
// `identity` names a caller and one of `pairs` already sets one (a resolver decided who calls).
absl::Status AppendCallIdentity(const CallIdentity& identity, PairList& pairs);

}  // namespace framekit::dispatch_internal

#endif  // FRAMEKIT_DISPATCH_INTERNAL_CALL_IDENTITY_H_
