#include "framekit/ctx/caller.h"

#include <utility>

namespace framekit {

const Key<CallerContext>& CallerKey() {
  static const Key<CallerContext> key{"framekit.caller", /*inherit=*/true};
  return key;
}

Frame WithCaller(const Frame& frame, CallerContext caller) {
  return frame.With(CallerKey(), std::move(caller));
}

const CallerContext* CallerOf(const Frame& frame) { return frame.Find(CallerKey()); }

}  // namespace framekit
