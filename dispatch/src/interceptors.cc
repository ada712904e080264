#include "framekit/dispatch/interceptors.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/base/internal/name.h"
#include "framekit/dispatch/guard.h"

namespace framekit::dispatch {
namespace {

absl::Status SealedError() {
  return absl::FailedPreconditionError(
      "interceptor registry is sealed: no interceptor can be added or removed");
}

}  // namespace

absl::Status Next::operator()(Call& call) const {
  if (at_ == end_) return terminal_(call);
  const dispatch_internal::InterceptorEntry& entry = **at_;
  const Next rest(at_ + 1, end_, terminal_, monitor_);
  return CallStatus(ExtRef(entry.guard_name, *monitor_), Phase::kInvoke,
                    [&]() -> absl::Status { return entry.fn(call, rest); });
}

Interceptors::Interceptors(FaultMonitor* monitor)
    : monitor_(monitor != nullptr ? monitor : &DefaultFaultMonitor()),
      live_snapshots_(std::make_shared<std::atomic<std::size_t>>(0)) {
  current_ = MakeSnapshot({});
}

std::shared_ptr<const Interceptors::Snapshot> Interceptors::MakeSnapshot(Snapshot snapshot) const {
  // The counter is shared with the deleter, so a snapshot a call still holds may be freed after
  // the registry (a misuse, but not a crash).
  std::shared_ptr<std::atomic<std::size_t>> live = live_snapshots_;
  live->fetch_add(1, std::memory_order_relaxed);
  return std::shared_ptr<const Snapshot>(new Snapshot(std::move(snapshot)),
                                         [live](const Snapshot* s) {
                                           delete s;
                                           live->fetch_sub(1, std::memory_order_relaxed);
                                         });
}

std::shared_ptr<const Interceptors::Snapshot> Interceptors::Load() const {
  std::lock_guard<std::mutex> lock(read_mu_);
  return current_;
}

std::shared_ptr<const Interceptors::Snapshot> Interceptors::Publish(
    std::shared_ptr<const Snapshot> next) {
  const bool empty = next->entries.empty();
  {
    std::lock_guard<std::mutex> lock(read_mu_);
    current_.swap(next);
  }
  empty_.store(empty, std::memory_order_release);
  return next;
}

absl::Status Interceptors::Register(std::string name, int order, InterceptorFn fn) {
  if (!base_internal::IsValidName(name)) {
    return absl::InvalidArgumentError(base_internal::InvalidNameMessage("interceptor", name));
  }
  if (!fn) {
    return absl::InvalidArgumentError(absl::StrCat("interceptor \"", name, "\" has no function"));
  }
  auto entry = std::make_shared<dispatch_internal::InterceptorEntry>();
  entry->guard_name = absl::StrCat("interceptor ", name);
  entry->name = std::move(name);
  entry->order = order;
  entry->fn = std::move(fn);

  std::shared_ptr<const Snapshot> retired;
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (sealed_) return SealedError();
    const std::shared_ptr<const Snapshot> current = Load();
    for (const Entry* e : current->entries) {
      if (e->name == entry->name) {
        return absl::AlreadyExistsError(
            absl::StrCat("interceptor \"", entry->name, "\" is registered already"));
      }
    }
    Snapshot next;
    next.owned = current->owned;
    next.owned.push_back(entry);
    std::sort(next.owned.begin(), next.owned.end(), [](const auto& a, const auto& b) {
      if (a->order != b->order) return a->order < b->order;
      return a->name < b->name;
    });
    next.entries.reserve(next.owned.size());
    for (const auto& e : next.owned) next.entries.push_back(e.get());
    retired = Publish(MakeSnapshot(std::move(next)));
  }
  return absl::OkStatus();  // `retired` is dropped here, with no lock held
}

absl::Status Interceptors::Unregister(std::string_view name) {
  std::shared_ptr<const Snapshot> retired;
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    if (sealed_) return SealedError();
    const std::shared_ptr<const Snapshot> current = Load();
    Snapshot next;
    next.owned.reserve(current->owned.size());
    for (const auto& e : current->owned) {
      if (e->name != name) next.owned.push_back(e);
    }
    if (next.owned.size() == current->owned.size()) {
      return absl::NotFoundError(
          absl::StrCat("interceptor \"", base_internal::Echo(name), "\" is not registered"));
    }
    next.entries.reserve(next.owned.size());
    for (const auto& e : next.owned) next.entries.push_back(e.get());
    retired = Publish(MakeSnapshot(std::move(next)));
  }
  return absl::OkStatus();
}

void Interceptors::Seal() {
  std::lock_guard<std::mutex> lock(write_mu_);
  sealed_ = true;
}

std::vector<std::string> Interceptors::names() const {
  std::vector<std::string> out;
  for (const auto* entry : Load()->entries) out.push_back(entry->name);
  return out;
}

}  // namespace framekit::dispatch
