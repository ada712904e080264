#include "framekit/lua/lua_process.h"

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "framekit/app/app_context.h"
#include "framekit/dispatch/process_manager.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::lua {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

// Records what scripts pass to host.record, from any thread.
struct Recorder {
  std::mutex mu;
  std::vector<std::string> lines;
  std::shared_ptr<LuaHost> Host() {
    auto host = std::make_shared<LuaHost>(LuaHostOptions{.name = "proc"});
    EXPECT_THAT(host->AddFunction("record",
                                  [this](std::string_view line) {
                                    std::lock_guard<std::mutex> lock(mu);
                                    lines.emplace_back(line);
                                  }),
                IsOk());
    return host;
  }
  std::vector<std::string> Lines() {
    std::lock_guard<std::mutex> lock(mu);
    return lines;
  }
};

dispatch::ProcessSpec MustSpec(std::string source, LuaProcessLimits limits,
                               std::shared_ptr<const LuaHost> host) {
  absl::StatusOr<dispatch::ProcessSpec> spec =
      LuaProcessSpec("proc.lua", std::move(source), limits, std::move(host));
  EXPECT_THAT(spec, IsOk());
  return spec.ok() ? *std::move(spec) : dispatch::ProcessSpec();
}

constexpr char kCounter[] = R"lua(
  local seen = 0
  return {
    setup = function(frame) host.record("setup") end,
    poll = function(message)
      if message == nil then return "idle" end
      seen = seen + 1
      host.record(message .. " " .. seen)
      if message == "stop" then return "done" end
    end,
    teardown = function() host.record("teardown " .. seen) end,
  })lua";

// Tests the lifecycle: setup, one poll per mailbox message with state kept between steps,
// "done", teardown.
TEST(LuaProcess, MessagesReachPollAndStatePersistsBetweenSteps) {
  Recorder recorder;
  AppContext app;
  dispatch::ProcessManager manager(app, {.workers = 1});
  dispatch::ProcessSpec spec = MustSpec(kCounter, {}, recorder.Host());
  absl::StatusOr<dispatch::Pid> pid = manager.Start(Frame(), spec);
  ASSERT_THAT(pid, IsOk());
  ASSERT_THAT(manager.Send(*pid, "a"), IsOk());
  ASSERT_THAT(manager.Send(*pid, "b"), IsOk());
  ASSERT_THAT(manager.Send(*pid, "stop"), IsOk());
  absl::StatusOr<dispatch::ProcessExit> exit = manager.Wait(*pid, 5s);
  ASSERT_THAT(exit, IsOk());
  EXPECT_THAT(exit->status, IsOk());
  EXPECT_THAT(recorder.Lines(), ElementsAre("setup", "a 1", "b 2", "stop 3", "teardown 3"));
}

// Tests that two processes of one spec never share state.
TEST(LuaProcess, ProcessesOfOneSpecAreIsolated) {
  Recorder recorder;
  AppContext app;
  dispatch::ProcessManager manager(app, {.workers = 2});
  dispatch::ProcessSpec spec = MustSpec(R"lua(
    return {poll = function(m)
      if m == nil then return "idle" end
      count = (count or 0) + 1
      host.record(m .. count)
      return "done"
    end})lua",
                                        {}, recorder.Host());
  absl::StatusOr<dispatch::Pid> a = manager.Start(Frame(), spec);
  absl::StatusOr<dispatch::Pid> b = manager.Start(Frame(), spec);
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  ASSERT_THAT(manager.Send(*a, "a"), IsOk());
  ASSERT_THAT(manager.Wait(*a, 5s), IsOk());
  ASSERT_THAT(manager.Send(*b, "b"), IsOk());
  ASSERT_THAT(manager.Wait(*b, 5s), IsOk());
  EXPECT_THAT(recorder.Lines(), ElementsAre("a1", "b1"));
}

// Tests that a poll looping forever ends at its step budget, counts as a poll fault, and that
// the process is stopped by its fault policy, while another process on the same single worker
// keeps being served.
TEST(LuaProcess, LoopingPollIsAFaultAndNeverBlocksTheWorkers) {
  Recorder recorder;
  AppContext app;
  dispatch::ProcessManager manager(app, {.workers = 1});
  LuaProcessLimits limits;
  limits.step_timeout = 20ms;
  dispatch::ProcessSpec looping =
      MustSpec("return {poll = function(m) if m then while true do end end return 'idle' end}",
               limits, recorder.Host());
  looping.poll_faults = {.max_faults = 3,
                         .window = std::chrono::seconds(30),
                         .on_trip = dispatch::FaultVerdict::kEvict};
  dispatch::ProcessSpec counter = MustSpec(kCounter, limits, recorder.Host());
  absl::StatusOr<dispatch::Pid> bad = manager.Start(Frame(), looping);
  absl::StatusOr<dispatch::Pid> good = manager.Start(Frame(), counter);
  ASSERT_THAT(bad, IsOk());
  ASSERT_THAT(good, IsOk());
  const auto start = Clock::now();
  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(manager.Send(*bad, "spin"), IsOk());
    ASSERT_THAT(manager.Send(*good, "m"), IsOk());
  }
  ASSERT_THAT(manager.Send(*good, "stop"), IsOk());
  absl::StatusOr<dispatch::ProcessExit> bad_exit = manager.Wait(*bad, 5s);
  ASSERT_THAT(bad_exit, IsOk());
  EXPECT_THAT(bad_exit->status, StatusIs(absl::StatusCode::kAborted, HasSubstr("deadline")));
  EXPECT_LT(Clock::now() - start, 2s);
  absl::StatusOr<dispatch::ProcessExit> good_exit = manager.Wait(*good, 5s);
  ASSERT_THAT(good_exit, IsOk());
  EXPECT_THAT(good_exit->status, IsOk());
  EXPECT_THAT(recorder.Lines(), ::testing::Contains("teardown 4"));
}

// Tests the failures a spec or its setup reports.
TEST(LuaProcess, BadSourcesFailClearly) {
  EXPECT_THAT(LuaProcessSpec("bad.lua", "return {", {}, nullptr).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.lua:1:")));
  AppContext app;
  dispatch::ProcessManager manager(app, {.workers = 1});
  for (const char* source : {"return 1", "return {setup = function() end}",
                             "return {poll = function() end, setup = function() error('no') end}",
                             "while true do end"}) {
    LuaProcessLimits limits;
    limits.step_timeout = 20ms;
    absl::StatusOr<dispatch::ProcessSpec> spec = LuaProcessSpec("p.lua", source, limits, nullptr);
    ASSERT_THAT(spec, IsOk()) << source;
    absl::StatusOr<dispatch::Pid> pid = manager.Start(Frame(), *spec);
    ASSERT_THAT(pid, IsOk());
    absl::StatusOr<dispatch::ProcessExit> exit = manager.Wait(*pid, 5s);
    ASSERT_THAT(exit, IsOk());
    EXPECT_FALSE(exit->status.ok()) << source;
  }
}

}  // namespace
}  // namespace framekit::lua
