// Issue 12, "Dispatch you can trust": deadlines and cancellation, bulkheads, lifecycle and bad
// input of FunctionExecutor. Every test here failed before its fix.
#include <pthread.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <latch>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/function_executor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::dispatch {
namespace {

using ::testing::HasSubstr;

Handler Echo() {
  return [](const Frame&, std::string_view payload, Sink& out) { return out.Write(payload); };
}

// Counts its runs.
Handler Counting(std::atomic<int>& runs) {
  return [&runs](const Frame&, std::string_view payload, Sink& out) {
    runs.fetch_add(1);
    return out.Write(payload);
  };
}

// A gate that a handler waits on, ignoring its stop token, until Open.
class Gate {
 public:
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return open_; });
  }
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

void WaitForQuarantine(const FunctionExecutor& executor, int want) {
  for (int i = 0; i < 10000 && executor.quarantined() != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(executor.quarantined(), want);
}

const Options kLongTimeout{{"timeout_ms", std::int64_t{60000}}};

// ---- deadlines and cancellation ----------------------------------------------------------------

// Tests that a parent whose deadline has passed never reaches the handler, with or without a
// timeout of the call's own.
TEST(FunctionExecutorDeadline, ExpiredParentNeverRunsHandler) {
  AppContext app;
  FunctionExecutor executor(app);
  std::atomic<int> runs{0};
  ASSERT_THAT(executor.Register("f", Counting(runs)), ::framekit::testing::IsOk());
  const Frame expired = Frame().WithDeadline(Clock::now() - std::chrono::seconds(1));
  for (int i = 0; i < 200; ++i) {
    for (const Options& options : {Options{}, kLongTimeout}) {
      auto result = executor.Invoke(expired, "f", "x", options);
      EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
    }
  }
  EXPECT_EQ(runs.load(), 0);
  EXPECT_EQ(executor.Counters("f")->timeouts, 400u);
}

// Tests that a parent whose scope is cancelled never reaches the handler.
TEST(FunctionExecutorDeadline, CancelledParentNeverRunsHandler) {
  AppContext app;
  FunctionExecutor executor(app);
  std::atomic<int> runs{0};
  ASSERT_THAT(executor.Register("f", Counting(runs)), ::framekit::testing::IsOk());
  auto [parent, canceller] = Frame().WithCancel();
  canceller.Cancel();
  for (const Options& options : {Options{}, kLongTimeout}) {
    auto result = executor.Invoke(parent, "f", "x", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  }
  EXPECT_EQ(runs.load(), 0);
}

// Tests that the "no limit" idioms are deadlines far in the future, not in the past.
TEST(FunctionExecutorDeadline, HugeTimeoutsSaturate) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("echo", Echo()), ::framekit::testing::IsOk());
  for (std::int64_t ms :
       {std::numeric_limits<std::int64_t>::max(), std::int64_t{10'000'000'000'000},
        std::numeric_limits<std::int64_t>::max() / 1000}) {
    auto result = executor.Invoke(Frame(), "echo", "x", {{"timeout_ms", ms}});
    ASSERT_TRUE(result.ok()) << ms << ": " << result.status();
    EXPECT_EQ(*result, "x");
  }
  const Frame forever = Frame().WithTimeout(Clock::duration::max());
  EXPECT_FALSE(forever.cancelled());
  EXPECT_FALSE(forever.deadline().has_value()) << "saturates to no deadline";
  const Deadline far = DeadlineAfter(Clock::now(), std::chrono::hours(24 * 365 * 100));
  EXPECT_GT(far, Clock::now() + std::chrono::hours(24 * 365 * 99));
  EXPECT_EQ(DeadlineAfter(Clock::now(), std::chrono::milliseconds::max()), Deadline::max());
  EXPECT_EQ(DeadlineAfter(Deadline::max() - std::chrono::nanoseconds(5), std::chrono::hours(1)),
            Deadline::max());
  auto nested = executor.Invoke(forever, "echo", "y", {{"timeout_ms", std::int64_t{5000}}});
  ASSERT_TRUE(nested.ok()) << nested.status();
}

