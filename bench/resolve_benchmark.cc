// Resolve on the read path: framekit's FrameResolvers beside the designs people use today,
// measured in the same run so every figure reads as a ratio to the floor.
//
//   Floor/raw_pointer            one acquire load of a snapshot pointer and a dereference
//   Resolve/framekit/...         FrameResolvers::Resolve
//   Resolve/mutex/...            a std::mutex-guarded vector of resolvers
//   Resolve/shared_mutex/...     a std::shared_mutex-guarded vector (shared lock for reads)
//   Resolve/atomic_shared_ptr/...  std::atomic<std::shared_ptr<const vector>> snapshots
//
// Each registry holds N resolvers that append nothing ("noop") or one pair each ("append").
// Every case consumes the result the way a caller does, through `.ok()`.
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/framekit.h"

namespace framekit::bench {
namespace {

const Key<int> kSlot{"bench.slot"};

FrameResolverFn MakeResolver(bool append, int index) {
  if (append) {
    return [index](const Frame&, const Options&, PairList& out) {
      out.push_back(Pair::Of(kSlot, index));
      return absl::OkStatus();
    };
  }
  return [](const Frame&, const Options&, PairList&) { return absl::OkStatus(); };
}

std::vector<FrameResolverFn> MakeResolvers(int n, bool append) {
  std::vector<FrameResolverFn> fns;
  for (int i = 0; i < n; ++i) fns.push_back(MakeResolver(append, i));
  return fns;
}

// Runs `fns` the way FrameResolvers does (stop at the first error), for the baselines.
absl::Status RunAll(const std::vector<FrameResolverFn>& fns, const Frame& parent,
                    const Options& options, PairList& pairs) {
  pairs.reserve(pairs.size() + fns.size());
  for (const FrameResolverFn& fn : fns) {
    absl::Status status = fn(parent, options, pairs);
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// The floor: what any snapshot design must pay at least.
struct FloorSnapshot {
  std::size_t size = 0;
};
void BM_FloorRawPointer(benchmark::State& state) {
  static FloorSnapshot snapshot;
  static std::atomic<const FloorSnapshot*> current{&snapshot};
  AllocationScope allocations;
  for (auto _ : state) {
    const FloorSnapshot* s = current.load(std::memory_order_acquire);
    benchmark::DoNotOptimize(s->size);
  }
  allocations.Report(state);
}

void BM_ResolveNull(benchmark::State& state) {
  const Frame parent;
  const Options options;
  PairList pairs;
  const FrameResolvers* registry = nullptr;
  benchmark::DoNotOptimize(registry);
  AllocationScope allocations;
  for (auto _ : state) {
    const bool ok = Resolve(registry, parent, options, pairs).ok();
    benchmark::DoNotOptimize(ok);
  }
  allocations.Report(state);
}

template <bool append>
void BM_ResolveFramekit(benchmark::State& state, int n) {
  static FrameResolvers* registries[2][17] = {};
  // One registry per shape, shared by the threads of a multi-threaded run.
  if (state.thread_index() == 0 && registries[append][n] == nullptr) {
    auto* r = new FrameResolvers();
    for (int i = 0; i < n; ++i) {
      (void)r->Register("r" + std::to_string(i), i, MakeResolver(append, i));
    }
    r->Seal();
    registries[append][n] = r;
  }
  const Frame parent;
  const Options options;
  PairList pairs;
  const FrameResolvers* registry = nullptr;
  while ((registry = std::atomic_ref(registries[append][n]).load()) == nullptr) {
  }
  AllocationScope allocations;
  for (auto _ : state) {
    // Only appending resolvers leave pairs behind; clearing an always-empty list would add a
    // store/load round trip the read path itself does not have.
    if constexpr (append) pairs.clear();
    const bool ok = registry->Resolve(parent, options, pairs).ok();
    benchmark::DoNotOptimize(ok);
  }
  allocations.Report(state);
}

// A list guarded by `Mutex`, read under `Lock` (std::lock_guard or std::shared_lock).
template <class Mutex, template <class> class Lock, bool append>
void BM_ResolveLocked(benchmark::State& state, int n) {
  static Mutex mu;
  static std::vector<FrameResolverFn> fns[2][17];
  static std::once_flag once[2][17];
  std::call_once(once[append][n], [&] { fns[append][n] = MakeResolvers(n, append); });
  const Frame parent;
  const Options options;
  PairList pairs;
  AllocationScope allocations;
  for (auto _ : state) {
    // Only appending resolvers leave pairs behind; clearing an always-empty list would add a
    // store/load round trip the read path itself does not have.
    if constexpr (append) pairs.clear();
    Lock<Mutex> lock(mu);
    const bool ok = RunAll(fns[append][n], parent, options, pairs).ok();
    benchmark::DoNotOptimize(ok);
  }
  allocations.Report(state);
}

template <bool append>
void BM_ResolveAtomicSharedPtr(benchmark::State& state, int n) {
  using Snapshot = std::vector<FrameResolverFn>;
  static std::atomic<std::shared_ptr<const Snapshot>> current[2][17];
  static std::once_flag once[2][17];
  std::call_once(once[append][n], [&] {
    current[append][n].store(std::make_shared<const Snapshot>(MakeResolvers(n, append)));
  });
  const Frame parent;
  const Options options;
  PairList pairs;
  AllocationScope allocations;
  for (auto _ : state) {
    // Only appending resolvers leave pairs behind; clearing an always-empty list would add a
    // store/load round trip the read path itself does not have.
    if constexpr (append) pairs.clear();
    const std::shared_ptr<const Snapshot> snapshot = current[append][n].load();
    const bool ok = RunAll(*snapshot, parent, options, pairs).ok();
    benchmark::DoNotOptimize(ok);
  }
  allocations.Report(state);
}

// Register one resolver onto a registry that holds 16.
void BM_RegisterOnto16(benchmark::State& state) {
  constexpr int kBatch = 256;
  std::vector<std::unique_ptr<FrameResolvers>> registries;
  auto refill = [&] {
    registries.clear();
    for (int b = 0; b < kBatch; ++b) {
      auto r = std::make_unique<FrameResolvers>();
      for (int i = 0; i < 16; ++i)
        (void)r->Register("r" + std::to_string(i), i, MakeResolver(true, i));
      registries.push_back(std::move(r));
    }
  };
  refill();
  const FrameResolverFn fn = MakeResolver(true, 16);
  int next = 0;
  std::uint64_t excluded_allocs = 0, excluded_bytes = 0;
  const std::uint64_t allocs0 = ThreadAllocations(), bytes0 = ThreadAllocatedBytes();
  for (auto _ : state) {
    if (next == kBatch) {
      state.PauseTiming();
      const std::uint64_t a0 = ThreadAllocations(), b0 = ThreadAllocatedBytes();
      refill();
      excluded_allocs += ThreadAllocations() - a0;
      excluded_bytes += ThreadAllocatedBytes() - b0;
      next = 0;
      state.ResumeTiming();
    }
    const bool ok = registries[next++]->Register("new", 8, fn).ok();
    benchmark::DoNotOptimize(ok);
  }
  // The refills are set-up, not part of the measured Register.
  state.counters["allocs/iter"] =
      benchmark::Counter(static_cast<double>(ThreadAllocations() - allocs0 - excluded_allocs),
                         benchmark::Counter::kAvgIterations);
  state.counters["bytes/iter"] =
      benchmark::Counter(static_cast<double>(ThreadAllocatedBytes() - bytes0 - excluded_bytes),
                         benchmark::Counter::kAvgIterations);
}

void RegisterAll() {
  benchmark::RegisterBenchmark("Floor/raw_pointer", BM_FloorRawPointer)->Threads(1)->Threads(2);
  benchmark::RegisterBenchmark("Resolve/framekit/null", BM_ResolveNull)->Threads(1)->Threads(2);
  for (bool append : {false, true}) {
    for (int n : {0, 1, 4, 16}) {
      if (n == 0 && append) continue;
      const std::string shape = std::string(append ? "append" : "noop") + "/" + std::to_string(n);
      auto add = [&](const char* impl, auto fn_noop, auto fn_append) {
        benchmark::RegisterBenchmark(("Resolve/" + std::string(impl) + "/" + shape).c_str(),
                                     append ? fn_append : fn_noop, n)
            ->Threads(1)
            ->Threads(2);
      };
      add("framekit", BM_ResolveFramekit<false>, BM_ResolveFramekit<true>);
      add("mutex", BM_ResolveLocked<std::mutex, std::lock_guard, false>,
          BM_ResolveLocked<std::mutex, std::lock_guard, true>);
      add("shared_mutex", BM_ResolveLocked<std::shared_mutex, std::shared_lock, false>,
          BM_ResolveLocked<std::shared_mutex, std::shared_lock, true>);
      add("atomic_shared_ptr", BM_ResolveAtomicSharedPtr<false>, BM_ResolveAtomicSharedPtr<true>);
    }
  }
  benchmark::RegisterBenchmark("Register/onto_16", BM_RegisterOnto16);
}

const bool registered = (RegisterAll(), true);

}  // namespace
}  // namespace framekit::bench
