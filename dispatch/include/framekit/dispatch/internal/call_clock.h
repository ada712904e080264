// CallClock: the steady clock as the executor reads it twice per call, for invocation records
// and the latency histogram.
//
// Reading Clock (std::chrono::steady_clock) goes through clock_gettime; on a virtual machine
// (kvm-clock) that costs 20-50 ns, which made the two reads of every call the largest part of an
// Invoke's overhead. Where the CPU's time-stamp counter is invariant (x86-64 with the
// "invariant TSC" CPUID bit: it ticks at a constant rate in every power state), CallClock reads
// the counter instead (one `rdtsc`) and converts it to a steady-clock time point from an anchor
// (a steady-clock reading and the counter at that moment) and a rate measured against the
// steady clock. The anchor is renewed from the steady clock at least every kReanchorInterval,
// and the rate is measured over the whole time since the first anchor, so it only gets more
// exact. Elsewhere (no invariant counter, another architecture) CallClock is Clock::now().
//
// Accuracy: every anchor pairs a steady-clock reading with the counter read on both sides of it
// (a pair more than ~1 µs apart is refused), so a reading is within ~0.5 µs plus (rate error) x
// (time since the last anchor) of Clock::now(). The first rate is measured over 500 µs (a
// one-off spin at the first call of the process), giving at most a few µs over the first
// interval; each renewal measures it over everything since, so the error then shrinks to
// nanoseconds. Readings may step back by that much when an anchor is renewed: a caller that
// needs an end not before a start takes the maximum (the executor does).
//
// Example:
//   const framekit::Clock::time_point start = framekit::dispatch_internal::CallClock::Now();
//   RunTheCall();
//   const framekit::Clock::time_point end =
//       std::max(start, framekit::dispatch_internal::CallClock::Now());
//
// Thread-safety: thread-safe. Now() takes no lock; the thread that finds the anchor old renews
// it (the others keep reading the old one, or the steady clock while it is being renewed).
#ifndef FRAMEKIT_DISPATCH_INTERNAL_CALL_CLOCK_H_
#define FRAMEKIT_DISPATCH_INTERNAL_CALL_CLOCK_H_

#include <chrono>

#include "framekit/ctx/frame.h"

namespace framekit::dispatch_internal {

class CallClock {
 public:
  // The anchor is renewed from the steady clock when it is older than this.
  static constexpr std::chrono::milliseconds kReanchorInterval{2};

  // Now, as a steady-clock time point (see the file comment for its accuracy).
  static Clock::time_point Now() noexcept;
  // Whether Now() reads the time-stamp counter (false: it is Clock::now()).
  static bool UsesCounter() noexcept;
};

}  // namespace framekit::dispatch_internal

#endif  // FRAMEKIT_DISPATCH_INTERNAL_CALL_CLOCK_H_
