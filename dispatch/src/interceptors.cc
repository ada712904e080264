#include "framekit/dispatch/interceptors.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/dispatch/guard.h"

namespace framekit::dispatch {

absl::Status Next::operator()(Call& call) const {
  if (at_ == end_) return terminal_(call);
  const dispatch_internal::InterceptorEntry& entry = **at_;
  const Next rest(at_ + 1, end_, terminal_, monitor_);
  return CallStatus(ExtRef(entry.guard_name, *monitor_), Phase::kInvoke,
                    [&]() -> absl::Status { return entry.fn(call, rest); });
}

Interceptors::Interceptors(FaultMonitor* monitor)
    : registry_("interceptor"), monitor_(monitor != nullptr ? monitor : &DefaultFaultMonitor()) {}

absl::Status Interceptors::Register(std::string name, int order, InterceptorFn fn) {
  if (name.empty()) return absl::InvalidArgumentError("interceptor name is empty");
  if (!fn) {
    return absl::InvalidArgumentError(absl::StrCat("interceptor \"", name, "\" has no function"));
  }
  auto entry = std::make_unique<dispatch_internal::InterceptorEntry>();
  entry->guard_name = absl::StrCat("interceptor ", name);
  entry->name = std::move(name);
  entry->order = order;
  entry->fn = std::move(fn);
  absl::Status s = registry_.Mutate([&](auto& draft) { return draft.Add(std::move(entry)); });
  if (s.ok()) ++published_;
  return s;
}

absl::Status Interceptors::Unregister(std::string_view name) {
  absl::Status s = registry_.Mutate([&](auto& draft) { return draft.Remove(name); });
  if (s.ok()) ++published_;
  return s;
}

std::vector<std::string> Interceptors::names() const {
  std::vector<std::string> out;
  for (const auto* entry : registry_.Load()->entries) out.push_back(entry->name);
  return out;
}

}  // namespace framekit::dispatch
