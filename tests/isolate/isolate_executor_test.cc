// Isolated handlers behind the FunctionExecutor: a worker death is a fault of that function,
// counted by the executor's fault monitor under its policy, while every other call goes on.
#include <chrono>
#include <memory>
#include <string>

#include "framekit/app/app_context.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/isolate/pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "tests/isolate/isolate_test_util.h"

namespace framekit::isolate {
namespace {

using ::framekit::isolate_test::IsOkAndHolds;
using ::framekit::isolate_test::MakePool;
using ::framekit::isolate_test::WaitForChildren;
using ::framekit::isolate_test::WaitForSpares;
using ::framekit::isolate_test::Zombies;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;

dispatch::FaultMonitorOptions QuietMonitor(int evict_after) {
  dispatch::FaultMonitorOptions options;
  options.policy.max_faults = evict_after;
  options.policy.window = std::chrono::seconds(60);
  options.policy.on_trip = dispatch::FaultVerdict::kEvict;
  return options;
}

// An executor whose fault monitor evicts a function after `evict_after` faults, and a pool of
// the test workers.
struct ExecutorAndPool {
  explicit ExecutorAndPool(int evict_after)
      : monitor(QuietMonitor(evict_after)),
        executor(dispatch::FunctionExecutor::Create(app, {.monitor = &monitor})),
        pool(MakePool()) {}
  AppContext app;
  dispatch::FaultMonitor monitor;
  absl::StatusOr<std::unique_ptr<dispatch::FunctionExecutor>> executor;
  std::shared_ptr<WorkerPool> pool;
};

TEST(IsolatedCode, CrashIsAFaultOfThatFunctionOnly) {
  ExecutorAndPool host(3);
  dispatch::FaultMonitor& monitor = host.monitor;
  auto& executor = host.executor;
  ASSERT_THAT(executor, IsOk());
  const std::shared_ptr<WorkerPool>& pool = host.pool;
  ASSERT_NE(pool, nullptr);
  ASSERT_THAT((*executor)->Register("crashy", IsolatedCode(pool, "segv")), IsOk());
  ASSERT_THAT((*executor)->Register("echo", IsolatedCode(pool, "echo")), IsOk());
  ASSERT_THAT((*executor)->Register("local", [](const Frame&, std::string_view p,
                                                dispatch::Sink& out) { return out.Write(p); }),
              IsOk());

  absl::StatusOr<std::string> crashed = (*executor)->Invoke(Frame(), "crashy", "");
  ASSERT_THAT(crashed, StatusIs(absl::StatusCode::kInternal, HasSubstr("SIGSEGV")));
  const std::optional<ExtensionPanic> panic = GetExtensionPanic(crashed.status());
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->extension, "crashy@v1");
  EXPECT_EQ(panic->type, "framekit::isolate::WorkerFault");
  ASSERT_EQ(panic->nested.size(), 1u);
  EXPECT_THAT(panic->nested[0], HasSubstr("framekit::isolate::WorkerStack"));
  EXPECT_EQ(monitor.faults("crashy@v1", Phase::kInvoke), 1u);
  EXPECT_THAT((*executor)->Counters("crashy"), IsOk());
  EXPECT_EQ((*executor)->Counters("crashy")->faults, 1u);

  EXPECT_THAT((*executor)->Invoke(Frame(), "echo", "hi"), IsOkAndHolds(std::string("hi")));
  EXPECT_THAT((*executor)->Invoke(Frame(), "local", "yo"), IsOkAndHolds(std::string("yo")));

  // The fault policy evicts after three: the function is disabled, the others are not.
  EXPECT_THAT((*executor)->Invoke(Frame(), "crashy", ""), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT((*executor)->Invoke(Frame(), "crashy", ""), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT((*executor)->Invoke(Frame(), "crashy", ""),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT((*executor)->Invoke(Frame(), "echo", "hi"), IsOkAndHolds(std::string("hi")));
  ASSERT_THAT((*executor)->Shutdown(std::chrono::seconds(2)), IsOk());
  pool->Shutdown();
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
}

// Tests that a deadline call of an isolated spinning handler returns DeadlineExceeded at the
// deadline and quarantines nothing: the worker process is killed, no thread is stuck.
TEST(IsolatedCode, DeadlineKillsTheWorkerAndQuarantinesNothing) {
  ExecutorAndPool host(100);
  auto& executor = host.executor;
  ASSERT_THAT(executor, IsOk());
  const std::shared_ptr<WorkerPool>& pool = host.pool;
  ASSERT_NE(pool, nullptr);
  ASSERT_THAT(
      (*executor)->Register("spin", IsolatedCode(pool, "spin"), Options{{"timeout_ms", 150}}),
      IsOk());
  ASSERT_THAT((*executor)->Register("frame", IsolatedCode(pool, "frame")), IsOk());
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  const auto start = Clock::now();
  EXPECT_THAT((*executor)->Invoke(Frame(), "spin", ""),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(1));
  EXPECT_EQ((*executor)->quarantined(), 0);
  EXPECT_EQ((*executor)->Counters("spin")->timeouts, 1u);
  EXPECT_EQ(pool->stats().deadline_kills, 1u);
  // The trace id and caller set by the executor cross to the worker.
  absl::StatusOr<std::string> out =
      (*executor)->Invoke(Frame(), "frame", "", {{"trace_id", "abc123"}});
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, HasSubstr("trace=abc123"));
  ASSERT_THAT((*executor)->Shutdown(std::chrono::seconds(2)), IsOk());
  pool->Shutdown();
  EXPECT_EQ(WaitForChildren(0), 0u);
}

TEST(IsolatedCode, NullPoolOrNameGivesNoCode) {
  EXPECT_EQ(IsolatedCode(nullptr, "x"), nullptr);
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  EXPECT_EQ(IsolatedCode(pool, ""), nullptr);
  EXPECT_TRUE(IsolatedCode(pool, "echo")->preemptive());
}

}  // namespace
}  // namespace framekit::isolate
