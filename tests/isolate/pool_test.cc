#include "framekit/isolate/pool.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "framekit/ctx/caller.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/isolate/internal/sandbox.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "tests/isolate/isolate_test_util.h"

namespace framekit::isolate {
namespace {

using ::framekit::isolate_test::Children;
using ::framekit::isolate_test::IsOkAndHolds;
using ::framekit::isolate_test::MakePool;
using ::framekit::isolate_test::ReadProcFile;
using ::framekit::isolate_test::StringSink;
using ::framekit::isolate_test::TestOptions;
using ::framekit::isolate_test::WaitForChildren;
using ::framekit::isolate_test::WaitForSpares;
using ::framekit::isolate_test::Zombies;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

absl::StatusOr<std::string> CallString(WorkerPool& pool, std::string_view handler,
                                       std::string_view payload = {}, const Frame& frame = Frame(),
                                       CallOptions options = {}, WorkerDeath* death = nullptr) {
  StringSink sink;
  absl::Status s = pool.Call(handler, frame, payload, sink, options, nullptr, death);
  if (!s.ok()) return s;
  return sink.out;
}

// Healthy calls on the same pool after a failure: the failing handler's neighbours and the pool
// itself are unaffected.
void ExpectHealthy(WorkerPool& pool) {
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<std::string> echo = CallString(pool, "echo", "still here");
    ASSERT_THAT(echo, IsOk());
    EXPECT_EQ(*echo, "still here");
  }
  EXPECT_THAT(CallString(pool, "chunks", "4"), IsOkAndHolds(std::string("0;1;2;3;")));
}

// After Shutdown, no child of the test process is left, zombie or alive.
void ExpectNoChildrenAfter(WorkerPool& pool) {
  pool.Shutdown();
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
  EXPECT_EQ(pool.stats().live, 0);
}

TEST(WorkerPool, EchoRoundTripAndStats) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  dispatch::RunStats stats;
  StringSink sink;
  ASSERT_THAT(pool->Call("echo", Frame(), "hello", sink, {}, &stats), IsOk());
  EXPECT_EQ(sink.out, "hello");
  EXPECT_EQ(stats.output_bytes, 5u);
  EXPECT_GT(stats.peak_memory_bytes, 0u);
  EXPECT_GE(pool->stats().calls, 1u);
  EXPECT_GE(pool->stats().spawned, 1u);
  EXPECT_GT(pool->stats().mean_startup.count(), 0);
  ExpectNoChildrenAfter(*pool);
}

// Tests that the portable pairs, the caller, the trace id and the remaining deadline reach the
// handler, the values marked inherited.
TEST(WorkerPool, FrameCrossesAsInherited) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  CallerContext caller;
  caller.user_id = "alice";
  const Frame frame = Frame()
                          .With({Pair::Of(isolate_test::kTenant, std::string("acme")),
                                 Pair::Of(CallerKey(), caller),
                                 Pair::Of(dispatch::TraceIdKey(), std::string("t-123"))})
                          .WithTimeout(std::chrono::seconds(5));
  absl::StatusOr<std::string> out = CallString(*pool, "frame", "", frame);
  ASSERT_THAT(out, IsOk());
  EXPECT_THAT(*out, HasSubstr("tenant=acme inherited=yes caller=alice trace=t-123"));
  int remaining = -1;
  ASSERT_EQ(std::sscanf(out->c_str() + out->find("remaining_ms=") + 13, "%d", &remaining), 1);
  EXPECT_GT(remaining, 3000);
  EXPECT_LE(remaining, 5000);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, HandlerStatusCrossesAndUnknownHandlerIsNotFound) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  EXPECT_THAT(CallString(*pool, "status", "no way"),
              StatusIs(absl::StatusCode::kPermissionDenied, "no way"));
  EXPECT_THAT(CallString(*pool, "missing"),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("missing")));
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

struct CrashCase {
  const char* handler;
  DeathKind kind;
  const char* summary;  // part of the death's summary
  bool stack;           // the crash handler records a stack
};

