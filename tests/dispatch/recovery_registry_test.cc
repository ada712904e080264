#include "framekit/dispatch/recovery_registry.h"

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "framekit/dispatch/fault_monitor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/fault_log.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::CollectingSink;
using ::framekit::testing::LoggerOptions;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

RecoveryHandler Returns(std::vector<int> slots, std::atomic<int>* calls = nullptr) {
  return [slots, calls]() -> absl::StatusOr<std::vector<int>> {
    if (calls != nullptr) ++*calls;
    return slots;
  };
}

class RecoveryRegistryTest : public ::testing::Test {
 protected:
  RecoveryRegistryOptions Options() {
    RecoveryRegistryOptions options;
    options.monitor = &monitor_;
    return options;
  }

  std::shared_ptr<CollectingSink> sink_ = std::make_shared<CollectingSink>();
  FaultMonitor monitor_{LoggerOptions(sink_)};
};

TEST_F(RecoveryRegistryTest, RegisterReturnsSizeAndRunAllConcatenatesInOrder) {
  RecoveryRegistry registry(Options());
  EXPECT_EQ(registry.size(), 0u);
  EXPECT_EQ(registry.Register("a", Returns({1, 2})), 1u);
  EXPECT_EQ(registry.Register("b", Returns({})), 2u);
  EXPECT_EQ(registry.Register("c", Returns({7})), 3u);
  EXPECT_EQ(registry.Register("empty", nullptr), 3u);
  EXPECT_THAT(registry.RunAll(), ElementsAre(1, 2, 7));
  EXPECT_THAT(registry.RunAll(), ElementsAre(1, 2, 7));
  EXPECT_EQ(registry.runs(), 2u);
  EXPECT_THAT(registry.names(), ElementsAre("a", "b", "c"));
}

TEST_F(RecoveryRegistryTest, EvictsThrowingHandlerOnFirstFaultAndLogsIt) {
  RecoveryRegistry registry(Options());
  std::atomic<int> healthy_calls{0};
  std::atomic<int> bad_calls{0};
  registry.Register("healthy", Returns({1}, &healthy_calls));
  registry.Register("bad", [&]() -> absl::StatusOr<std::vector<int>> {
    ++bad_calls;
    throw std::runtime_error("lease table corrupt");
  });
  registry.Register("after", Returns({3}));
  EXPECT_THAT(registry.RunAll(), ElementsAre(1, 3));
  EXPECT_EQ(registry.size(), 2u);
  EXPECT_EQ(registry.evictions(), 1u);
  EXPECT_THAT(registry.names(), ElementsAre("healthy", "after"));
  EXPECT_THAT(registry.RunAll(), ElementsAre(1, 3));
  EXPECT_EQ(bad_calls.load(), 1);
  EXPECT_EQ(healthy_calls.load(), 2);
  EXPECT_THAT(sink_->WithPrefix("recovery handler evicted"),
              ElementsAre(HasSubstr("name=\"bad\" faults=1 type=\"std::runtime_error\" "
                                    "message=\"lease table corrupt\"")));
  EXPECT_EQ(monitor_.faults("bad", Phase::kPoll), 1u);
}

TEST_F(RecoveryRegistryTest, EvictionFollowsThePolicy) {
  ::framekit::testing::ManualClock clock;
  RecoveryRegistryOptions options = Options();
  options.eviction = {2, std::chrono::seconds(10), FaultVerdict::kEvict};
  options.clock = clock.AsFaultClock();
  RecoveryRegistry registry(options);
  int calls = 0;
  registry.Register("flaky", [&]() -> absl::StatusOr<std::vector<int>> {
    if (++calls != 2) throw 1;  // faults on runs 1, 3 and 4
    return std::vector<int>{9};
  });
  EXPECT_THAT(registry.RunAll(), IsEmpty());
  EXPECT_EQ(registry.size(), 1u);
  EXPECT_THAT(registry.RunAll(), ElementsAre(9));
  clock.Advance(std::chrono::seconds(20));  // the first fault leaves the window
  EXPECT_THAT(registry.RunAll(), IsEmpty());
  EXPECT_EQ(registry.size(), 1u);
  EXPECT_THAT(registry.RunAll(), IsEmpty());  // second fault within 10 s: evicted
  EXPECT_EQ(registry.size(), 0u);
  EXPECT_EQ(calls, 4);
}

