// Allocation counting for the benchmarks: the bench binary replaces the global operator new,
// and each benchmark reports allocations and bytes per iteration from the calling thread's
// counts.
#ifndef FRAMEKIT_BENCH_ALLOC_COUNTER_H_
#define FRAMEKIT_BENCH_ALLOC_COUNTER_H_

#include <cstdint>

#include "benchmark/benchmark.h"

namespace framekit::bench {

// This thread's allocation count and bytes since it started.
std::uint64_t ThreadAllocations();
std::uint64_t ThreadAllocatedBytes();

// Measures allocations from construction to Report(), on the calling thread.
class AllocationScope {
 public:
  AllocationScope() : allocations_(ThreadAllocations()), bytes_(ThreadAllocatedBytes()) {}
  // Sets the "allocs/iter" and "bytes/iter" counters (averaged over all threads' iterations).
  void Report(benchmark::State& state) const {
    state.counters["allocs/iter"] =
        benchmark::Counter(static_cast<double>(ThreadAllocations() - allocations_),
                           benchmark::Counter::kAvgIterations);
    state.counters["bytes/iter"] = benchmark::Counter(
        static_cast<double>(ThreadAllocatedBytes() - bytes_), benchmark::Counter::kAvgIterations);
  }

 private:
  std::uint64_t allocations_;
  std::uint64_t bytes_;
};

}  // namespace framekit::bench

#endif  // FRAMEKIT_BENCH_ALLOC_COUNTER_H_
