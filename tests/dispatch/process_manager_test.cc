#include "framekit/dispatch/process_manager.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/interceptors.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "support/tenant_app.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;

using ::framekit::testing::kTenant;
using ::framekit::testing::TenantApp;

using ::testing::HasSubstr;

constexpr auto kLong = std::chrono::seconds(30);

// Blocks until the frame's stop token fires.
void WaitForStop(const ProcessContext& ctx) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, ctx.stop_token(), [] { return false; });
}

ProcessSpec Idle(std::string name) {
  ProcessSpec spec;
  spec.name = std::move(name);
  spec.poll = [](ProcessContext&) { return Step::kIdle; };
  return spec;
}

const ProcessInfo* InfoOf(const std::vector<ProcessInfo>& list, Pid pid) {
  for (const ProcessInfo& info : list) {
    if (info.pid == pid) return &info;
  }
  return nullptr;
}

// Tests the generic contract: a process finds a brand-new resolver's pair on its frame.
TEST(ProcessManager, ProcessSeesNewResolverPair) {
  TenantApp app;
  ProcessManager manager(app.app);
  std::string tenant;
  ProcessSpec spec = Idle("tenant");
  spec.setup = [&](ProcessContext& ctx) {
    const std::string* t = ctx.frame().Find(kTenant);
    tenant = t ? *t : "<none>";
    return absl::OkStatus();
  };
  spec.poll = [](ProcessContext&) { return Step::kDone; };
  auto pid = manager.Start(Frame(), spec, {{"tenant", "acme"}});
  ASSERT_THAT(pid, IsOk()) << pid.status();
  auto exit = manager.Wait(*pid, kLong);
  ASSERT_THAT(exit, IsOk());
  EXPECT_THAT(exit->status, IsOk()) << exit->status;
  EXPECT_EQ(tenant, "acme");
}

