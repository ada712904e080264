// The executor's lock-free function table (calls read it without a lock or a reference count;
// replaced tables are freed once no call can read them) and its call clock.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/internal/call_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::AnyOf;
using ::testing::Eq;

// A handler that writes `text` and holds `token` (so the test can see when it is freed).
Handler Writes(std::string text, std::shared_ptr<int> token) {
  return [text = std::move(text), token = std::move(token)](const Frame&, std::string_view,
                                                            Sink& out) { return out.Write(text); };
}

// Tests that a removed function is freed as soon as no call can still use it: at once when no
// call is running, and only after the running call ended (plus one later write) otherwise.
TEST(FunctionExecutorTable, RemovedFunctionIsFreedOnceNoCallCanUseIt) {
  AppContext app;
  FunctionExecutor executor(app);
  auto token = std::make_shared<int>(1);
  const std::weak_ptr<int> watch = token;
  ASSERT_THAT(executor.Register("tmp", Writes("t", std::move(token))), IsOk());
  ASSERT_THAT(executor.Invoke(Frame(), "tmp", ""), IsOk());
  ASSERT_THAT(executor.Remove("tmp"), IsOk());
  EXPECT_TRUE(watch.expired()) << "no call was running: the removed function must be freed";

  // Now with a call in flight that entered before the removal.
  auto token2 = std::make_shared<int>(2);
  const std::weak_ptr<int> watch2 = token2;
  ASSERT_THAT(executor.Register("tmp2", Writes("t", std::move(token2))), IsOk());
  std::latch started(1), release(1);
  ASSERT_THAT(executor.Register("slow",
                                [&](const Frame&, std::string_view, Sink& out) {
                                  started.count_down();
                                  release.wait();
                                  return out.Write("slow");
                                }),
              IsOk());
  std::thread caller([&] { EXPECT_THAT(executor.Invoke(Frame(), "slow", ""), IsOk()); });
  started.wait();
  ASSERT_THAT(executor.Remove("tmp2"), IsOk());
  EXPECT_FALSE(watch2.expired()) << "a running call may still read the table holding it";
  EXPECT_THAT(executor.Invoke(Frame(), "tmp2", ""), StatusIs(absl::StatusCode::kNotFound));
  release.count_down();
  caller.join();
  ASSERT_THAT(executor.Register("later", Writes("l", nullptr)), IsOk());
  EXPECT_TRUE(watch2.expired()) << "the next write after the call left must free it";
}

// Tests that a handler may remove its own function and keep running: the call's record and
// counters are written after the removal, into a function that must still be alive (ASan).
TEST(FunctionExecutorTable, HandlerRemovesItsOwnFunction) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("self",
                                [&executor](const Frame&, std::string_view, Sink& out) {
                                  absl::Status removed = executor.Remove("self");
                                  if (!removed.ok()) return removed;
                                  // Another write, which frees what it can: not this call's.
                                  (void)executor.Register("other", Writes("o", nullptr));
                                  return out.Write("still here");
                                }),
              IsOk());
  absl::StatusOr<std::string> out = executor.Invoke(Frame(), "self", "");
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ(*out, "still here");
  EXPECT_THAT(executor.Counters("self"), StatusIs(absl::StatusCode::kNotFound));
}

// Tests calls racing with Register, Deploy and Remove: every call sees a whole table (an output
// of a deployed version, or NotFound for a removed name), nothing is used after it is freed
// (TSan, ASan), and the functions removed are all freed by the end.
TEST(FunctionExecutorTable, ConcurrentCallsWhileTheTableChanges) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("stable", Writes("v1", nullptr)), IsOk());
  constexpr int kWrites = 300;
  std::atomic<bool> stop{false};
  std::atomic<int> calls{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 2; ++t) {
    callers.emplace_back([&, t] {
      while (!stop.load()) {
        absl::StatusOr<std::string> out = executor.Invoke(Frame(), "stable", "");
        ASSERT_THAT(out, IsOk());
        EXPECT_THAT(*out, AnyOf(Eq("v1"), Eq("v2")));
        absl::StatusOr<std::string> churn = executor.Invoke(Frame(), absl::StrCat("churn", t), "");
        if (!churn.ok()) {
          EXPECT_THAT(churn, StatusIs(absl::StatusCode::kNotFound));
        }
        calls.fetch_add(1);
      }
    });
  }
  // Calls must really overlap the writes: wait for the callers to be running, and let them make
  // progress every few writes (on a loaded machine they may not have been scheduled yet).
  auto wait_for_calls = [&](int at_least) {
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (calls.load() < at_least && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
  };
  wait_for_calls(2);
  std::vector<std::weak_ptr<int>> watches;
  for (int i = 0; i < kWrites; ++i) {
    if (i % 50 == 0) wait_for_calls(calls.load() + 2);
    auto token = std::make_shared<int>(i);
    watches.push_back(token);
    const std::string name = absl::StrCat("churn", i % 2);
    ASSERT_THAT(executor.Register(name, Writes("c", std::move(token))), IsOk());
    ASSERT_THAT(executor.Deploy("stable", Writes(i % 2 == 0 ? "v2" : "v1", nullptr)), IsOk());
    ASSERT_THAT(executor.Remove(name), IsOk());
  }
  stop.store(true);
  for (std::thread& t : callers) t.join();
  EXPECT_GT(calls.load(), 0);
  ASSERT_THAT(executor.Register("last", Writes("l", nullptr)), IsOk());  // frees what is left
  EXPECT_TRUE(std::all_of(watches.begin(), watches.end(),
                          [](const std::weak_ptr<int>& w) { return w.expired(); }));
}

// Tests that the call clock reads the steady clock: each reading lies between two readings of
// Clock::now() around it, within the documented accuracy (generous here, for loaded and
// sanitized builds), over more than one anchor renewal; and never steps back by more.
TEST(CallClock, ReadsTheSteadyClock) {
  using dispatch_internal::CallClock;
  const auto slack = std::chrono::microseconds(50);
  const Clock::time_point until = Clock::now() + 4 * CallClock::kReanchorInterval;
  Clock::time_point previous = CallClock::Now();
  int readings = 0;
  while (Clock::now() < until) {
    const Clock::time_point before = Clock::now();
    const Clock::time_point reading = CallClock::Now();
    const Clock::time_point after = Clock::now();
    ASSERT_GE(reading, before - slack);
    ASSERT_LE(reading, after + slack);
    ASSERT_GE(reading, previous - slack);
    previous = reading;
    ++readings;
  }
  EXPECT_GT(readings, 0);
  RecordProperty("uses_counter", CallClock::UsesCounter() ? "yes" : "no");
}

// Tests that records keep end >= start and durations that match the handler's sleep.
TEST(CallClock, RecordsMeasureTheCall) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("nap",
                                [](const Frame&, std::string_view, Sink&) {
                                  std::this_thread::sleep_for(std::chrono::milliseconds(3));
                                  return absl::OkStatus();
                                }),
              IsOk());
  ASSERT_THAT(executor.Invoke(Frame(), "nap", ""), IsOk());
  auto records = executor.ListInvocations("nap");
  ASSERT_THAT(records, IsOk());
  ASSERT_EQ(records->size(), 1u);
  EXPECT_GE((*records)[0].duration, std::chrono::milliseconds(3) - std::chrono::microseconds(50));
  EXPECT_LT((*records)[0].duration, std::chrono::seconds(5));
  EXPECT_GE((*records)[0].end, (*records)[0].start);
}

}  // namespace
}  // namespace framekit::dispatch
