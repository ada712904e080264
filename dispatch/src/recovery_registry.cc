#include "framekit/dispatch/recovery_registry.h"

#include <cxxabi.h>

#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/internal/log_format.h"
#include "spdlog/spdlog.h"

namespace framekit::dispatch {

using dispatch_internal::Quote;

// Owns the batch a run took out, and merges its survivors back ahead of new registrations when
// the run ends, normally or by thread cancellation unwinding through it.
class RecoveryRegistry::RunScope {
 public:
  RunScope(RecoveryRegistry& registry, std::vector<Entry> batch)
      : registry_(registry), batch_(std::move(batch)) {}
  RunScope(const RunScope&) = delete;
  RunScope& operator=(const RunScope&) = delete;
  ~RunScope() {
    std::vector<Entry> merged;
    merged.reserve(batch_.size());
    for (Entry& entry : batch_) {
      if (!entry.evicted) merged.push_back(std::move(entry));
    }
    {
      std::lock_guard<std::mutex> lock(registry_.mu_);
      merged.insert(merged.end(), std::make_move_iterator(registry_.handlers_.begin()),
                    std::make_move_iterator(registry_.handlers_.end()));
      registry_.handlers_ = std::move(merged);
      registry_.in_flight_ = 0;
      registry_.in_flight_names_.clear();
      registry_.running_ = false;
      registry_.runner_ = std::thread::id();
      ++registry_.runs_;
      registry_.evictions_ += evicted_;
    }
    registry_.run_done_.notify_all();
  }

  std::vector<Entry>& batch() { return batch_; }
  void CountEviction() { ++evicted_; }

 private:
  RecoveryRegistry& registry_;
  std::vector<Entry> batch_;
  std::uint64_t evicted_ = 0;
};

RecoveryRegistry::RecoveryRegistry(RecoveryRegistryOptions options)
    : options_(std::move(options)) {}

std::size_t RecoveryRegistry::Register(std::string name, RecoveryHandler handler) {
  std::lock_guard<std::mutex> lock(mu_);
  if (handler) {
    handlers_.push_back(
        Entry{std::move(name), std::move(handler), FaultIntensity(options_.eviction), false});
  }
  return handlers_.size() + in_flight_;
}

std::size_t RecoveryRegistry::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return handlers_.size() + in_flight_;
}

std::vector<std::string> RecoveryRegistry::names() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out = in_flight_names_;
  for (const Entry& entry : handlers_) out.push_back(entry.name);
  return out;
}

std::uint64_t RecoveryRegistry::runs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return runs_;
}

std::uint64_t RecoveryRegistry::skipped_runs() const {
  std::lock_guard<std::mutex> lock(mu_);
  return skipped_runs_;
}

std::uint64_t RecoveryRegistry::evictions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evictions_;
}

std::vector<int> RecoveryRegistry::RunAll() {
  FaultMonitor& monitor = options_.monitor != nullptr ? *options_.monitor : DefaultFaultMonitor();
  std::vector<Entry> batch;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (running_ && runner_ == std::this_thread::get_id()) {
      ++skipped_runs_;
      lock.unlock();
      if (auto log = monitor.logger()) {
        log->warn("recovery run skipped: RunAll called from inside a recovery handler");
      }
      return {};
    }
    run_done_.wait(lock, [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !running_; });
    running_ = true;
    runner_ = std::this_thread::get_id();
    batch.swap(handlers_);
    in_flight_ = batch.size();
    for (const Entry& entry : batch) in_flight_names_.push_back(entry.name);
  }
  RunScope scope(*this, std::move(batch));

  std::vector<int> recovered;
  for (Entry& entry : scope.batch()) {
    try {
      absl::StatusOr<std::vector<int>> result = entry.handler();
      if (result.ok()) {
        recovered.insert(recovered.end(), result->begin(), result->end());
      } else {
        if (auto log = monitor.logger())
          log->warn("recovery handler failed name={} status={}", Quote(entry.name),
                    Quote(StatusToString(result.status())));
      }
    } catch (...) {
      ::framekit::RethrowIfForcedUnwind();
      const FaultReport report = dispatch_internal::CatchFault(ExtRef(entry.name, monitor),
                                                               Phase::kPoll, "recovery handler");
      const ExtensionPanic& panic = report.panic;
      const FaultIntensity::Outcome outcome = entry.intensity.Record(FaultNow(options_.clock));
      if (outcome.verdict == FaultVerdict::kEvict) {
        entry.evicted = true;
        scope.CountEviction();
        if (auto log = monitor.logger()) {
          log->error("recovery handler evicted name={} faults={} type={} message={} stack={}",
                     Quote(entry.name), outcome.faults_in_window, Quote(panic.type),
                     Quote(panic.message), Quote(panic.stack));
        }
      }
    }
  }
  return recovered;
}

}  // namespace framekit::dispatch
