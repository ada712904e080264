// Fault policy: restart intensity in the manner of a supervisor tree.
//
// One fault is noise; K faults within a window T on the same extension is an episode that
// someone should act on. FaultIntensity counts faults in a sliding window and turns each new
// fault into a verdict: keep going, raise an alarm, or evict the extension. Dispatchers read the
// verdict to stop a process or disable a handler; FaultMonitor raises the alarm once per episode.
//
// Example:
//   framekit::dispatch::FaultIntensity intensity(
//       {3, std::chrono::seconds(5), framekit::dispatch::FaultVerdict::kEvict});
//   if (intensity.Record(now).verdict == framekit::dispatch::FaultVerdict::kEvict) {
//     StopProcess(pid);
//   }
#ifndef FRAMEKIT_DISPATCH_FAULT_POLICY_H_
#define FRAMEKIT_DISPATCH_FAULT_POLICY_H_

#include <chrono>
#include <deque>
#include <functional>
#include <string_view>

namespace framekit::dispatch {

// The clock fault bookkeeping reads. An empty FaultClock means std::chrono::steady_clock::now.
// Tests inject a manual clock so that windows and rate limits are exercised without sleeping.
using FaultClock = std::function<std::chrono::steady_clock::time_point()>;

// Reads `clock`, or the steady clock when `clock` is empty.
inline std::chrono::steady_clock::time_point FaultNow(const FaultClock& clock) {
  return clock ? clock() : std::chrono::steady_clock::now();
}

// What a fault means for the extension that raised it.
enum class FaultVerdict {
  kContinue,  // below the intensity limit: log, count, carry on
  kAlarm,     // the limit is reached: the host has been alarmed; the extension may go on
  kEvict,     // the limit is reached and the policy says stop / evict the extension
};

// "continue", "alarm", "evict".
std::string_view FaultVerdictName(FaultVerdict verdict);

// K faults within T. A policy with max_faults <= 0 never trips.
struct FaultPolicy {
  int max_faults = 5;                                          // K
  std::chrono::nanoseconds window = std::chrono::seconds(10);  // T
  FaultVerdict on_trip = FaultVerdict::kAlarm;  // the verdict while the limit is reached
};

// Sliding-window fault counter for one extension (or one path).
//
// Thread-compatible: the owner serialises calls (FaultMonitor and RecoveryRegistry hold their
// own lock around it).
class FaultIntensity {
 public:
  struct Outcome {
    FaultVerdict verdict = FaultVerdict::kContinue;
    // True for exactly the fault that started an episode: the moment to raise the alarm.
    bool episode_started = false;
    // Faults inside the window, this one included (capped at max_faults).
    int faults_in_window = 0;
  };

  explicit FaultIntensity(FaultPolicy policy = {}) : policy_(policy) {}

  // Records a fault at `now` and returns its verdict. An episode starts when the window first
  // holds max_faults faults; it ends when a fault finds fewer than max_faults in the window or
  // arrives after a quiet period of at least `window`. While an episode lasts, every fault gets
  // the policy's on_trip verdict but only the first has episode_started set.
  // NOTE: `now` must not go backwards; a clock that does is treated as standing still.
  Outcome Record(std::chrono::steady_clock::time_point now);

  // Forgets every recorded fault and ends any episode (e.g. after a re-deploy).
  void Reset();

  const FaultPolicy& policy() const { return policy_; }
  bool in_episode() const { return in_episode_; }

 private:
  FaultPolicy policy_;
  std::deque<std::chrono::steady_clock::time_point> times_;  // at most max_faults, oldest first
  bool in_episode_ = false;
};

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_FAULT_POLICY_H_
