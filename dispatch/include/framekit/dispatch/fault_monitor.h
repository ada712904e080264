// FaultMonitor: where every isolated fault goes — one structured log record (rate-limited),
// exact counters, and the fault-intensity alarm.
//
// The guards of framekit/dispatch/guard.h report each fault they catch to a FaultMonitor: the
// process-wide DefaultFaultMonitor() unless the caller names its own. A monitor
//   - writes one spdlog record per fault: extension, phase, type, message, nested levels and the
//     throw-site stack, at error level, to the logger it was given or else to stderr (never
//     stdout, which belongs to the host);
//   - rate-limits those records per (extension, phase): at most one full record per
//     `record_interval`, the rest counted and summed up in one "suppressed N" record;
//   - counts every fault exactly per (extension, phase), readable as a snapshot or in the
//     Prometheus text exposition format;
//   - applies a FaultPolicy per extension: K faults within T raise an alarm (an error record
//     and the host's callback) once per episode, and yield the verdict dispatchers act on;
//   - keeps at most `max_extensions` extensions: the least recently faulted one is evicted
//     (its pending "suppressed N" summary written first), one entry per function across its
//     versions ("fn@v2" replaces "fn@v1"), and Forget drops a removed function's entries.
//
// Example:
//   framekit::dispatch::FaultMonitorOptions options;
//   options.logger = spdlog::stderr_color_mt("faults");
//   options.policy.max_faults = 5;
//   options.policy.window = std::chrono::seconds(10);
//   options.on_alarm = [](const framekit::dispatch::FaultAlarm& alarm) { Page(alarm.extension); };
//   framekit::dispatch::FaultMonitor monitor(std::move(options));
//   auto event = framekit::dispatch::CallPoll({"billing", monitor}, [&] { return ext.Poll(); });
//   std::string metrics = monitor.RenderPrometheus();
#ifndef FRAMEKIT_DISPATCH_FAULT_MONITOR_H_
#define FRAMEKIT_DISPATCH_FAULT_MONITOR_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/fault_policy.h"
#include "spdlog/logger.h"

namespace framekit::dispatch_internal {
struct FaultSummary;     // one pending "suppressed N" summary
struct FaultRecordPlan;  // what Report writes and raises after its locked step
}  // namespace framekit::dispatch_internal

namespace framekit::dispatch {

// The alarm raised when an extension reaches its fault intensity limit.
struct FaultAlarm {
  std::string extension;
  int faults = 0;                     // faults within the window (the policy's K)
  std::chrono::nanoseconds window{};  // the policy's T
  FaultVerdict verdict = FaultVerdict::kAlarm;
  ExtensionPanic last;  // the fault that tripped the limit
};

// The exact counts of one (extension, phase).
struct FaultCounter {
  std::string extension;
  Phase phase = Phase::kInvoke;
  std::uint64_t faults = 0;              // every fault reported, exactly
  std::uint64_t records_suppressed = 0;  // fault records the rate limit held back
  friend bool operator==(const FaultCounter&, const FaultCounter&) = default;
};

// What a guard learns about the fault it just caught.
struct FaultReport {
  ExtensionPanic panic;
  FaultVerdict verdict = FaultVerdict::kContinue;
};

struct FaultMonitorOptions {
  // Where records go. Null: framekit's own logger "framekit", writing to stderr. (Not
  // spdlog's default logger, which writes to stdout: a host's output must stay its own.)
  std::shared_ptr<spdlog::logger> logger;
  // Injectable clock for the rate limit and the fault policy. Empty: the steady clock.
  FaultClock clock;
  // At most one full fault record (with its stack) per (extension, phase) per interval.
  std::chrono::nanoseconds record_interval = std::chrono::seconds(1);
  // K faults within T on one extension raise an alarm.
  FaultPolicy policy;
  // Called once per episode, after the alarm record, on the thread that reported the fault and
  // with no monitor lock held.
  // Re-entrancy: it may call any FaultMonitor method. An exception it throws is logged and
  // swallowed: the alarm callback runs inside a guard's fault path.
  std::function<void(const FaultAlarm&)> on_alarm;
  // At most this many extensions are tracked (0 counts as 1). Reporting a new one past that
  // evicts the least recently faulted: its counters and fault-policy window are lost (counted
  // by evicted()), so an extension faulting again after eviction starts a fresh episode.
  std::size_t max_extensions = 1024;
};

// Thread-safe. Bookkeeping happens under one internal mutex held only for counter and window
// updates; records are written and the alarm callback is called after the lock is released, so
// a sink or a callback may report faults itself without deadlocking.
class FaultMonitor {
 public:
  FaultMonitor() : FaultMonitor(FaultMonitorOptions{}) {}
  explicit FaultMonitor(FaultMonitorOptions options);
  FaultMonitor(const FaultMonitor&) = delete;
  FaultMonitor& operator=(const FaultMonitor&) = delete;

