// Guards on the no-fault path against a direct call of the same function, measured in the same
// run, and one RecoveryRegistry::RunAll over 64 healthy handlers.
#include <benchmark/benchmark.h>

#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/recovery_registry.h"

namespace {

namespace fd = framekit::dispatch;

// Not inlined, so both the baseline and the guarded call pay one real call.
[[gnu::noinline]] int Work(int x) { return x * 3 + 1; }
[[gnu::noinline]] std::optional<int> PollWork(int x) {
  if (x < 0) return std::nullopt;
  return x + 1;
}
[[gnu::noinline]] absl::Status SetupWork(int x) {
  return x < 0 ? absl::InvalidArgumentError("negative") : absl::OkStatus();
}

void BM_DirectCall(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    int r = Work(x);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_DirectCall);

void BM_GuardRaw(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    int r = fd::Guard(
        "bench", framekit::Phase::kInvoke, [&] { return Work(x); },
        [](fd::FaultReport) { return 0; });
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_GuardRaw);

void BM_HostFunc(benchmark::State& state) {
  int x = 1;
  auto work = fd::HostFunc("bench", "work", &Work);
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    int r = work(x);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_HostFunc);

void BM_DirectPoll(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    std::optional<int> r = PollWork(x);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_DirectPoll);

void BM_CallPoll(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    std::optional<int> r = fd::CallPoll("bench", [&] { return PollWork(x); });
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_CallPoll);

void BM_DirectSetup(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    absl::Status r = SetupWork(x);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_DirectSetup);

void BM_CallSetup(benchmark::State& state) {
  int x = 1;
  for (auto _ : state) {
    benchmark::DoNotOptimize(x);
    absl::Status r = fd::CallSetup("bench", [&] { return SetupWork(x); });
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_CallSetup);

void BM_RecoveryRunAll64(benchmark::State& state) {
  fd::RecoveryRegistry registry;
  for (int i = 0; i < 64; ++i) {
    registry.Register(absl::StrCat("h", i),
                      []() -> absl::StatusOr<std::vector<int>> { return std::vector<int>{}; });
  }
  for (auto _ : state) {
    std::vector<int> recovered = registry.RunAll();
    benchmark::DoNotOptimize(recovered);
  }
  state.counters["handlers"] = static_cast<double>(registry.size());
}
BENCHMARK(BM_RecoveryRunAll64);

}  // namespace