class WorkerCrash : public ::testing::TestWithParam<CrashCase> {};

// Tests that each way a native handler can kill its process is one faulted call: Internal with
// an ExtensionPanic, the death classified with its stack, and the pool healthy afterwards.
TEST_P(WorkerCrash, IsAFaultAndThePoolGoesOn) {
  const CrashCase& c = GetParam();
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  WorkerDeath death;
  absl::StatusOr<std::string> out = CallString(*pool, c.handler, "", Frame(), {}, &death);
  ASSERT_THAT(out, StatusIs(absl::StatusCode::kInternal, HasSubstr(c.summary)));
  const std::optional<ExtensionPanic> panic = GetExtensionPanic(out.status());
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->extension, c.handler);
  EXPECT_EQ(panic->phase, Phase::kInvoke);
  EXPECT_EQ(panic->type, "framekit::isolate::WorkerFault");
  EXPECT_EQ(death.kind, c.kind) << death.Summary();
  EXPECT_GT(death.pid, 0);
  if (c.stack) {
    EXPECT_FALSE(death.stack.empty()) << death.Summary();
    EXPECT_EQ(panic->stack, death.stack);
  }
  EXPECT_EQ(pool->stats().deaths, 1u);
  ExpectHealthy(*pool);
  EXPECT_EQ(Zombies(), 0);
  ExpectNoChildrenAfter(*pool);
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, WorkerCrash,
    ::testing::Values(
        CrashCase{"segv", DeathKind::kSignal, "SIGSEGV", true},
        CrashCase{"abort", DeathKind::kSignal, "SIGABRT", true},
        CrashCase{"exit", DeathKind::kExit, "exited with status 7", false},
        CrashCase{"noexcept_throw", DeathKind::kSignal,
                  "terminate: uncaught std::runtime_error: thrown out of noexcept", true},
        CrashCase{"stack_overflow", DeathKind::kSignal, "SIGSEGV", true},
        CrashCase{"throw", DeathKind::kHandlerThrew, "std::runtime_error: boom", false}),
    [](const ::testing::TestParamInfo<CrashCase>& info) {
      return std::string(info.param.handler);
    });