TEST_F(RecoveryRegistryTest, ErrorStatusKeepsHandler) {
  RecoveryRegistry registry(Options());
  registry.Register("busy", []() -> absl::StatusOr<std::vector<int>> {
    return absl::UnavailableError("store busy");
  });
  EXPECT_THAT(registry.RunAll(), IsEmpty());
  EXPECT_EQ(registry.size(), 1u);
  EXPECT_EQ(registry.evictions(), 0u);
  EXPECT_THAT(sink_->WithPrefix("recovery handler failed"), ElementsAre(HasSubstr("store busy")));
}

// Tests that a handler may register another handler: no deadlock, the new one runs from the
// next run on, after the handlers that were there before it.
TEST_F(RecoveryRegistryTest, ReentrantRegisterRunsNextTime) {
  RecoveryRegistry registry(Options());
  std::size_t size_seen = 0;
  bool registered = false;
  registry.Register("first", [&]() -> absl::StatusOr<std::vector<int>> {
    if (!registered) {
      registered = true;
      size_seen = registry.Register("late", Returns({99}));
    }
    return std::vector<int>{1};
  });
  registry.Register("second", Returns({2}));
  EXPECT_THAT(registry.RunAll(), ElementsAre(1, 2));
  EXPECT_EQ(size_seen, 3u);
  EXPECT_THAT(registry.names(), ElementsAre("first", "second", "late"));
  EXPECT_THAT(registry.RunAll(), ElementsAre(1, 2, 99));
}

TEST_F(RecoveryRegistryTest, SizeInsideHandlerCountsTheRunningHandlers) {
  RecoveryRegistry registry(Options());
  std::size_t seen = 0;
  registry.Register("a", Returns({}));
  registry.Register("probe", [&]() -> absl::StatusOr<std::vector<int>> {
    seen = registry.size();
    return std::vector<int>{};
  });
  registry.RunAll();
  EXPECT_EQ(seen, 2u);
}

TEST_F(RecoveryRegistryTest, ReentrantRunAllIsSkippedAndCounted) {
  RecoveryRegistry registry(Options());
  std::vector<int> inner = {-1};
  registry.Register("nested", [&]() -> absl::StatusOr<std::vector<int>> {
    inner = registry.RunAll();
    return std::vector<int>{5};
  });
  EXPECT_THAT(registry.RunAll(), ElementsAre(5));
  EXPECT_THAT(inner, IsEmpty());
  EXPECT_EQ(registry.skipped_runs(), 1u);
  EXPECT_EQ(registry.runs(), 1u);
  EXPECT_EQ(sink_->WithPrefix("recovery run skipped").size(), 1u);
}

// A handler that holds its run open until the test releases it.
struct Gate {
  std::latch entered{1};
  std::latch release{1};
  std::atomic<int> calls{0};
  RecoveryHandler Handler(int slot) {
    return [this, slot]() -> absl::StatusOr<std::vector<int>> {
      if (calls.fetch_add(1) == 0) {
        entered.count_down();
        release.wait();
      }
      return std::vector<int>{slot};
    };
  }
};

TEST_F(RecoveryRegistryTest, ConcurrentSizeDuringRunNeverReadsZero) {
  RecoveryRegistry registry(Options());
  Gate gate;
  registry.Register("gate", gate.Handler(1));
  registry.Register("other", Returns({2}));
  std::vector<int> result;
  std::thread runner([&] { result = registry.RunAll(); });
  gate.entered.wait();
  EXPECT_EQ(registry.size(), 2u);
  EXPECT_THAT(registry.names(), ElementsAre("gate", "other"));
  gate.release.count_down();
  runner.join();
  EXPECT_THAT(result, ElementsAre(1, 2));
  EXPECT_EQ(registry.size(), 2u);
}

