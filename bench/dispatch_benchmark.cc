// Dispatch: what FunctionExecutor::Invoke and ProcessManager::Start/Stop add over the handler.
//
// Invoke/direct_call is the baseline: the same handler called directly with the same kind of
// sink. Invoke/no_deadline minus that baseline is the executor's overhead on the caller-thread
// path (target <= 100 ns, 0 allocations, no resolvers). Invoke/with_deadline runs the handler on
// a worker and waits for it; its baseline is Handoff/condition_variable, the same handler posted
// to one waiting thread and waited for with a mutex and two condition variables (target <= 3x).
// Lua/run_direct is LuaFunction::Run called directly; Lua/invoke and Lua/invoke_deadline the
// same function through the executor (preemptive code: no worker handoff, deadline or not).
// The machine these run on is shared and noisy: read each figure as a ratio to its baseline
// from the same run.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/process_manager.h"
#include "framekit/lua/lua_function.h"
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

// Invokes "echo" with `options` once per iteration, counting allocations: the loop every
// Invoke case shares.
void InvokeEchoLoop(benchmark::State& state, dispatch::FunctionExecutor& executor,
                    const Options& options) {
  const Frame parent;
  AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<std::string> result = executor.Invoke(parent, "echo", "payload", options);
    if (!result.ok()) state.SkipWithError("Invoke failed");
    benchmark::DoNotOptimize(result);
  }
  allocations.Report(state);
}

void BM_InvokeNoDeadline(benchmark::State& state) {
  AppContext app;
  dispatch::FunctionExecutor executor(app);
  if (!executor.Register("echo", EchoHandler).ok()) state.SkipWithError("Register failed");
  InvokeEchoLoop(state, executor, Options());
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
  const Options options = state.range(1) == 0
                              ? Options()
                              : Options{{"tenant", "acme"}, {"trace_id", "4bf92f3577b34da6"}};
  InvokeEchoLoop(state, executor, options);
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
  const Options options{{"timeout_ms", std::int64_t{10000}}};
  InvokeEchoLoop(state, executor, options);
}
BENCHMARK(BM_InvokeWithDeadline)->Name("Invoke/with_deadline")->UseRealTime();

// The floor of a thread handoff: one thread waiting on a condition variable runs the handler
// posted to it and signals its completion to the poster, who waits for it.
class HandoffThread {
 public:
  HandoffThread() : thread_([this] { Loop(); }) {}
  ~HandoffThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    posted_cv_.notify_one();
    thread_.join();
  }
  absl::Status Run(const dispatch::Handler& handler, const Frame& frame, std::string_view payload,
                   std::string& output) {
    std::unique_lock<std::mutex> lock(mu_);
    handler_ = &handler;
    frame_ = &frame;
    payload_ = payload;
    output_ = &output;
    posted_ = true;
    done_ = false;
    posted_cv_.notify_one();
    done_cv_.wait(lock, [this] { return done_; });
    return status_;
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      posted_cv_.wait(lock, [this] { return posted_ || stop_; });
      if (stop_) return;
      posted_ = false;
      lock.unlock();
      AppendSink sink(*output_);
      absl::Status status = (*handler_)(*frame_, payload_, sink);
      lock.lock();
      status_ = std::move(status);
      done_ = true;
      done_cv_.notify_one();
    }
  }

  std::mutex mu_;
  std::condition_variable posted_cv_;
  std::condition_variable done_cv_;
  bool posted_ = false;
  bool done_ = false;
  bool stop_ = false;
  const dispatch::Handler* handler_ = nullptr;
  const Frame* frame_ = nullptr;
  std::string_view payload_;
  std::string* output_ = nullptr;
  absl::Status status_;
  std::thread thread_;
};

void BM_HandoffConditionVariable(benchmark::State& state) {
  const dispatch::Handler handler = EchoHandler;
  const Frame parent;
  HandoffThread worker;
  AllocationScope allocations;
  for (auto _ : state) {
    std::string output;
    absl::Status status = worker.Run(handler, parent, "payload", output);
    if (!status.ok()) state.SkipWithError("handler failed");
    benchmark::DoNotOptimize(output);
  }
  allocations.Report(state);
}
BENCHMARK(BM_HandoffConditionVariable)->Name("Handoff/condition_variable")->UseRealTime();

constexpr char kLuaEcho[] = "return function(p) return p end";

std::shared_ptr<lua::LuaFunction> CompileLuaEcho(benchmark::State& state) {
  absl::StatusOr<std::shared_ptr<lua::LuaFunction>> fn =
      lua::LuaFunction::Compile("echo.lua", kLuaEcho);
  if (!fn.ok()) {
    state.SkipWithError("Compile failed");
    return nullptr;
  }
  return *fn;
}

void BM_LuaRunDirect(benchmark::State& state) {
  std::shared_ptr<lua::LuaFunction> fn = CompileLuaEcho(state);
  if (fn == nullptr) return;
  const Frame parent;
  AllocationScope allocations;
  for (auto _ : state) {
    std::string output;
    AppendSink sink(output);
    dispatch::RunStats stats;
    absl::Status status = fn->Run(parent, "payload", sink, stats);
    if (!status.ok()) state.SkipWithError("Run failed");
    benchmark::DoNotOptimize(output);
  }
  allocations.Report(state);
}
BENCHMARK(BM_LuaRunDirect)->Name("Lua/run_direct");

void LuaThroughInvoke(benchmark::State& state, const Options& options) {
  std::shared_ptr<lua::LuaFunction> fn = CompileLuaEcho(state);
  if (fn == nullptr) return;
  AppContext app;
  dispatch::FunctionExecutor executor(app);
  if (!executor.Register("echo", fn).ok()) state.SkipWithError("Register failed");
  InvokeEchoLoop(state, executor, options);
}
void BM_LuaInvoke(benchmark::State& state) { LuaThroughInvoke(state, {}); }
BENCHMARK(BM_LuaInvoke)->Name("Lua/invoke");
void BM_LuaInvokeDeadline(benchmark::State& state) {
  LuaThroughInvoke(state, {{"timeout_ms", std::int64_t{10000}}});
}
BENCHMARK(BM_LuaInvokeDeadline)->Name("Lua/invoke_deadline");

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