// Tests that a handler that never returns is killed at the deadline plus the grace, the call
// returns DeadlineExceeded then, and the next calls are served.
TEST(WorkerPool, SpinningHandlerIsKilledAtTheDeadline) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  const auto start = Clock::now();
  absl::StatusOr<std::string> out =
      CallString(*pool, "spin", "", Frame().WithTimeout(std::chrono::milliseconds(200)));
  const auto took = Clock::now() - start;
  EXPECT_THAT(out, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_GE(took, std::chrono::milliseconds(200));
  EXPECT_LT(took, std::chrono::milliseconds(200 + 20 + 800));  // grace, plus a loaded machine
  EXPECT_EQ(pool->stats().deadline_kills, 1u);
  EXPECT_EQ(pool->stats().deaths, 0u);
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

// Tests that a handler watching its stop token ends by itself: DeadlineExceeded, no kill.
TEST(WorkerPool, CooperativeHandlerStopsAtTheDeadlineWithoutAKill) {
  auto options = TestOptions();
  options.cancel_grace = std::chrono::milliseconds(2000);
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  const auto start = Clock::now();
  EXPECT_THAT(
      CallString(*pool, "cooperative", "", Frame().WithTimeout(std::chrono::milliseconds(100))),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1500));
  EXPECT_EQ(pool->stats().deadline_kills, 0u);
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, CancellationStopsTheCall) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  auto [frame, canceller] = Frame().WithCancel();
  std::thread cancel([c = canceller] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    c.Cancel();
  });
  EXPECT_THAT(CallString(*pool, "spin", "", frame), StatusIs(absl::StatusCode::kCancelled));
  cancel.join();
  EXPECT_THAT(CallString(*pool, "echo", "x", frame), StatusIs(absl::StatusCode::kCancelled));
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, MemoryBombHitsTheAddressSpaceLimit) {
  if (isolate_internal::SanitizerBuild()) {
    GTEST_SKIP() << "a sanitizer runtime reserves terabytes of shadow memory: no RLIMIT_AS";
  }
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  WorkerDeath death;
  absl::StatusOr<std::string> out = CallString(*pool, "memory_bomb", "", Frame(), {}, &death);
  EXPECT_THAT(out, StatusIs(absl::StatusCode::kInternal, HasSubstr("bad_alloc")));
  EXPECT_EQ(death.kind, DeathKind::kHandlerThrew);
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, FdExhaustionStopsAtTheCapAndLeavesTheHostAlone) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  ExpectHealthy(*pool);                  // the pool's own fds are open before we count
  ASSERT_TRUE(WaitForSpares(*pool, 2));  // no start in flight: its fds would be counted
  for (int i = 0; i < 1000 && pool->stats().live > pool->stats().spares; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // nor a retired worker's
  }
  const int host_fds = isolate_test::OpenFds();
  absl::StatusOr<std::string> out = CallString(*pool, "fd_exhaust");
  ASSERT_THAT(out,
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("Too many open files")));
  int opened = 0;
  ASSERT_EQ(std::sscanf(std::string(out.status().message()).c_str(), "opened %d", &opened), 1);
  EXPECT_LT(opened, 64);
  ExpectHealthy(*pool);
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  // No descriptor leaked by the exhausted worker's call. Retired workers keep theirs until the
  // spawner has reaped them (for a zygote's worker that waits for the zygote's status report):
  // wait until only the spares are alive.
  for (int i = 0; i < 1000 && pool->stats().live > pool->stats().spares; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_LE(isolate_test::OpenFds(), host_fds);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, SeccompViolationIsItsOwnKindOfFault) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  WorkerDeath death;
  EXPECT_THAT(CallString(*pool, "exec", "", Frame(), {}, &death),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("seccomp")));
  EXPECT_EQ(death.kind, DeathKind::kSeccomp);
  EXPECT_EQ(death.syscall, "execve");
  EXPECT_EQ(death.signal, SIGSYS);
  WorkerDeath forked;
  EXPECT_THAT(CallString(*pool, "fork", "", Frame(), {}, &forked),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("seccomp")));
  EXPECT_EQ(forked.kind, DeathKind::kSeccomp);
  EXPECT_EQ(forked.syscall, "clone");
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, WithoutSeccompExecRuns) {
  auto options = TestOptions();
  options.limits.seccomp = false;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  // execl replaces the worker with a shell that exits 0: the call ends as an exit, not SIGSYS.
  WorkerDeath death;
  EXPECT_THAT(CallString(*pool, "exec", "", Frame(), {}, &death),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(death.kind, DeathKind::kExit);
  ExpectNoChildrenAfter(*pool);
}

// Tests that fresh workers share nothing between calls and that reuse is per handler.
TEST(WorkerPool, FreshByDefaultReuseOptInPerHandler) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(CallString(*pool, "counter"), IsOkAndHolds(std::string("1")));
  }
  const CallOptions reuse{.reuse = true};
  for (int i = 1; i <= 3; ++i) {
    EXPECT_THAT(CallString(*pool, "counter", "", Frame(), reuse), IsOkAndHolds(std::to_string(i)));
  }
  absl::StatusOr<std::string> pid1 = CallString(*pool, "pid", "", Frame(), reuse);
  absl::StatusOr<std::string> pid2 = CallString(*pool, "pid", "", Frame(), reuse);
  ASSERT_THAT(pid1, IsOk());
  EXPECT_THAT(pid2, IsOkAndHolds(*pid1));
  // A fresh call never gets the reused worker.
  EXPECT_THAT(CallString(*pool, "pid"), IsOkAndHolds(Not(*pid1)));
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, CrashLoopBacksOffOnlyThatHandler) {
  auto options = TestOptions();
  options.respawn_backoff_min = std::chrono::milliseconds(100);
  options.respawn_backoff_max = std::chrono::milliseconds(5000);
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  const auto start = Clock::now();
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(CallString(*pool, "segv"), StatusIs(absl::StatusCode::kInternal));
  }
  // Backoffs after the 2nd, 3rd and 4th crash: 100 + 200 + 400 ms at least.
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(700));
  // The crashing handler is in backoff now (800 ms): a call whose deadline ends before the
  // backoff does fails at once instead of waiting.
  const auto refused_start = Clock::now();
  EXPECT_THAT(CallString(*pool, "segv", "", Frame().WithTimeout(std::chrono::milliseconds(10))),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("backing off")));
  EXPECT_LT(Clock::now() - refused_start, std::chrono::milliseconds(200));
  // Another handler is not slowed by it.
  ASSERT_TRUE(WaitForSpares(*pool, 1));
  const auto echo_start = Clock::now();
  EXPECT_THAT(CallString(*pool, "echo", "x"), IsOkAndHolds(std::string("x")));
  EXPECT_LT(Clock::now() - echo_start, std::chrono::milliseconds(400));
  EXPECT_EQ(pool->stats().deaths, 5u);
  EXPECT_EQ(pool->stats().zygote_starts, 1u);  // replacements forked by the zygote
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, GarbageFromAWorkerIsAProtocolFault) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  WorkerDeath death;
  EXPECT_THAT(CallString(*pool, "garbage", "", Frame(), {}, &death),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("protocol")));
  EXPECT_EQ(death.kind, DeathKind::kProtocol);
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, OutputBoundsAndLargeOutput) {
  auto options = TestOptions();
  options.max_output_bytes = 1 << 20;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  absl::StatusOr<std::string> big = CallString(*pool, "big", std::to_string(1 << 20));
  ASSERT_THAT(big, IsOk());
  EXPECT_EQ(big->size(), 1u << 20);
  EXPECT_THAT(CallString(*pool, "big", std::to_string((1 << 20) + 1)),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("wrote more than")));
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

