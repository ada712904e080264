// Invocation ids: taken by each thread in blocks from its executor (function_executor.h,
// InvocationRecord::id). Unique per executor, increasing per thread, whatever the number of
// threads, blocks and executors a thread alternates between.
#include <algorithm>
#include <cstdint>
#include <latch>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/function_executor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;

Handler Echo() {
  return [](const Frame&, std::string_view payload, Sink& out) { return out.Write(payload); };
}

// The id of the newest record of `name` (only the calling thread calls it).
std::uint64_t NewestId(FunctionExecutor& executor, std::string_view name) {
  absl::StatusOr<std::vector<InvocationRecord>> records = executor.ListInvocations(name);
  EXPECT_THAT(records, IsOk());
  if (!records.ok() || records->empty()) return 0;
  return records->front().id;
}

// Tests threads whose calls span several blocks of ids: each thread's ids increase, and no id
// is handed out twice.
TEST(ExecutorIds, ConcurrentIdsAreUniqueAndIncreasePerThread) {
  constexpr int kThreads = 3;
  constexpr int kCalls = 2500;  // more than two blocks per thread
  AppContext app;
  FunctionExecutor executor(app);
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_THAT(executor.Register("f" + std::to_string(t), Echo()), IsOk());
  }
  std::vector<std::vector<std::uint64_t>> ids(kThreads);
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string name = "f" + std::to_string(t);
      start.arrive_and_wait();
      for (int i = 0; i < kCalls; ++i) {
        ASSERT_THAT(executor.Invoke(Frame(), name, "x"), IsOk());
        ids[t].push_back(NewestId(executor, name));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::uint64_t> all;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(ids[t].size(), static_cast<std::size_t>(kCalls));
    EXPECT_TRUE(std::is_sorted(ids[t].begin(), ids[t].end()));
    all.insert(ids[t].begin(), ids[t].end());
  }
  EXPECT_EQ(all.size(), static_cast<std::size_t>(kThreads * kCalls));
  EXPECT_EQ(all.count(0), 0u);
}

// Tests a thread alternating between two executors: each executor's ids stay increasing and
// distinct from those another thread takes from the same executor.
TEST(ExecutorIds, AlternatingExecutorsKeepTheirIdsApart) {
  AppContext app;
  FunctionExecutor a(app);
  FunctionExecutor b(app);
  ASSERT_THAT(a.Register("f", Echo()), IsOk());
  ASSERT_THAT(b.Register("f", Echo()), IsOk());
  ASSERT_THAT(b.Register("g", Echo()), IsOk());
  std::vector<std::uint64_t> a_ids, b_ids, other_ids;
  for (int i = 0; i < 50; ++i) {
    ASSERT_THAT(a.Invoke(Frame(), "f", "x"), IsOk());
    a_ids.push_back(NewestId(a, "f"));
    ASSERT_THAT(b.Invoke(Frame(), "f", "x"), IsOk());
    b_ids.push_back(NewestId(b, "f"));
    std::thread([&] {
      ASSERT_THAT(b.Invoke(Frame(), "g", "x"), IsOk());
      other_ids.push_back(NewestId(b, "g"));
    }).join();
  }
  EXPECT_TRUE(std::is_sorted(a_ids.begin(), a_ids.end()));
  EXPECT_TRUE(std::is_sorted(b_ids.begin(), b_ids.end()));
  EXPECT_EQ(std::set<std::uint64_t>(a_ids.begin(), a_ids.end()).size(), a_ids.size());
  std::set<std::uint64_t> b_all(b_ids.begin(), b_ids.end());
  b_all.insert(other_ids.begin(), other_ids.end());
  EXPECT_EQ(b_all.size(), b_ids.size() + other_ids.size());
}

// Tests a new executor made where an old one was (same address): the thread that called the
// old one must not go on with the old executor's block, which the new one hands out again.
TEST(ExecutorIds, NewExecutorAtTheSameAddressStartsItsOwnBlock) {
  AppContext app;
  std::optional<FunctionExecutor> executor;
  executor.emplace(app);
  const FunctionExecutor* old_address = &*executor;
  ASSERT_THAT(executor->Register("f", Echo()), IsOk());
  for (int i = 0; i < 3; ++i) ASSERT_THAT(executor->Invoke(Frame(), "f", "x"), IsOk());
  executor.reset();
  executor.emplace(app);
  ASSERT_EQ(&*executor, old_address);
  ASSERT_THAT(executor->Register("f", Echo()), IsOk());
  ASSERT_THAT(executor->Register("g", Echo()), IsOk());
  std::set<std::uint64_t> ids;
  for (int i = 0; i < 2; ++i) {
    ASSERT_THAT(executor->Invoke(Frame(), "f", "x"), IsOk());
    ids.insert(NewestId(*executor, "f"));
  }
  std::thread([&] {
    for (int i = 0; i < 10; ++i) {
      ASSERT_THAT(executor->Invoke(Frame(), "g", "x"), IsOk());
      ids.insert(NewestId(*executor, "g"));
    }
  }).join();
  EXPECT_EQ(ids.size(), 12u);
}

}  // namespace
}  // namespace framekit::dispatch