TEST(FunctionExecutorDeadline, NonPositiveTimeoutIsInvalidArgument) {
  AppContext app;
  FunctionExecutor executor(app);
  std::atomic<int> runs{0};
  ASSERT_THAT(executor.Register("f", Counting(runs)), ::framekit::testing::IsOk());
  for (std::int64_t ms :
       {std::int64_t{0}, std::int64_t{-1}, std::numeric_limits<std::int64_t>::min()}) {
    auto result = executor.Invoke(Frame(), "f", "x", {{"timeout_ms", ms}});
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  }
  EXPECT_EQ(runs.load(), 0);
  // A zero or negative Frame timeout is a deadline that has already passed.
  EXPECT_TRUE(Frame().WithTimeout(Clock::duration::zero()).cancelled());
  EXPECT_TRUE(Frame().WithTimeout(Clock::duration::min()).cancelled());
}

// Tests that with default options, calls whose handlers call another function with a deadline
// complete even when every outer call is in flight at once.
TEST(FunctionExecutorDeadline, ConcurrentNestedDeadlineCallsDoNotStarve) {
  AppContext app;
  FunctionExecutor executor(app);
  constexpr int kOuter = 8;
  std::latch all_outer_running(kOuter);
  ASSERT_THAT(executor.Register("inner", Echo()), ::framekit::testing::IsOk());
  ASSERT_TRUE(executor
                  .Register("outer",
                            [&](const Frame& frame, std::string_view payload, Sink& out) {
                              all_outer_running.count_down();
                              all_outer_running.wait();
                              auto inner = executor.Invoke(frame, "inner", payload,
                                                           {{"timeout_ms", std::int64_t{3000}}});
                              if (!inner.ok()) return inner.status();
                              return out.Write(*inner);
                            })
                  .ok());
  std::latch go(kOuter);
  std::vector<std::thread> threads;
  std::vector<absl::Status> results(kOuter);
  for (int t = 0; t < kOuter; ++t) {
    threads.emplace_back([&, t] {
      go.arrive_and_wait();
      results[t] = executor.Invoke(Frame(), "outer", "p", kLongTimeout).status();
    });
  }
  for (auto& thread : threads) thread.join();
  for (const absl::Status& s : results) EXPECT_TRUE(s.ok()) << s;
}

// Tests that a handler re-entering the executor ten levels deep, each level with a deadline,
// completes.
TEST(FunctionExecutorDeadline, ReentryAtDepthTen) {
  AppContext app;
  FunctionExecutor executor(app, {.deadline_workers = 1});
  ASSERT_TRUE(executor
                  .Register("down",
                            [&](const Frame& frame, std::string_view payload, Sink& out) {
                              int depth = 0;
                              if (!absl::SimpleAtoi(
                                      absl::string_view(payload.data(), payload.size()), &depth)) {
                                return absl::InvalidArgumentError("depth");
                              }
                              if (depth == 0) return out.Write("bottom");
                              auto below = executor.Invoke(frame, "down", absl::StrCat(depth - 1),
                                                           {{"timeout_ms", std::int64_t{20000}}});
                              if (!below.ok()) return below.status();
                              return out.Write(*below);
                            })
                  .ok());
  auto result = executor.Invoke(Frame(), "down", "10", kLongTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, "bottom");
}

// Tests that a handler ending its thread on a deadline call gives its quarantine slot back.
TEST(FunctionExecutorDeadline, ThreadExitReleasesQuarantine) {
  AppContext app;
  FunctionExecutor executor(app, {.deadline_workers = 1, .max_quarantined = 2});
  ASSERT_TRUE(executor
                  .Register("exit",
                            [](const Frame&, std::string_view, Sink&) -> absl::Status {
                              pthread_exit(nullptr);
                            })
                  .ok());
  ASSERT_THAT(executor.Register("echo", Echo()), ::framekit::testing::IsOk());
  for (int i = 0; i < 6; ++i) {
    auto result = executor.Invoke(Frame(), "exit", "", {{"timeout_ms", std::int64_t{100}}});
    EXPECT_NE(result.status().code(), absl::StatusCode::kOk);
    EXPECT_NE(result.status().code(), absl::StatusCode::kResourceExhausted) << result.status();
  }
  WaitForQuarantine(executor, 0);
  auto healthy = executor.Invoke(Frame(), "echo", "x", kLongTimeout);
  ASSERT_TRUE(healthy.ok()) << healthy.status();
}

