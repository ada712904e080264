// What a careless or hostile handler, process or caller can do to the dispatchers, found by
// trying it: each test failed (a crash, a hang, unbounded growth or a misattributed fault)
// before its fix.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/process_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;
using ::testing::HasSubstr;

constexpr auto kLong = std::chrono::seconds(30);

// A handler that invokes "rec" again with the payload one less, down to 0.
Handler Recurse(FunctionExecutor& executor) {
  return [&executor](const Frame& frame, std::string_view payload, Sink& out) -> absl::Status {
    const int depth = std::stoi(std::string(payload));
    if (depth <= 0) return out.Write("bottom");
    absl::StatusOr<std::string> inner =
        executor.Invoke(frame, "rec", std::to_string(depth - 1), {});
    if (!inner.ok()) return inner.status();
    return out.Write(*inner);
  };
}

// A handler re-entering the executor 20,000 calls deep overflowed its thread's stack (SIGSEGV,
// the whole host) at about 5,000 levels on a caller's thread and 3,000 on a deadline worker.
// Now the call past max_nesting is refused and the refusal travels back up the chain.
TEST(DispatchAttack, DeepReentrantInvokeIsRefusedNotAStackOverflow) {
  AppContext app;
  for (const bool deadline : {false, true}) {
    SCOPED_TRACE(deadline ? "deadline calls" : "calls without a deadline");
    auto executor = FunctionExecutor::Create(app, {});
    ASSERT_THAT(executor.status(), IsOk());
    Options defaults;
    if (deadline) defaults = Options{{"timeout_ms", std::int64_t{60000}}};
    ASSERT_THAT((*executor)->Register("rec", Recurse(**executor), defaults), IsOk());
    absl::StatusOr<std::string> deep = (*executor)->Invoke(Frame(), "rec", "20000");
    EXPECT_EQ(deep.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_THAT(deep.status().message(), HasSubstr("max_nesting"));
    // Within the limit, a chain still reaches the bottom.
    EXPECT_EQ((*executor)->Invoke(Frame(), "rec", "100").value_or("?"), "bottom");
    // The refusal is recorded against the function, like any failed call.
    EXPECT_GE((*executor)->Counters("rec")->errors, 1u);
  }
}

// The limit counts exactly: max_nesting calls run, the next one is refused.
TEST(DispatchAttack, MaxNestingIsExact) {
  AppContext app;
  auto executor = FunctionExecutor::Create(app, {.max_nesting = 5});
  ASSERT_THAT(executor.status(), IsOk());
  ASSERT_THAT((*executor)->Register("rec", Recurse(**executor)), IsOk());
  // Payload 4: five calls nested (4, 3, 2, 1, 0).
  EXPECT_EQ((*executor)->Invoke(Frame(), "rec", "4").value_or("?"), "bottom");
  EXPECT_EQ((*executor)->Invoke(Frame(), "rec", "5").status().code(),
            absl::StatusCode::kResourceExhausted);
  // A refused chain leaves nothing behind on the thread: the next call starts at depth 1.
  EXPECT_EQ((*executor)->Invoke(Frame(), "rec", "4").value_or("?"), "bottom");
}

TEST(DispatchAttack, MaxNestingMustBePositive) {
  AppContext app;
  for (const int bad : {0, -1}) {
    auto executor = FunctionExecutor::Create(app, {.max_nesting = bad});
    EXPECT_EQ(executor.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(executor.status().message(), HasSubstr("max_nesting"));
  }
  // The constructor clamps to 1: one call, no nesting.
  FunctionExecutor clamped(app, {.max_nesting = -5});
  ASSERT_THAT(clamped.Register("rec", Recurse(clamped)), IsOk());
  EXPECT_EQ(clamped.Invoke(Frame(), "rec", "0").value_or("?"), "bottom");
  EXPECT_EQ(clamped.Invoke(Frame(), "rec", "1").status().code(),
            absl::StatusCode::kResourceExhausted);
}

class ThrowingSink final : public Sink {
 public:
  absl::Status Write(std::string_view) override { throw std::runtime_error("caller sink"); }
};

// A caller's sink that threw was counted as the function's fault: a caller could get a function
// evicted for every other caller by the fault policy. Its throw is now the Write's status.
TEST(DispatchAttack, ACallersThrowingSinkIsNotTheFunctionsFault) {
  AppContext app;
  FaultMonitorOptions monitor_options;
  monitor_options.policy = {
      .max_faults = 1, .window = std::chrono::hours(1), .on_trip = FaultVerdict::kEvict};
  FaultMonitor monitor(std::move(monitor_options));
  auto executor = FunctionExecutor::Create(app, {.monitor = &monitor});
  ASSERT_THAT(executor.status(), IsOk());
  std::atomic<int> write_status_seen{0};
  const Handler writer = [&](const Frame&, std::string_view, Sink& out) -> absl::Status {
    absl::Status status = out.Write("chunk");
    if (status.code() == absl::StatusCode::kInternal) write_status_seen.fetch_add(1);
    return status;
  };
  ASSERT_THAT((*executor)->Register("inline", writer), IsOk());
  ASSERT_THAT(
      (*executor)->Register("deadline", writer, Options{{"timeout_ms", std::int64_t{30000}}}),
      IsOk());
  for (const char* name : {"inline", "deadline"}) {
    SCOPED_TRACE(name);
    ThrowingSink sink;
    for (int i = 0; i < 3; ++i) {
      absl::Status status = (*executor)->InvokeStream(Frame(), name, "", {}, sink);
      EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
      EXPECT_THAT(status.message(), HasSubstr("the caller's sink threw std::runtime_error"));
      EXPECT_THAT(status.message(), HasSubstr("caller sink"));
    }
    EXPECT_EQ((*executor)->Counters(name)->faults, 0u);
    EXPECT_FALSE((*executor)->Get(name)->disabled);
    EXPECT_EQ((*executor)->Invoke(Frame(), name, "").value_or("?"), "chunk");
  }
  EXPECT_EQ(write_status_seen.load(), 6);
  EXPECT_EQ(monitor.total_faults(), 0u);
}

// A lifecycle function calling Shutdown waited for its own process to exit: the manager hung
// forever. Now it stops every process and returns; the destructor waits and joins.
TEST(DispatchAttack, ShutdownFromALifecycleFunctionDoesNotHang) {
  AppContext app;
  for (const char* phase : {"setup", "poll", "finalize"}) {
    SCOPED_TRACE(phase);
    auto manager = std::make_unique<ProcessManager>(app, ProcessManagerOptions{.workers = 2});
    ProcessManager* m = manager.get();
    ProcessSpec other;
    other.name = "other";
    other.poll = [](ProcessContext&) { return Step::kIdle; };
    absl::StatusOr<Pid> bystander = manager->Start(Frame(), other);
    ASSERT_THAT(bystander.status(), IsOk());

    ProcessSpec spec;
    spec.name = "stopper";
    const std::string_view which = phase;
    if (which == "setup") {
      spec.setup = [m](ProcessContext&) {
        m->Shutdown();
        return absl::OkStatus();
      };
    }
    spec.poll = [m, which](ProcessContext&) {
      if (which == "poll") m->Shutdown();
      return Step::kDone;
    };
    if (which == "finalize") spec.finalize = [m](ProcessContext&) { m->Shutdown(); };
    absl::StatusOr<Pid> pid = manager->Start(Frame(), spec);
    ASSERT_THAT(pid.status(), IsOk());
    absl::StatusOr<ProcessExit> exit = manager->Wait(*pid, kLong);
    ASSERT_THAT(exit.status(), IsOk());
    // Shutdown stopped the bystander too and refuses new processes.
    EXPECT_THAT(manager->Wait(*bystander, kLong).status(), IsOk());
    EXPECT_EQ(manager->Start(Frame(), other).status().code(),
              absl::StatusCode::kFailedPrecondition);
    manager->Shutdown();  // from this thread: waits and joins
    manager.reset();
  }
}

// A process that started a process at every poll grew the host by about 100 MB a second
// (180,000 processes in 5 s). max_processes bounds the processes alive at once.
TEST(DispatchAttack, LiveProcessesAreBounded) {
  AppContext app;
  EXPECT_EQ(ProcessManager::Create(app, {.max_processes = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  ProcessManager manager(app, {.workers = 2, .retain_exited = 0, .max_processes = 50});
  std::atomic<int> started{0}, refused{0};
  ProcessSpec breeder;
  breeder.name = "breeder";
  breeder.idle_interval = std::chrono::milliseconds(1);
  ProcessSpec* spec = &breeder;
  breeder.poll = [&manager, &started, &refused, spec](ProcessContext& ctx) {
    absl::StatusOr<Pid> child = manager.Start(ctx.frame(), *spec);
    if (child.ok()) {
      started.fetch_add(1);
    } else if (child.status().code() == absl::StatusCode::kResourceExhausted) {
      refused.fetch_add(1);
    }
    return Step::kIdle;
  };
  ASSERT_THAT(manager.Start(Frame(), breeder).status(), IsOk());
  const auto until = std::chrono::steady_clock::now() + kLong;
  while (refused.load() < 100 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GE(refused.load(), 100);
  EXPECT_EQ(started.load(), 49);
  EXPECT_EQ(manager.process_count(), 50u);
  absl::StatusOr<Pid> outside = manager.Start(Frame(), breeder);
  EXPECT_EQ(outside.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(outside.status().message(), HasSubstr("max_processes 50"));
  // Exits free places: stopping the first breeder cancels its descendants' frames too (each
  // started from its parent's frame), and then a new process may start.
  ASSERT_THAT(manager.Stop(1, kLong), IsOk());
  const auto drained = std::chrono::steady_clock::now() + kLong;
  while (manager.process_count() > 0 && std::chrono::steady_clock::now() < drained) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(manager.process_count(), 0u);
  ProcessSpec idle;
  idle.name = "idle";
  idle.poll = [](ProcessContext&) { return Step::kIdle; };
  EXPECT_THAT(manager.Start(Frame(), idle).status(), IsOk());
  manager.Shutdown();
}

// A host that deploys on every change kept every version's code forever (20,000 deploys grew
// a host by 3.7 MB of native handlers; a Lua version holds a whole Lua state). Deploy now keeps
// options.versions_kept versions; a dropped version's code is freed once no call runs it.
TEST(DispatchAttack, DeploysKeepABoundedNumberOfVersions) {
  AppContext app;
  EXPECT_THAT(FunctionExecutor::Create(app, {.versions_kept = 0}).status(),
              ::framekit::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                            HasSubstr("versions_kept")));
  FunctionExecutor executor(app, {.versions_kept = 3});
  // Version 1 blocks until released, so that a call runs it while it is dropped.
  std::atomic<bool> entered{false}, release{false};
  auto alive = std::make_shared<int>(1);
  std::weak_ptr<int> v1_state = alive;
  ASSERT_THAT(executor.Register("f",
                                [&entered, &release, alive = std::move(alive)](
                                    const Frame&, std::string_view, Sink& out) {
                                  entered.store(true);
                                  while (!release.load()) std::this_thread::yield();
                                  return out.Write(absl::StrCat("v1:", *alive));
                                }),
              IsOk());
  absl::StatusOr<std::string> running;
  std::thread caller([&] { running = executor.Invoke(Frame(), "f", ""); });
  while (!entered.load()) std::this_thread::yield();
  for (int v = 2; v <= 10; ++v) {
    absl::StatusOr<int> deployed = executor.Deploy(
        "f",
        [v](const Frame&, std::string_view, Sink& out) { return out.Write(absl::StrCat("v", v)); });
    ASSERT_THAT(deployed.status(), IsOk());
    EXPECT_EQ(*deployed, v);
  }
  absl::StatusOr<std::vector<FunctionVersion>> versions = executor.ListVersions("f");
  ASSERT_THAT(versions.status(), IsOk());
  ASSERT_EQ(versions->size(), 3u);
  EXPECT_EQ((*versions)[0].version, 8);
  EXPECT_EQ((*versions)[2].version, 10);
  EXPECT_TRUE((*versions)[2].active);
  EXPECT_EQ(*executor.Invoke(Frame(), "f", ""), "v10");
  // Version 1 was dropped while its call ran: the call still has its code.
  EXPECT_FALSE(v1_state.expired());
  release.store(true);
  caller.join();
  ASSERT_THAT(running.status(), IsOk());
  EXPECT_EQ(*running, "v1:1");
  // Once no call runs it (and a later write has retired the tables that named it), its code
  // is freed.
  ASSERT_THAT(
      executor.Deploy("f", [](const Frame&, std::string_view, Sink&) { return absl::OkStatus(); })
          .status(),
      IsOk());
  EXPECT_TRUE(v1_state.expired());
}

}  // namespace
}  // namespace framekit::dispatch