TEST(ProcessManager, FailingResolverKeepsProcessFromStarting) {
  TenantApp app;
  ProcessManager manager(app.app);
  std::atomic<int> setups{0};
  ProcessSpec spec = Idle("p");
  spec.setup = [&](ProcessContext&) {
    ++setups;
    return absl::OkStatus();
  };
  auto pid = manager.Start(Frame(), spec, {{"tenant", "forbidden"}});
  EXPECT_EQ(pid.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(pid.status().message(), HasSubstr("frame resolver \"test.tenant\""));
  manager.Shutdown();
  EXPECT_EQ(setups.load(), 0);
  EXPECT_TRUE(manager.List().empty());
}

TEST(ProcessManager, InterceptorRefusesStart) {
  AppContext app;
  auto interceptors = std::make_shared<Interceptors>();
  ASSERT_THAT(
      interceptors->Register("deny", 1,
                             [](Call& call, const Next& next) -> absl::Status {
                               if (call.kind == CallKind::kStart && call.target == "blocked") {
                                 return absl::PermissionDeniedError("no");
                               }
                               return next(call);
                             }),
      IsOk());
  ProcessManager manager(app, {.workers = 2, .interceptors = interceptors});
  EXPECT_EQ(manager.Start(Frame(), Idle("blocked")).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(manager.Start(Frame(), Idle("allowed")), IsOk());
}

TEST(ProcessManager, RejectsBadSpecsAndUnknownPids) {
  AppContext app;
  ProcessManager manager(app);
  EXPECT_EQ(manager.Start(Frame(), Idle("")).status().code(), absl::StatusCode::kInvalidArgument);
  ProcessSpec no_poll;
  no_poll.name = "x";
  EXPECT_EQ(manager.Start(Frame(), no_poll).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager.Send(999, "m").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager.Stop(999, kLong).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager.Wait(999, kLong).status().code(), absl::StatusCode::kNotFound);
  auto pid = manager.Start(Frame(), Idle("idle"));
  ASSERT_THAT(pid, IsOk());
  EXPECT_EQ(manager.Wait(*pid, std::chrono::milliseconds(1)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
}

TEST(ProcessManager, DeliversMessagesInOrder) {
  AppContext app;
  ProcessManager manager(app);
  std::vector<std::string> got;
  std::latch three(3);
  ProcessSpec spec = Idle("echo");
  spec.poll = [&](ProcessContext& ctx) {
    std::optional<std::string> message = ctx.Receive();
    if (!message) return Step::kIdle;
    got.push_back(*message);
    three.count_down();
    return Step::kBusy;
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  for (const char* m : {"a", "b", "c"}) ASSERT_THAT(manager.Send(*pid, m), IsOk());
  three.wait();
  ASSERT_THAT(manager.Stop(*pid, kLong), IsOk());
  EXPECT_EQ(got, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(manager.Send(*pid, "late").code(), absl::StatusCode::kFailedPrecondition);
}

// Tests that the longest idle interval parks a process (its timer saturates instead of wrapping
// into the past, which polled it without a pause) and that a message still wakes it.
TEST(ProcessManager, HugeIdleIntervalParksTheProcess) {
  AppContext app;
  ProcessManager manager(app);
  std::atomic<int> polls{0};
  std::latch woken(1);
  ProcessSpec spec = Idle("parked");
  spec.idle_interval = std::chrono::milliseconds::max();
  spec.poll = [&](ProcessContext& ctx) {
    polls.fetch_add(1);
    if (ctx.Receive()) woken.count_down();
    return Step::kIdle;
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_LE(polls.load(), 2) << "an idle process was polled without a pause";
  ASSERT_THAT(manager.Send(*pid, "wake"), IsOk());
  woken.wait();
  ASSERT_THAT(manager.Stop(*pid, kLong), IsOk());
}

TEST(ProcessManager, FullMailboxIsResourceExhausted) {
  AppContext app;
  ProcessManager manager(app);
  std::latch release(1);
  ProcessSpec spec = Idle("slow");
  spec.mailbox_capacity = 2;
  spec.setup = [&](ProcessContext&) {
    release.wait();  // nothing is drained while setup runs
    return absl::OkStatus();
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  EXPECT_THAT(manager.Send(*pid, "1"), IsOk());
  EXPECT_THAT(manager.Send(*pid, "2"), IsOk());
  EXPECT_EQ(manager.Send(*pid, "3").code(), absl::StatusCode::kResourceExhausted);
  release.count_down();
  EXPECT_THAT(manager.Stop(*pid, kLong), IsOk());
}

// Tests that a process faulting on every poll is stopped by its fault policy, with teardown and
// finalize run, while a healthy process beside it goes on.
TEST(ProcessManager, ProcessFaultingEveryPollStopsAtIntensity) {
  AppContext app;
  FaultMonitor monitor;
  ProcessManager manager(app, {.workers = 2, .monitor = &monitor});
  std::atomic<int> polls{0}, teardowns{0}, finalizes{0};
  ProcessSpec bad;
  bad.name = "bad";
  bad.poll = [&](ProcessContext&) -> Step {
    ++polls;
    throw std::runtime_error("poll broke");
  };
  bad.idle_interval = std::chrono::milliseconds(1);
  bad.poll_faults = {
      .max_faults = 3, .window = std::chrono::hours(1), .on_trip = FaultVerdict::kEvict};
  bad.teardown = [&](ProcessContext&) { ++teardowns; };
  bad.finalize = [&](ProcessContext&) { ++finalizes; };
  std::latch healthy_polled(1);
  std::atomic<int> good_polls{0};
  ProcessSpec good = Idle("good");
  good.poll = [&](ProcessContext&) {
    if (++good_polls == 5) healthy_polled.count_down();
    return Step::kBusy;
  };
  auto good_pid = manager.Start(Frame(), good);
  auto bad_pid = manager.Start(Frame(), bad);
  ASSERT_THAT(good_pid, IsOk());
  ASSERT_THAT(bad_pid, IsOk());
  auto exit = manager.Wait(*bad_pid, kLong);
  ASSERT_THAT(exit, IsOk());
  EXPECT_EQ(exit->status.code(), absl::StatusCode::kAborted);
  EXPECT_THAT(exit->status.message(), HasSubstr("3 poll faults"));
  auto panic = GetExtensionPanic(exit->status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->phase, Phase::kPoll);
  EXPECT_EQ(panic->message, "poll broke");
  EXPECT_EQ(polls.load(), 3);
  EXPECT_EQ(teardowns.load(), 1);
  EXPECT_EQ(finalizes.load(), 1);
  EXPECT_EQ(monitor.faults("bad", Phase::kPoll), 3u);
  const auto list = manager.List();
  ASSERT_NE(InfoOf(list, *bad_pid), nullptr);
  EXPECT_EQ(InfoOf(list, *bad_pid)->faults, 3u);
  EXPECT_EQ(InfoOf(list, *bad_pid)->state, ProcessState::kExited);
  healthy_polled.wait();
  EXPECT_THAT(manager.Stop(*good_pid, kLong), IsOk());
  EXPECT_THAT(manager.Wait(*good_pid, kLong)->status, IsOk());
}

TEST(ProcessManager, StopDuringSetup) {
  AppContext app;
  ProcessManager manager(app);
  std::latch in_setup(1);
  std::atomic<int> polls{0}, teardowns{0}, finalizes{0};
  ProcessSpec spec = Idle("p");
  spec.setup = [&](ProcessContext& ctx) {
    in_setup.count_down();
    WaitForStop(ctx);
    return absl::OkStatus();
  };
  spec.poll = [&](ProcessContext&) {
    ++polls;
    return Step::kIdle;
  };
  spec.teardown = [&](ProcessContext&) { ++teardowns; };
  spec.finalize = [&](ProcessContext&) { ++finalizes; };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  in_setup.wait();
  EXPECT_EQ(InfoOf(manager.List(), *pid)->state, ProcessState::kStarting);
  EXPECT_THAT(manager.Stop(*pid, kLong), IsOk());
  EXPECT_THAT(manager.Wait(*pid, kLong)->status, IsOk());
  EXPECT_EQ(polls.load(), 0);
  EXPECT_EQ(teardowns.load(), 1);
  EXPECT_EQ(finalizes.load(), 1);
}

TEST(ProcessManager, StopReportsOverrun) {
  AppContext app;
  ProcessManager manager(app);
  std::latch polling(1), release(1);
  ProcessSpec spec = Idle("stubborn");
  spec.poll = [&](ProcessContext&) {
    polling.count_down();
    release.wait();  // ignores the stop token
    return Step::kIdle;
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  polling.wait();
  const absl::Status stop = manager.Stop(*pid, std::chrono::milliseconds(20));
  EXPECT_EQ(stop.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(stop.message(), HasSubstr("overran"));
  EXPECT_EQ(InfoOf(manager.List(), *pid)->state, ProcessState::kStopping);
  release.count_down();
  EXPECT_THAT(manager.Wait(*pid, kLong)->status, IsOk());
}

TEST(ProcessManager, SetupFaultIsFailedStart) {
  AppContext app;
  ProcessManager manager(app);
  std::atomic<int> teardowns{0}, finalizes{0};
  ProcessSpec spec = Idle("broken");
  spec.setup = [](ProcessContext&) -> absl::Status { throw std::logic_error("bad config"); };
  spec.teardown = [&](ProcessContext&) { ++teardowns; };
  spec.finalize = [&](ProcessContext&) -> void {
    ++finalizes;
    throw 7;
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  auto exit = manager.Wait(*pid, kLong);
  ASSERT_THAT(exit, IsOk());
  auto panic = GetExtensionPanic(exit->status);
  ASSERT_TRUE(panic.has_value()) << exit->status;
  EXPECT_EQ(panic->phase, Phase::kSetup);
  EXPECT_EQ(teardowns.load(), 0);
  EXPECT_EQ(finalizes.load(), 1);
  // The manager goes on.
  auto ok_pid = manager.Start(Frame(), Idle("fine"));
  ASSERT_THAT(ok_pid, IsOk());
  EXPECT_THAT(manager.Stop(*ok_pid, kLong), IsOk());
}

TEST(ProcessManager, RestartOnFailureIsLimitedByIntensity) {
  AppContext app;
  ProcessManager manager(app);
  std::atomic<int> setups{0};
  ProcessSpec spec = Idle("crashy");
  spec.restart = RestartPolicy::kOnFailure;
  spec.max_restarts = 2;
  spec.restart_window = std::chrono::hours(1);
  spec.setup = [&](ProcessContext&) {
    ++setups;
    return absl::UnavailableError("dependency down");
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  auto exit = manager.Wait(*pid, kLong);
  ASSERT_THAT(exit, IsOk());
  EXPECT_EQ(exit->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(exit->status.message(), HasSubstr("stays down"));
  EXPECT_EQ(setups.load(), 3);
  EXPECT_EQ(InfoOf(manager.List(), *pid)->restarts, 2);

  ProcessSpec never = spec;
  never.name = "once";
  never.restart = RestartPolicy::kNever;
  setups = 0;
  auto once = manager.Start(Frame(), never);
  ASSERT_THAT(once, IsOk());
  EXPECT_EQ(manager.Wait(*once, kLong)->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(setups.load(), 1);
}

TEST(ProcessManager, ShutdownStopsEveryProcess) {
  AppContext app;
  auto manager = std::make_unique<ProcessManager>(app, ProcessManagerOptions{.workers = 2});
  std::atomic<int> finalizes{0};
  std::vector<Pid> pids;
  for (int i = 0; i < 10; ++i) {
    ProcessSpec spec = Idle(absl::StrCat("p", i));
    spec.idle_interval = std::chrono::hours(1);  // only a wake-up ends the park
    spec.finalize = [&](ProcessContext&) { ++finalizes; };
    auto pid = manager->Start(Frame(), spec);
    ASSERT_THAT(pid, IsOk());
    pids.push_back(*pid);
  }
  manager->Shutdown();
  EXPECT_EQ(finalizes.load(), 10);
  for (const ProcessInfo& info : manager->List()) EXPECT_EQ(info.state, ProcessState::kExited);
  EXPECT_EQ(manager->Start(Frame(), Idle("late")).status().code(),
            absl::StatusCode::kFailedPrecondition);
  manager.reset();
}

TEST(ProcessManager, ConcurrentSendersAndProcessesBesideAFaultingOne) {
  TenantApp app;
  ProcessManager manager(app.app, {.workers = 3});
  constexpr int kProcesses = 4;
  constexpr int kMessages = 200;
  std::array<std::atomic<int>, kProcesses> received{};
  std::array<std::string, kProcesses> tenants;
  std::vector<Pid> pids;
  for (int i = 0; i < kProcesses; ++i) {
    ProcessSpec spec = Idle(absl::StrCat("worker", i));
    spec.mailbox_capacity = kMessages;
    spec.setup = [&, i](ProcessContext& ctx) {
      tenants[i] = *ctx.frame().Find(kTenant);
      return absl::OkStatus();
    };
    spec.poll = [&, i](ProcessContext& ctx) {
      if (!ctx.Receive()) return Step::kIdle;
      ++received[i];
      return Step::kBusy;
    };
    auto pid = manager.Start(Frame(), spec, {{"tenant", absl::StrCat("t", i)}});
    ASSERT_THAT(pid, IsOk());
    pids.push_back(*pid);
  }
  ProcessSpec bad = Idle("faulty");
  bad.idle_interval = std::chrono::milliseconds(1);
  bad.poll_faults.max_faults = 1000000;  // keeps faulting, never stopped by intensity
  bad.poll = [](ProcessContext&) -> Step { throw std::runtime_error("again"); };
  auto bad_pid = manager.Start(Frame(), bad);
  ASSERT_THAT(bad_pid, IsOk());

  std::latch go(kProcesses);
  std::vector<std::thread> senders;
  std::atomic<int> send_failures{0};
  for (int i = 0; i < kProcesses; ++i) {
    senders.emplace_back([&, i] {
      go.arrive_and_wait();
      for (int m = 0; m < kMessages; ++m) {
        if (!manager.Send(pids[i], "m").ok()) ++send_failures;
      }
    });
  }
  for (auto& sender : senders) sender.join();
  EXPECT_EQ(send_failures.load(), 0);
  for (int i = 0; i < kProcesses; ++i) {
    while (received[i].load() < kMessages) std::this_thread::yield();
    EXPECT_THAT(manager.Stop(pids[i], kLong), IsOk());
    EXPECT_EQ(tenants[i], absl::StrCat("t", i));
  }
  EXPECT_THAT(manager.Stop(*bad_pid, kLong), IsOk());
  EXPECT_GT(InfoOf(manager.List(), *bad_pid)->faults, 0u);
}

// Tests that a parent whose deadline already passed never reaches setup.
TEST(ProcessManager, StartWithExpiredParentDeadlineIsDeadlineExceeded) {
  AppContext app;
  ProcessManager manager(app);
  std::atomic<int> setups{0};
  ProcessSpec spec = Idle("late");
  spec.setup = [&](ProcessContext&) {
    ++setups;
    return absl::OkStatus();
  };
  const Frame expired = Frame().WithDeadline(Clock::now() - std::chrono::seconds(1));
  auto pid = manager.Start(expired, spec);
  EXPECT_EQ(pid.status().code(), absl::StatusCode::kDeadlineExceeded) << pid.status();
  manager.Shutdown();
  EXPECT_EQ(setups.load(), 0);
  EXPECT_TRUE(manager.List().empty());
}

// Tests that a parent whose scope is already cancelled never reaches setup.
TEST(ProcessManager, StartWithCancelledParentIsCancelled) {
  AppContext app;
  ProcessManager manager(app);
  std::atomic<int> setups{0};
  ProcessSpec spec = Idle("gone");
  spec.setup = [&](ProcessContext&) {
    ++setups;
    return absl::OkStatus();
  };
  auto [parent, canceller] = Frame().WithCancel();
  canceller.Cancel();
  auto pid = manager.Start(parent, spec);
  EXPECT_EQ(pid.status().code(), absl::StatusCode::kCancelled) << pid.status();
  manager.Shutdown();
  EXPECT_EQ(setups.load(), 0);
  EXPECT_TRUE(manager.List().empty());
}

// Tests that what a process's callbacks captured is released when it exits, not when the
// manager is destroyed.
TEST(ProcessManager, ExitReleasesCallbacks) {
  AppContext app;
  ProcessManager manager(app);
  auto resource = std::make_shared<int>(42);
  ProcessSpec spec = Idle("holder");
  spec.setup = [resource](ProcessContext&) { return absl::OkStatus(); };
  spec.poll = [resource](ProcessContext&) { return Step::kDone; };
  spec.teardown = [resource](ProcessContext&) {};
  spec.finalize = [resource](ProcessContext&) {};
  auto pid = manager.Start(Frame(), std::move(spec));
  ASSERT_TRUE(pid.ok()) << pid.status();
  auto exit = manager.Wait(*pid, kLong);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->status.ok()) << exit->status;
  EXPECT_EQ(resource.use_count(), 1);
}

// Tests that a Wait that returns finds the callbacks released: their release comes before the
// exit is published (a slow destructor of a captured value made the race visible).
TEST(ProcessManager, WaitReturnsAfterTheCallbacksAreReleased) {
  AppContext app;
  ProcessManager manager(app);
  std::atomic<bool> released{false};
  {
    std::shared_ptr<int> resource(new int(42), [&released](int* p) {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      delete p;
      released.store(true);
    });
    ProcessSpec spec = Idle("slow-release");
    spec.poll = [resource](ProcessContext&) { return Step::kDone; };
    auto pid = manager.Start(Frame(), std::move(spec));
    ASSERT_THAT(pid, IsOk());
    resource.reset();
    auto exit = manager.Wait(*pid, kLong);
    ASSERT_THAT(exit, IsOk());
    EXPECT_TRUE(released.load()) << "Wait returned before the process's callbacks were released";
  }
}

// Tests that exited processes are reaped past the retention bound, and that a reaped pid reads
// as NotFound with a message saying so.
TEST(ProcessManager, ExitedProcessesAreReapedPastRetention) {
  AppContext app;
  auto manager = ProcessManager::Create(app, {.workers = 2, .retain_exited = 4});
  ASSERT_TRUE(manager.ok()) << manager.status();
  std::vector<Pid> pids;
  for (int i = 0; i < 20; ++i) {
    ProcessSpec spec = Idle("short");
    spec.poll = [](ProcessContext&) { return Step::kDone; };
    auto pid = (*manager)->Start(Frame(), spec);
    ASSERT_TRUE(pid.ok()) << pid.status();
    auto exit = (*manager)->Wait(*pid, kLong);
    ASSERT_TRUE(exit.ok()) << exit.status();
    pids.push_back(*pid);
  }
  EXPECT_EQ((*manager)->process_count(), 4u);
  EXPECT_EQ((*manager)->List().size(), 4u);
  // The newest exits are still there for inspection.
  EXPECT_THAT((*manager)->Wait(pids.back(), kLong), ::framekit::testing::IsOk());
  const absl::Status wait = (*manager)->Wait(pids.front(), kLong).status();
  EXPECT_EQ(wait.code(), absl::StatusCode::kNotFound) << wait;
  EXPECT_THAT(wait.message(), HasSubstr("reaped"));
  const absl::Status stop = (*manager)->Stop(pids.front(), kLong);
  EXPECT_EQ(stop.code(), absl::StatusCode::kNotFound) << stop;
  EXPECT_THAT(stop.message(), HasSubstr("reaped"));
  const absl::Status send = (*manager)->Send(pids.front(), "m");
  EXPECT_EQ(send.code(), absl::StatusCode::kNotFound) << send;
  EXPECT_THAT(send.message(), HasSubstr("reaped"));
  const absl::Status never = (*manager)->Send(999999, "m");
  EXPECT_EQ(never.code(), absl::StatusCode::kNotFound) << never;
  EXPECT_THAT(never.message(), HasSubstr("no process"));
}

// Tests that 10^5 start/stop cycles keep the process table bounded.
TEST(ProcessManager, StartStopCyclesKeepTableBounded) {
  AppContext app;
  ProcessManager manager(app, {.workers = 2, .retain_exited = 8});
  for (int i = 0; i < 100000; ++i) {
    auto pid = manager.Start(Frame(), Idle("cycle"));
    ASSERT_TRUE(pid.ok()) << pid.status();
    const absl::Status stop = manager.Stop(*pid, kLong);
    ASSERT_TRUE(stop.ok()) << stop;
  }
  EXPECT_LE(manager.process_count(), 8u);
  EXPECT_EQ(manager.timer_count(), 0u);
}

// Tests that message round trips to one parked process keep at most one timer for it.
TEST(ProcessManager, ParkedProcessKeepsOneTimer) {
  AppContext app;
  ProcessManager manager(app, {.workers = 1});
  std::mutex mu;
  std::condition_variable cv;
  int handled = 0;
  ProcessSpec spec = Idle("echo");
  spec.idle_interval = std::chrono::hours(1);
  spec.poll = [&](ProcessContext& ctx) {
    if (!ctx.Receive()) return Step::kIdle;
    std::lock_guard<std::mutex> lock(mu);
    ++handled;
    cv.notify_all();
    return Step::kIdle;
  };
  auto pid = manager.Start(Frame(), spec);
  ASSERT_TRUE(pid.ok()) << pid.status();
  for (int i = 1; i <= 1000; ++i) {
    ASSERT_THAT(manager.Send(*pid, "m"), ::framekit::testing::IsOk());
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return handled == i; });
  }
  EXPECT_LE(manager.timer_count(), 1u);
  EXPECT_THAT(manager.Stop(*pid, kLong), ::framekit::testing::IsOk());
  EXPECT_EQ(manager.timer_count(), 0u);
}

TEST(ProcessManager, CreateRejectsBadOptions) {
  AppContext app;
  for (int workers : {0, -3}) {
    auto manager = ProcessManager::Create(app, {.workers = workers});
    EXPECT_EQ(manager.status().code(), absl::StatusCode::kInvalidArgument) << manager.status();
    EXPECT_THAT(manager.status().message(), HasSubstr("workers"));
  }
  auto ok = ProcessManager::Create(app, {.workers = 1});
  ASSERT_TRUE(ok.ok()) << ok.status();
  // The constructor clamps instead: one worker at least.
  ProcessManager clamped(app, {.workers = -1});
  EXPECT_EQ(clamped.workers(), 1);
}

// Tests that spec fields that would busy-spin or make no sense are refused at Start.
TEST(ProcessManager, StartRejectsBadSpecFields) {
  AppContext app;
  ProcessManager manager(app);
  const auto expect_invalid = [&](ProcessSpec spec, const char* field) {
    auto pid = manager.Start(Frame(), std::move(spec));
    EXPECT_EQ(pid.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_THAT(pid.status().message(), HasSubstr(field));
  };
  ProcessSpec spec = Idle("p");
  spec.idle_interval = std::chrono::milliseconds(0);
  expect_invalid(spec, "idle_interval");
  spec = Idle("p");
  spec.idle_interval = std::chrono::milliseconds(-5);
  expect_invalid(spec, "idle_interval");
  spec = Idle("p");
  spec.max_restarts = -1;
  expect_invalid(spec, "max_restarts");
  spec = Idle("p");
  spec.restart_window = std::chrono::seconds(-1);
  expect_invalid(spec, "restart_window");
  spec = Idle("p");
  spec.poll_faults.window = std::chrono::seconds(-1);
  expect_invalid(spec, "poll_faults");
  EXPECT_TRUE(manager.List().empty());
}

// Tests that a bad name's error echoes a bounded prefix, not the whole input.
TEST(ProcessManager, BadNameErrorIsBounded) {
  AppContext app;
  ProcessManager manager(app);
  auto pid = manager.Start(Frame(), Idle(std::string(10000, '!')));
  EXPECT_EQ(pid.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(pid.status().message().size(), 200u) << pid.status();
  EXPECT_THAT(pid.status().message(), HasSubstr("..."));
}

// Tests that destroying the manager with running and parked processes stops them all.
TEST(ProcessManager, DestroyWithProcessesRunning) {
  AppContext app;
  std::atomic<int> finalizes{0};
  std::latch busy_running(1);
  {
    ProcessManager manager(app, {.workers = 2});
    ProcessSpec busy = Idle("busy");
    std::atomic<bool> counted{false};
    busy.poll = [&](ProcessContext&) {
      if (!counted.exchange(true)) busy_running.count_down();
      return Step::kBusy;
    };
    busy.finalize = [&](ProcessContext&) { ++finalizes; };
    ASSERT_THAT(manager.Start(Frame(), busy), ::framekit::testing::IsOk());
    ProcessSpec parked = Idle("parked");
    parked.idle_interval = std::chrono::hours(1);
    parked.finalize = [&](ProcessContext&) { ++finalizes; };
    ASSERT_THAT(manager.Start(Frame(), parked), ::framekit::testing::IsOk());
    busy_running.wait();
  }
  EXPECT_EQ(finalizes.load(), 2);
}

// Tests that a poll may start, stop and message other processes, and stop itself with a zero
// grace, without deadlocking the manager.
TEST(ProcessManager, ConcurrentPollReentersManager) {
  AppContext app;
  ProcessManager manager(app, {.workers = 2});
  std::latch done(1);
  std::atomic<int> children{0};
  ProcessSpec parent = Idle("parent");
  parent.poll = [&](ProcessContext& ctx) {
    for (int i = 0; i < 50; ++i) {
      ProcessSpec child = Idle("child");
      child.poll = [&](ProcessContext&) {
        ++children;
        return Step::kDone;
      };
      auto pid = manager.Start(Frame(), child);
      if (!pid.ok()) return Step::kDone;
      (void)manager.Send(*pid, "hi");
      (void)manager.Stop(*pid, std::chrono::seconds(0));
    }
    (void)manager.Stop(ctx.pid(), std::chrono::seconds(0));  // itself: requests, never waits
    done.count_down();
    return Step::kIdle;
  };
  auto pid = manager.Start(Frame(), parent);
  ASSERT_TRUE(pid.ok()) << pid.status();
  done.wait();
  auto exit = manager.Wait(*pid, kLong);
  ASSERT_TRUE(exit.ok()) << exit.status();
  EXPECT_TRUE(exit->status.ok()) << exit->status;
  manager.Shutdown();
  EXPECT_EQ(manager.timer_count(), 0u);
}

}  // namespace
}  // namespace framekit::dispatch