TEST(FunctionExecutorDeadline, ZeroMaxQuarantinedAdmitsDeadlineCalls) {
  AppContext app;
  FunctionExecutor executor(app, {.max_quarantined = 0});
  ASSERT_THAT(executor.Register("echo", Echo()), ::framekit::testing::IsOk());
  auto result = executor.Invoke(Frame(), "echo", "x", kLongTimeout);
  ASSERT_TRUE(result.ok()) << result.status();
}

// ---- bulkheads ---------------------------------------------------------------------------------

// Tests that a function whose handlers ignore their stop token exhausts its own budget and never
// causes a refusal of another function's deadline calls.
TEST(FunctionExecutorBulkhead, ConcurrentStuckFunctionDoesNotStarveHealthyOne) {
  AppContext app;
  FunctionExecutor executor(app);
  Gate gate;
  ASSERT_TRUE(executor
                  .Register("stuck",
                            [&](const Frame&, std::string_view, Sink&) {
                              gate.Wait();
                              return absl::OkStatus();
                            })
                  .ok());
  ASSERT_THAT(executor.Register("healthy", Echo()), ::framekit::testing::IsOk());
  constexpr int kStuckThreads = 3;
  constexpr int kHealthyThreads = 2;
  std::latch go(kStuckThreads + kHealthyThreads);
  std::atomic<bool> stop{false};
  std::atomic<int> healthy_refused{0}, healthy_failed{0}, healthy_calls{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kStuckThreads; ++t) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      while (!stop.load()) {
        (void)executor.Invoke(Frame(), "stuck", "", {{"timeout_ms", std::int64_t{5}}});
      }
    });
  }
  for (int t = 0; t < kHealthyThreads; ++t) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      for (int i = 0; i < 300; ++i) {
        auto result =
            executor.Invoke(Frame(), "healthy", "h", {{"timeout_ms", std::int64_t{10000}}});
        healthy_calls.fetch_add(1);
        if (result.status().code() == absl::StatusCode::kResourceExhausted) {
          healthy_refused.fetch_add(1);
        } else if (!result.ok()) {
          healthy_failed.fetch_add(1);
        }
      }
    });
  }
  for (int t = kStuckThreads; t < kStuckThreads + kHealthyThreads; ++t) threads[t].join();
  stop.store(true);
  for (int t = 0; t < kStuckThreads; ++t) threads[t].join();
  EXPECT_EQ(healthy_refused.load(), 0) << "of " << healthy_calls.load();
  EXPECT_EQ(healthy_failed.load(), 0);
  gate.Open();
  WaitForQuarantine(executor, 0);
}

// ---- lifecycle ---------------------------------------------------------------------------------

