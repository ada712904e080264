#include "framekit/dispatch/internal/call_clock.h"

#include <atomic>
#include <cstdint>

#if defined(__x86_64__)
#include <cpuid.h>
#include <x86intrin.h>
#endif

namespace framekit::dispatch_internal {
namespace {

std::int64_t SteadyNanos() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
      .count();
}

Clock::time_point FromNanos(std::int64_t ns) noexcept {
  return Clock::time_point(
      std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(ns)));
}

#if defined(__x86_64__)

// CPUID 0x80000007, EDX bit 8: the time-stamp counter runs at a constant rate in every P-, C-
// and T-state ("invariant TSC").
bool InvariantCounter() noexcept {
  if (static_cast<unsigned>(__get_cpuid_max(0x80000000, nullptr)) < 0x80000007u) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  __cpuid(0x80000007, a, b, c, d);
  return (d & (1u << 8)) != 0;
}

// Nanoseconds per counter tick, in 32.32 fixed point, measured over [first, now].
std::uint64_t RateQ32(std::int64_t ns, std::uint64_t ticks) noexcept {
  if (ticks == 0) return 0;
  return static_cast<std::uint64_t>((static_cast<unsigned __int128>(ns) << 32) / ticks);
}

// A steady-clock reading and the counter at the same moment: the counter is read on both sides
// of the clock, and the pair is refused when they are far apart (the thread was preempted or
// interrupted in between), so that no anchor is off by a preemption. False after a few tries.
bool ReadPair(std::uint64_t& ticks, std::int64_t& ns) noexcept {
  constexpr std::uint64_t kMaxBracketTicks = 2'000;  // ~1 µs at 2 GHz
  for (int attempt = 0; attempt < 8; ++attempt) {
    const std::uint64_t before = __rdtsc();
    const std::int64_t now = SteadyNanos();
    const std::uint64_t after = __rdtsc();
    if (after >= before && after - before <= kMaxBracketTicks) {
      ticks = before + (after - before) / 2;
      ns = now;
      return true;
    }
  }
  return false;
}

// The anchor is published under a sequence lock whose fields are all atomics: a reader that
// sees the sequence odd or changed uses the steady clock for that one reading.
// Memory ordering: no fences (ThreadSanitizer does not model them). The writer takes the lock
// with an acquire CAS (seq odd) and stores the fields with release, so a reader whose acquire
// load sees a new field also sees seq odd or moved on when it reads seq again; the reader's
// field loads are acquire, so that re-read of seq cannot move before them. On x86-64 all of
// these are plain loads and stores.
struct CounterClock {
  CounterClock() noexcept {
    // Measure a first rate over 500 µs, once, at the first call of the process.
    std::uint64_t ticks = 0;
    std::int64_t ns = 0;
    if (!ReadPair(first_ticks, first_ns)) return;
    while (SteadyNanos() - first_ns < 500'000) {
    }
    if (!ReadPair(ticks, ns) || ticks <= first_ticks) return;
    const std::uint64_t rate = RateQ32(ns - first_ns, ticks - first_ticks);
    usable = rate != 0;
    if (usable) Store(ticks, ns, rate);
  }

  void Store(std::uint64_t ticks, std::int64_t ns, std::uint64_t rate) noexcept {
    anchor_ticks.store(ticks, std::memory_order_release);
    anchor_ns.store(ns, std::memory_order_release);
    rate_q32.store(rate, std::memory_order_release);
    // Renew after kReanchorInterval of ticks at this rate.
    const std::uint64_t interval_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(CallClock::kReanchorInterval).count();
    max_ticks.store(
        static_cast<std::uint64_t>((static_cast<unsigned __int128>(interval_ns) << 32) / rate),
        std::memory_order_release);
  }

  std::int64_t Now() noexcept {
    const std::uint32_t seq0 = seq.load(std::memory_order_acquire);
    const std::uint64_t ticks = __rdtsc();
    const std::uint64_t base_ticks = anchor_ticks.load(std::memory_order_acquire);
    const std::int64_t base_ns = anchor_ns.load(std::memory_order_acquire);
    const std::uint64_t rate = rate_q32.load(std::memory_order_acquire);
    const std::uint64_t limit = max_ticks.load(std::memory_order_acquire);
    if ((seq0 & 1) != 0 || seq.load(std::memory_order_relaxed) != seq0) return SteadyNanos();
    // A counter behind the anchor (another core's counter a little behind) counts as the anchor.
    const std::uint64_t elapsed = ticks > base_ticks ? ticks - base_ticks : 0;
    if (elapsed > limit) [[unlikely]] {
      return Renew(seq0);
    }
    return base_ns +
           static_cast<std::int64_t>((static_cast<unsigned __int128>(elapsed) * rate) >> 32);
  }

  // Takes a new anchor from the steady clock, and the rate over everything since the first.
  [[gnu::noinline]] std::int64_t Renew(std::uint32_t seen) noexcept {
    std::uint32_t expected = seen;
    if (!seq.compare_exchange_strong(expected, seen + 1, std::memory_order_acquire)) {
      return SteadyNanos();  // another thread is renewing it
    }
    std::uint64_t ticks = 0;
    std::int64_t ns = 0;
    // A pair that cannot be read cleanly leaves the old anchor in place: this reading (and the
    // next ones, until a clean pair) come from the steady clock.
    if (ReadPair(ticks, ns) && ticks > first_ticks) {
      const std::uint64_t rate = RateQ32(ns - first_ns, ticks - first_ticks);
      if (rate != 0) Store(ticks, ns, rate);
    } else {
      ns = SteadyNanos();
    }
    seq.store(seen + 2, std::memory_order_release);
    return ns;
  }

  std::uint64_t first_ticks = 0;
  std::int64_t first_ns = 0;
  bool usable = false;
  std::atomic<std::uint32_t> seq{0};
  std::atomic<std::uint64_t> anchor_ticks{0};
  std::atomic<std::int64_t> anchor_ns{0};
  std::atomic<std::uint64_t> rate_q32{0};
  std::atomic<std::uint64_t> max_ticks{0};
};

CounterClock* TheCounterClock() noexcept {
  // Never destroyed: calls may run during static destruction.
  static CounterClock* const clock = InvariantCounter() ? new CounterClock() : nullptr;
  return clock != nullptr && clock->usable ? clock : nullptr;
}

#endif  // defined(__x86_64__)

}  // namespace

Clock::time_point CallClock::Now() noexcept {
#if defined(__x86_64__)
  if (CounterClock* clock = TheCounterClock(); clock != nullptr) [[likely]] {
    return FromNanos(clock->Now());
  }
#endif
  return Clock::now();
}

bool CallClock::UsesCounter() noexcept {
#if defined(__x86_64__)
  return TheCounterClock() != nullptr;
#else
  return false;
#endif
}

}  // namespace framekit::dispatch_internal