// Tests RunAll overlapping a Register and a second RunAll: the handler registered during the
// first run is not part of it; the second run waits for the first and runs everything, so no
// tick is lost.
TEST_F(RecoveryRegistryTest, ConcurrentRunAllOverlapsRegisterAndRunAll) {
  RecoveryRegistry registry(Options());
  Gate gate;
  registry.Register("gate", gate.Handler(1));
  std::vector<int> first;
  std::vector<int> second;
  std::thread a([&] { first = registry.RunAll(); });
  gate.entered.wait();
  EXPECT_EQ(registry.Register("new", Returns({2})), 2u);
  std::latch b_started(1);
  std::thread b([&] {
    b_started.count_down();
    second = registry.RunAll();
  });
  b_started.wait();
  gate.release.count_down();
  a.join();
  b.join();
  EXPECT_THAT(first, ElementsAre(1));
  EXPECT_THAT(second, ElementsAre(1, 2));
  EXPECT_EQ(registry.runs(), 2u);
  EXPECT_EQ(registry.skipped_runs(), 0u);
  EXPECT_EQ(gate.calls.load(), 2);
}

TEST_F(RecoveryRegistryTest, ConcurrentRegisterAndRunAllLoseNothing) {
  RecoveryRegistry registry(Options());
  constexpr int kRegistrations = 200;
  std::latch start(2);
  std::thread registrar([&] {
    start.arrive_and_wait();
    for (int i = 0; i < kRegistrations; ++i) registry.Register("h", Returns({i}));
  });
  std::thread runner([&] {
    start.arrive_and_wait();
    for (int i = 0; i < 50; ++i) registry.RunAll();
  });
  registrar.join();
  runner.join();
  EXPECT_EQ(registry.size(), static_cast<std::size_t>(kRegistrations));
  const std::vector<int> all = registry.RunAll();
  ASSERT_EQ(all.size(), static_cast<std::size_t>(kRegistrations));
  for (int i = 0; i < kRegistrations; ++i) EXPECT_EQ(all[i], i);
}

// Tests that cancelling a thread blocked inside a handler unwinds through RunAll and leaves the
// registry usable: nothing evicted, the next RunAll runs.
TEST_F(RecoveryRegistryTest, CancellationDuringRunLeavesRegistryConsistent) {
  RecoveryRegistry registry(Options());
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::latch entered(1);
  std::atomic<bool> block{true};
  registry.Register("blocker", [&]() -> absl::StatusOr<std::vector<int>> {
    if (block.exchange(false)) {
      entered.count_down();
      // A cancellation point. The byte lives on the heap: see guard_test.cc's BlockingRead.
      const auto byte = std::make_unique<char>();
      [[maybe_unused]] ssize_t n = read(fds[0], byte.get(), 1);
    }
    return std::vector<int>{4};
  });
  registry.Register("next", Returns({5}));
  struct Args {
    RecoveryRegistry* registry;
  } args{&registry};
  pthread_t thread;
  ASSERT_EQ(pthread_create(
                &thread, nullptr,
                [](void* p) -> void* {
                  static_cast<Args*>(p)->registry->RunAll();
                  return nullptr;
                },
                &args),
            0);
  entered.wait();
  ASSERT_EQ(pthread_cancel(thread), 0);
  void* result = nullptr;
  ASSERT_EQ(pthread_join(thread, &result), 0);
  EXPECT_EQ(result, PTHREAD_CANCELED);
  EXPECT_EQ(registry.size(), 2u);
  EXPECT_THAT(registry.RunAll(), ElementsAre(4, 5));
  close(fds[0]);
  close(fds[1]);
}

}  // namespace
}  // namespace framekit::dispatch