// Tests that destroying an executor with deadline calls in flight (handlers honouring their stop
// tokens, and one ignoring it) neither crashes nor hangs, and that the callers get a status.
TEST(FunctionExecutorLifecycle, ConcurrentDestroyWithCallsInFlight) {
  AppContext app;
  Gate gate;
  constexpr int kCalls = 50;
  std::latch running(kCalls + 1);
  std::latch left(1);  // the stuck handler is out of `gate` before the test's locals go
  std::vector<absl::Status> results(kCalls + 1);
  std::vector<std::thread> callers;
  {
    auto executor = std::make_unique<FunctionExecutor>(
        app, FunctionExecutorOptions{.max_in_flight_per_function = 64,
                                     .shutdown_grace = std::chrono::milliseconds(200)});
    ASSERT_TRUE(executor
                    ->Register("wait",
                               [&](const Frame& frame, std::string_view, Sink&) {
                                 running.count_down();
                                 std::mutex mu;
                                 std::condition_variable_any cv;
                                 std::unique_lock<std::mutex> lock(mu);
                                 cv.wait(lock, frame.stop_token(), [] { return false; });
                                 return absl::CancelledError("stopped");
                               })
                    .ok());
    ASSERT_TRUE(executor
                    ->Register("stuck",
                               [&](const Frame&, std::string_view, Sink&) {
                                 running.count_down();
                                 gate.Wait();
                                 left.count_down();
                                 return absl::OkStatus();
                               })
                    .ok());
    for (int i = 0; i <= kCalls; ++i) {
      callers.emplace_back([&, i, e = executor.get()] {
        results[i] = e->Invoke(Frame(), i == kCalls ? "stuck" : "wait", "", kLongTimeout).status();
      });
    }
    running.wait();
    executor.reset();
  }
  for (auto& t : callers) t.join();
  for (const absl::Status& s : results) {
    EXPECT_THAT(s.code(),
                ::testing::AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kCancelled))
        << s;
  }
  gate.Open();  // the detached worker finishes after its executor is gone
  left.wait();
}

TEST(FunctionExecutorLifecycle, CallAfterShutdownIsUnavailableAndShutdownTwiceIsOk) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("echo", Echo()), ::framekit::testing::IsOk());
  ASSERT_THAT(executor.Invoke(Frame(), "echo", "x", kLongTimeout), ::framekit::testing::IsOk());
  absl::Status first = executor.Shutdown(std::chrono::seconds(5));
  EXPECT_TRUE(first.ok()) << first;
  for (const Options& options : {Options{}, kLongTimeout}) {
    auto result = executor.Invoke(Frame(), "echo", "x", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("shut down"));
  }
  absl::Status second = executor.Shutdown(std::chrono::seconds(5));
  EXPECT_TRUE(second.ok()) << second;
}

// Tests that Shutdown called by a handler, on a worker and on the caller's thread, returns
// without waiting for its own call.
TEST(FunctionExecutorLifecycle, ShutdownFromInsideHandlerDoesNotDeadlock) {
  for (const Options& options : {Options{}, kLongTimeout}) {
    AppContext app;
    FunctionExecutor executor(app);
    absl::Status inner;
    ASSERT_TRUE(executor
                    .Register("stop",
                              [&](const Frame&, std::string_view, Sink& out) {
                                inner = executor.Shutdown(std::chrono::seconds(30));
                                return out.Write("stopped");
                              })
                    .ok());
    const auto before = Clock::now();
    auto result = executor.Invoke(Frame(), "stop", "", options);
    EXPECT_LT(Clock::now() - before, std::chrono::seconds(10));
    if (!options.empty()) {
      // The caller of a deadline call is woken by the shutdown itself.
      EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
    } else {
      EXPECT_TRUE(result.ok()) << result.status();
      EXPECT_TRUE(inner.ok()) << inner;
    }
  }
}

// ---- bad input ---------------------------------------------------------------------------------