  // Counts `panic`, writes its record unless the rate limit holds it back, applies the fault
  // policy (raising the alarm when an episode starts) and returns the verdict. `detail`, when
  // non-empty, is added to the record (the host function's name, the finalized id, ...).
  // Never throws: a failure to log is swallowed, since this runs on a guard's fault path.
  FaultVerdict Report(const ExtensionPanic& panic, std::string_view detail = {}) noexcept;

  // Writes the pending "suppressed N" summaries now (they are otherwise written just before the
  // next full record of the same extension and phase). For shutdown, and for tests.
  void FlushSuppressed() noexcept;

  // Every (extension, phase) that faulted, sorted by extension then phase.
  std::vector<FaultCounter> Counters() const;
  // Faults reported for one (extension, phase); 0 when none.
  std::uint64_t faults(std::string_view extension, Phase phase) const;
  // Alarms raised for `extension`; 0 when none.
  std::uint64_t alarms(std::string_view extension) const;

  // The counters in the Prometheus text exposition format (version 0.0.4):
  // framekit_faults_total{extension,phase}, framekit_fault_records_suppressed_total{extension,
  // phase} and framekit_fault_alarms_total{extension}.
  std::string RenderPrometheus() const;

  // Drops `extension`'s counters and window, and when `extension` has no "@", those of every
  // version "extension@..." too (what the executor reports a deployed version under). Writes
  // any pending "suppressed N" summary first. Returns whether anything was dropped. For a host
  // removing a function: the executor calls it on Remove.
  bool Forget(std::string_view extension);
  // Extensions tracked now: at most max_extensions.
  std::size_t extension_count() const;
  // Extensions dropped by the capacity bound or by a newer version (not by Forget).
  std::uint64_t evicted() const;
  // Every fault ever reported, of every extension and phase: monotonic, unaffected by eviction
  // and Forget (the per-extension counters are not).
  std::uint64_t total_faults() const;

  // The logger records go to (the default logger when none was given).
  std::shared_ptr<spdlog::logger> logger() const;
  // The monitor's clock, read.
  std::chrono::steady_clock::time_point now() const { return FaultNow(options_.clock); }

 private:
  // One slot per Phase, derived from the enum so that a new phase cannot be left out.
  static constexpr std::size_t kPhases = kPhaseCount;
  struct PhaseState {
    std::uint64_t faults = 0;
    std::uint64_t suppressed_total = 0;
    std::uint64_t suppressed_pending = 0;
    bool has_record = false;
    std::chrono::steady_clock::time_point last_record{};
    std::chrono::steady_clock::time_point pending_since{};
  };
  struct ExtensionState {
    std::array<PhaseState, kPhases> phases;
    FaultIntensity intensity;
    std::uint64_t alarms = 0;
    std::chrono::steady_clock::time_point last_fault{};
  };
  // Finds or inserts `name`, evicting to stay within max_extensions.
  ExtensionState& EntryLocked(const std::string& name, std::chrono::steady_clock::time_point now,
                              std::vector<dispatch_internal::FaultSummary>& summaries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseLocked(const std::string& name, std::chrono::steady_clock::time_point now,
                   std::vector<dispatch_internal::FaultSummary>& summaries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WriteSummaries(const std::vector<dispatch_internal::FaultSummary>& summaries) const noexcept;
  // Report's bookkeeping: counts the fault, rate-limits its record and records it against the
  // policy, all under mu_ (taken here).
  dispatch_internal::FaultRecordPlan RecordFault(const ExtensionPanic& panic,
                                                 std::chrono::steady_clock::time_point now);

  const FaultMonitorOptions options_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, ExtensionState> extensions_ ABSL_GUARDED_BY(mu_);
  std::uint64_t evicted_ ABSL_GUARDED_BY(mu_) = 0;
  std::uint64_t total_faults_ ABSL_GUARDED_BY(mu_) = 0;
};

// The process-wide monitor the guards use when the caller names none: framekit's stderr
// logger, the steady clock, the default FaultPolicy and no alarm callback. Never destroyed.
FaultMonitor& DefaultFaultMonitor();

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_FAULT_MONITOR_H_