class FailingSink final : public dispatch::Sink {
 public:
  absl::Status Write(std::string_view) override { return absl::CancelledError("caller left"); }
};

TEST(WorkerPool, SinkFailureEndsTheCallWithItsStatus) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  FailingSink sink;
  EXPECT_THAT(pool->Call("chunks", Frame(), "1000", sink),
              StatusIs(absl::StatusCode::kCancelled, "caller left"));
  ExpectHealthy(*pool);
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, CreateRejectsBadOptions) {
  auto options = TestOptions();
  options.executable = "";
  EXPECT_THAT(WorkerPool::Create(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = TestOptions();
  options.executable = "/nonexistent/worker";
  EXPECT_THAT(WorkerPool::Create(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("/nonexistent/worker")));
  options = TestOptions();
  options.max_workers = 0;
  EXPECT_THAT(WorkerPool::Create(options), StatusIs(absl::StatusCode::kInvalidArgument));
  options = TestOptions();
  options.spare_workers = 7;
  EXPECT_THAT(WorkerPool::Create(options), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Tests that an executable that is not a framekit worker fails calls with Unavailable, fast.
TEST(WorkerPool, ExecutableThatIsNotAWorkerIsUnavailable) {
  auto options = TestOptions();
  options.executable = "/bin/true";
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  EXPECT_THAT(CallString(*pool, "echo", "x"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("did not start")));
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, WorkerMainWithoutPoolArgumentsRefuses) {
  const std::string command = std::string(isolate_test::WorkerPath()) + " 2>/dev/null";
  const int status = std::system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
}

TEST(WorkerPool, BoundedPoolWaitsThenRefuses) {
  auto options = TestOptions();
  options.max_workers = 1;
  options.spare_workers = 0;
  // Long enough for a worker to start under the sanitizers on a loaded machine.
  options.acquire_timeout = std::chrono::milliseconds(2000);
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  std::thread slow([&] { EXPECT_THAT(CallString(*pool, "sleep", "6000"), IsOk()); });
  while (pool->stats().calls == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_THAT(CallString(*pool, "echo", "x"),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("no worker")));
  EXPECT_THAT(CallString(*pool, "echo", "x", Frame().WithTimeout(std::chrono::milliseconds(50))),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  slow.join();
  EXPECT_THAT(CallString(*pool, "echo", "x"), IsOkAndHolds(std::string("x")));
  ExpectNoChildrenAfter(*pool);
}

TEST(WorkerPool, ShutdownKillsBusyWorkersAndRefusesCalls) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  std::thread busy(
      [&] { EXPECT_THAT(CallString(*pool, "spin"), StatusIs(absl::StatusCode::kUnavailable)); });
  while (pool->stats().calls == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  pool->Shutdown();
  busy.join();
  EXPECT_THAT(CallString(*pool, "echo", "x"), StatusIs(absl::StatusCode::kUnavailable));
  pool->Shutdown();  // idempotent
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
}

// Tests that workers die with their host even when it is SIGKILLed (no orphans).
TEST(WorkerPool, WorkersDieWithAKilledHost) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t host = fork();
  ASSERT_GE(host, 0);
  if (host == 0) {
    dup2(out[1], STDOUT_FILENO);
    execl(isolate_test::WorkerPath(), isolate_test::WorkerPath(), "--as-host",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  std::string text;
  char buf[256];
  ssize_t n;
  while (std::count(text.begin(), text.end(), '\n') < 3 &&
         (n = read(out[0], buf, sizeof(buf))) > 0) {
    text.append(buf, n);
  }
  close(out[0]);
  std::vector<int> workers;
  for (std::size_t pos = 0; pos < text.size();) {
    const std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) break;
    workers.push_back(std::atoi(text.substr(pos, nl - pos).c_str()));
    pos = nl + 1;
  }
  // Two workers, then the zygote that forked them: all three must die with the host.
  ASSERT_EQ(workers.size(), 3u) << text;
  for (int pid : workers) {
    EXPECT_GT(pid, 0);
    EXPECT_EQ(kill(pid, 0), 0);
  }
  kill(host, SIGKILL);
  int status = 0;
  waitpid(host, &status, 0);
  // The orphans are reparented and reaped by init (or a subreaper): poll until they are gone.
  for (int pid : workers) {
    bool gone = false;
    for (int i = 0; i < 400 && !gone; ++i) {
      const std::string line = ReadProcFile("/proc/" + std::to_string(pid) + "/stat");
      gone = line.empty() || line.find(") Z") != std::string::npos;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    EXPECT_TRUE(gone) << "worker " << pid << " outlived its host";
  }
}

// Tests that concurrent calls on one pool, crashing and healthy, each get their own outcome.
TEST(WorkerPool, ConcurrentCallsWithCrashesAmongThem) {
  auto options = TestOptions();
  options.max_workers = 4;
  // Every call needs a fresh worker, started one at a time by the spawner: under a sanitizer on
  // a loaded machine a start takes a second or more. This test is about outcomes, not latency.
  options.acquire_timeout = std::chrono::seconds(120);
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  constexpr int kThreads = 4;
  constexpr int kCalls = 8;
  std::barrier start(kThreads);
  std::atomic<int> ok{0};
  std::atomic<int> faults{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kCalls; ++i) {
        if ((i + t) % 4 == 0) {
          absl::StatusOr<std::string> r = CallString(*pool, "segv");
          if (r.status().code() == absl::StatusCode::kInternal) {
            ++faults;
          } else {
            ADD_FAILURE() << "segv: " << r.status();
          }
        } else {
          const std::string payload = std::to_string(t * 100 + i);
          absl::StatusOr<std::string> r = CallString(*pool, "echo", payload);
          if (r.ok() && *r == payload) {
            ++ok;
          } else {
            ADD_FAILURE() << "echo " << payload << ": " << r.status();
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kThreads * kCalls * 3 / 4);
  EXPECT_EQ(faults.load(), kThreads * kCalls / 4);
  ExpectNoChildrenAfter(*pool);
}

}  // namespace
}  // namespace framekit::isolate
