// RecoveryRegistry: ticked recovery handlers, each run once per tick, isolated from each other.
//
// A recovery handler looks for work that was left half-done (a slot whose owner crashed, a
// lease that expired) and repairs it, returning the indices of the slots it recovered. The host
// calls RunAll() on a timer. Handlers run outside the registry's lock: RunAll swaps the list
// out, runs it, then merges the survivors back ahead of anything registered meanwhile. A handler
// that throws is evicted according to a FaultPolicy (by default on its first fault) and the
// eviction is logged with the handler's name and the exception.
//
// Example:
//   framekit::dispatch::RecoveryRegistry recovery;
//   recovery.Register("mailbox.leases", [&]() -> absl::StatusOr<std::vector<int>> {
//     return leases.ReclaimExpired();
//   });
//   // on every tick:
//   for (int slot : recovery.RunAll()) Reopen(slot);
#ifndef FRAMEKIT_DISPATCH_RECOVERY_REGISTRY_H_
#define FRAMEKIT_DISPATCH_RECOVERY_REGISTRY_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/fault_policy.h"

namespace framekit::dispatch {

// A recovery handler: returns the indices of the slots it recovered on this tick (possibly
// none), or its own error. A non-OK status is logged at warning level and the handler stays
// registered (it may succeed next tick); only a throw counts as a fault.
// Re-entrancy: a handler may call Register, size(), names() and the counters of the registry
// that runs it; a handler registered during a run first runs on the next run. A RunAll call from
// inside a handler does not run anything: it returns an empty result and is counted in
// skipped_runs() (waiting would deadlock).
using RecoveryHandler = std::function<absl::StatusOr<std::vector<int>>()>;

struct RecoveryRegistryOptions {
  // Faults are reported here (extension = the handler's name, phase = poll: a recovery handler
  // is ticked like a poll). Null: DefaultFaultMonitor(). Must outlive the registry.
  FaultMonitor* monitor = nullptr;
  // When a throwing handler is evicted: once the policy's verdict is kEvict. The default evicts
  // on the first fault. A policy whose on_trip is not kEvict never evicts.
  FaultPolicy eviction{
      .max_faults = 1, .window = std::chrono::hours(1), .on_trip = FaultVerdict::kEvict};
  // Injectable clock for the eviction policy. Empty: the steady clock.
  FaultClock clock;
};

// Thread-safe. One internal mutex guards the handler list and counters; it is never held while
// a handler runs or while a record is logged. At most one RunAll runs at a time: a RunAll that
// overlaps another one from a different thread waits for it to finish and then runs (so no tick
// is lost); one from inside a handler is skipped and counted.
class RecoveryRegistry {
 public:
  RecoveryRegistry() : RecoveryRegistry(RecoveryRegistryOptions{}) {}
  explicit RecoveryRegistry(RecoveryRegistryOptions options);
  RecoveryRegistry(const RecoveryRegistry&) = delete;
  RecoveryRegistry& operator=(const RecoveryRegistry&) = delete;

  // Appends `handler` under `name` (names are for logs and metrics; duplicates are allowed) and
  // returns the number of handlers after the insert, those of a run in progress included.
  // NOTE: an empty `handler` is not registered (the current size is returned).
  std::size_t Register(std::string name, RecoveryHandler handler);

  // The number of registered handlers, including those taken out by a run in progress (never a
  // transient 0 while a run holds them) and not yet evicted by it.
  std::size_t size() const;

  // The handlers' names in run order.
  std::vector<std::string> names() const;

  // Runs every handler registered before the call once, in registration order, and returns the
  // concatenation of the slot indices they recovered. Evicts handlers whose fault policy says so.
  // Never throws, except thread cancellation, which leaves the registry consistent (the handlers
  // not yet run are kept).
  std::vector<int> RunAll();

  // Completed runs.
  std::uint64_t runs() const;
  // RunAll calls from inside a handler, which ran nothing.
  std::uint64_t skipped_runs() const;
  // Handlers evicted so far.
  std::uint64_t evictions() const;

 private:
  struct Entry {
    std::string name;
    RecoveryHandler handler;
    FaultIntensity intensity;
    bool evicted = false;
  };
  class RunScope;

  const RecoveryRegistryOptions options_;
  mutable std::mutex mu_;
  std::condition_variable run_done_;
  std::vector<Entry> handlers_ ABSL_GUARDED_BY(mu_);  // not being run; new registrations
  std::size_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;    // taken out by the current run
  std::vector<std::string> in_flight_names_ ABSL_GUARDED_BY(mu_);
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id runner_ ABSL_GUARDED_BY(mu_);
  std::uint64_t runs_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t skipped_runs_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t evictions_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_RECOVERY_REGISTRY_H_