TEST(FunctionExecutorOptions, CreateRejectsInvalidOptions) {
  AppContext app;
  const std::vector<std::pair<FunctionExecutorOptions, std::string>> bad = {
      {{.deadline_workers = 0}, "deadline_workers"},
      {{.deadline_workers = -3}, "deadline_workers"},
      {{.max_quarantined = -1}, "max_quarantined"},
      {{.max_quarantined_per_function = -1}, "max_quarantined_per_function"},
      {{.max_in_flight = 0}, "max_in_flight"},
      {{.max_in_flight_per_function = 0}, "max_in_flight_per_function"},
      {{.records_per_function = 0}, "records_per_function"},
      {{.records_per_function = -5}, "records_per_function"},
      {{.shutdown_grace = std::chrono::milliseconds(-1)}, "shutdown_grace"},
  };
  for (const auto& [options, field] : bad) {
    auto created = FunctionExecutor::Create(app, options);
    EXPECT_EQ(created.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(created.status().message(), HasSubstr(field));
    // The constructor clamps instead: the executor works.
    FunctionExecutor clamped(app, options);
    ASSERT_THAT(clamped.Register("echo", Echo()), ::framekit::testing::IsOk());
    auto result = clamped.Invoke(Frame(), "echo", "x", kLongTimeout);
    EXPECT_TRUE(result.ok()) << field << ": " << result.status();
  }
  auto good = FunctionExecutor::Create(app, {});
  ASSERT_TRUE(good.ok()) << good.status();
}

// ---- attacks -----------------------------------------------------------------------------------

// Tests that 10^5 deadline calls in a loop leave nothing in flight or quarantined.
TEST(FunctionExecutorAttack, ManyDeadlineCallsStayBounded) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("echo", Echo()), ::framekit::testing::IsOk());
  constexpr int kCalls = 100000;
  int failures = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto result = executor.Invoke(Frame(), "echo", "x", kLongTimeout);
    if (!result.ok() && ++failures < 5) ADD_FAILURE() << result.status();
  }
  EXPECT_EQ(failures, 0);
  auto counters = executor.Counters("echo");
  ASSERT_TRUE(counters.ok()) << counters.status();
  EXPECT_EQ(counters->calls, static_cast<std::uint64_t>(kCalls));
  EXPECT_EQ(counters->quarantined, 0);
  EXPECT_EQ(executor.quarantined(), 0);
  for (int i = 0; i < 1000 && executor.Counters("echo")->in_flight != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(executor.Counters("echo")->in_flight, 0);
}

// Tests that the stuck function's quarantine is reported per function.
TEST(FunctionExecutorBulkhead, CountersReportPerFunctionQuarantine) {
  AppContext app;
  FunctionExecutor executor(app);
  Gate gate;
  std::latch started(1);
  ASSERT_TRUE(executor
                  .Register("stuck",
                            [&](const Frame&, std::string_view, Sink&) {
                              started.count_down();
                              gate.Wait();
                              return absl::OkStatus();
                            })
                  .ok());
  ASSERT_THAT(executor.Register("echo", Echo()), ::framekit::testing::IsOk());
  // Warm up: an idle worker exists, so the handler starts well before its deadline. (With
  // 50 ms and no warm-up, a loaded ThreadSanitizer run once started the worker after the
  // deadline: the handler never ran, and waiting for it hung the test.)
  ASSERT_THAT(executor.Invoke(Frame(), "echo", "", kLongTimeout), ::framekit::testing::IsOk());
  auto result = executor.Invoke(Frame(), "stuck", "", {{"timeout_ms", std::int64_t{500}}});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded) << result.status();
  for (int i = 0; i < 10000 && !started.try_wait(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(started.try_wait()) << "the worker never started the handler";
  EXPECT_EQ(executor.Counters("stuck")->quarantined, 1);
  EXPECT_EQ(executor.Counters("echo")->quarantined, 0);
  gate.Open();
  WaitForQuarantine(executor, 0);
  EXPECT_EQ(executor.Counters("stuck")->quarantined, 0);
}

// Tests that removing a function makes the fault monitor forget it: a host that registers,
// faults and removes functions keeps a bounded fault table.
TEST(FunctionExecutorLifecycle, RemoveForgetsTheFunctionsFaults) {
  AppContext app;
  FaultMonitor monitor;
  FunctionExecutor executor(app, {.monitor = &monitor});
  for (int i = 0; i < 50; ++i) {
    const std::string name = absl::StrCat("thrower", i);
    ASSERT_TRUE(executor
                    .Register(name,
                              [](const Frame&, std::string_view, Sink&) -> absl::Status {
                                throw std::runtime_error("boom");
                              })
                    .ok());
    EXPECT_EQ(executor.Invoke(Frame(), name, "").status().code(), absl::StatusCode::kInternal);
    EXPECT_EQ(monitor.extension_count(), 1u);
    ASSERT_THAT(executor.Remove(name), ::framekit::testing::IsOk());
    EXPECT_EQ(monitor.extension_count(), 0u) << name << " is still in the fault table";
  }
}

}  // namespace
}  // namespace framekit::dispatch
