// Dispatch: what FunctionExecutor::Invoke and ProcessManager::Start/Stop add over the handler.
//
// Invoke/direct_call is the baseline: the same handler called directly with the same kind of
// sink. Invoke/no_deadline minus that baseline is the executor's overhead on the caller-thread
// path (target <= 150 ns, no resolvers); Invoke/with_deadline runs the handler on a worker and
// waits for it (target <= 10 us).
#include <chrono>
#include <memory>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/process_manager.h"
#include "framekit/resolvers/frame_resolvers.h"

namespace framekit::bench {
namespace {

using dispatch::Sink;

class AppendSink final : public Sink {
 public:
  explicit AppendSink(std::string& out) : out_(out) {}
  absl::Status Write(std::string_view chunk) override {
    out_.append(chunk);
    return absl::OkStatus();
  }

 private:
  std::string& out_;
};

absl::Status EchoHandler(const Frame&, std::string_view payload, Sink& out) {
  return out.Write(payload);
}

void BM_InvokeDirect(benchmark::State& state) {
  const dispatch::Handler handler = EchoHandler;
  const Frame parent;
  AllocationScope allocations;
  for (auto _ : state) {
    std::string output;
    AppendSink sink(output);
    absl::Status status = handler(parent, "payload", sink);
    benchmark::DoNotOptimize(status);
    benchmark::DoNotOptimize(output);
  }
  allocations.Report(state);
}
BENCHMARK(BM_InvokeDirect)->Name("Invoke/direct_call");

void BM_InvokeNoDeadline(benchmark::State& state) {
  AppContext app;
  dispatch::FunctionExecutor executor(app);
  if (!executor.Register("echo", EchoHandler).ok()) state.SkipWithError("Register failed");
  const Frame parent;
  AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<std::string> result = executor.Invoke(parent, "echo", "payload");
    benchmark::DoNotOptimize(result);
  }
  allocations.Report(state);
}
BENCHMARK(BM_InvokeNoDeadline)->Name("Invoke/no_deadline");

// The strict-options check in the same run as its baseline: Arg 0 is the default (strict),
// Arg 1 opts out (allow_undeclared_options: no check, the path before strict options). Range 0
// calls with no options (the check must cost nothing); range 1 with one option a resolver
// declares ("tenant") and a trace id.
void BM_InvokeStrictOptions(benchmark::State& state) {
  auto resolvers = std::make_shared<FrameResolvers>();
  if (!resolvers
           ->Register("bench.tenant", 300, {"tenant"},
                      [](const Frame&, const Options&, PairList&) { return absl::OkStatus(); })
           .ok()) {
    state.SkipWithError("Register resolver failed");
  }
  AppContext app;
  if (!app.SetFrameResolvers(resolvers).ok()) state.SkipWithError("SetFrameResolvers failed");
  dispatch::FunctionExecutor executor(app, {.allow_undeclared_options = state.range(0) == 1});
  if (!executor.Register("echo", EchoHandler).ok()) state.SkipWithError("Register failed");
  const Frame parent;
  const Options options = state.range(1) == 0
                              ? Options()
                              : Options{{"tenant", "acme"}, {"trace_id", "4bf92f3577b34da6"}};
  AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<std::string> result = executor.Invoke(parent, "echo", "payload", options);
    if (!result.ok()) state.SkipWithError("Invoke failed");
    benchmark::DoNotOptimize(result);
  }
  allocations.Report(state);
}
BENCHMARK(BM_InvokeStrictOptions)
    ->Name("Invoke/options")
    ->ArgNames({"lenient", "with_options"})
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({0, 1})
    ->Args({1, 1});

void BM_InvokeWithDeadline(benchmark::State& state) {
  AppContext app;
  dispatch::FunctionExecutor executor(app);
  if (!executor.Register("echo", EchoHandler).ok()) state.SkipWithError("Register failed");
  const Frame parent;
  const Options options{{"timeout_ms", std::int64_t{10000}}};
  AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<std::string> result = executor.Invoke(parent, "echo", "payload", options);
    if (!result.ok()) state.SkipWithError("Invoke failed");
    benchmark::DoNotOptimize(result);
  }
  allocations.Report(state);
}
BENCHMARK(BM_InvokeWithDeadline)->Name("Invoke/with_deadline")->UseRealTime();

// Start an idle process, then Stop it, waiting
// for teardown and finalize. Exited processes stay listed, so the manager grows per iteration.
void BM_ProcessStartStop(benchmark::State& state) {
  AppContext app;
  dispatch::ProcessManager manager(app, {.workers = 2});
  dispatch::ProcessSpec spec;
  spec.name = "bench";
  spec.poll = [](dispatch::ProcessContext&) { return dispatch::Step::kIdle; };
  const Frame parent;
  AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<dispatch::Pid> pid = manager.Start(parent, spec);
    if (!pid.ok() || !manager.Stop(*pid, std::chrono::seconds(10)).ok()) {
      state.SkipWithError("Start/Stop failed");
      break;
    }
  }
  allocations.Report(state);
}
BENCHMARK(BM_ProcessStartStop)->Name("Process/start_stop")->UseRealTime();

}  // namespace
}  // namespace framekit::bench
