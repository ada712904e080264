// Lua functions behind the FunctionExecutor: preemptive code runs on the caller's thread, the
// executor's records carry the runtime's RunStats, and scripts call other functions through the
// executor (BindInvoker).
#include <atomic>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/lua/executor_binding.h"
#include "framekit/lua/lua_function.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "support/tenant_app.h"

namespace framekit::lua {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::kTenant;
using ::framekit::testing::StatusIs;
using ::framekit::testing::TenantApp;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::shared_ptr<LuaFunction> MustCompile(const std::string& source, LuaLimits limits = {},
                                         std::shared_ptr<const LuaHost> host = nullptr) {
  absl::StatusOr<std::shared_ptr<LuaFunction>> fn =
      LuaFunction::Compile("test.lua", source, limits, std::move(host));
  EXPECT_THAT(fn, IsOk());
  return fn.ok() ? *fn : nullptr;
}

dispatch::Handler Tenant() {
  return [](const Frame& frame, std::string_view payload, dispatch::Sink& out) {
    const std::string* tenant = frame.Find(kTenant);
    std::string reply(payload);
    reply += "@";
    reply += tenant != nullptr ? *tenant : "-";
    return out.Write(reply);
  };
}

TEST(LuaExecutor, RegisteredLuaFunctionRunsThroughInvoke) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  ASSERT_THAT(
      executor.Register("greet", MustCompile("return function(p) return 'hello ' .. p end")),
      IsOk());
  EXPECT_THAT(executor.Invoke(Frame(), "greet", "lua"), IsOk());
  EXPECT_EQ(*executor.Invoke(Frame(), "greet", "lua", {{"timeout_ms", 1000}}), "hello lua");
  absl::StatusOr<int> v2 =
      executor.Deploy("greet", MustCompile("return function(p) return 'hi ' .. p end"));
  ASSERT_THAT(v2, IsOk());
  EXPECT_EQ(*v2, 2);
  EXPECT_EQ(*executor.Invoke(Frame(), "greet", "lua"), "hi lua");
  EXPECT_THAT(executor.Register("null", std::shared_ptr<dispatch::Code>()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no code")));
  EXPECT_THAT(executor.Deploy("greet", std::shared_ptr<dispatch::Code>()),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("no code")));
}

// Tests that every version keeps its script: ListVersions hands back each version's code, and a
// LuaFunction's source() is what it was compiled from.
TEST(LuaExecutor, ListVersionsReturnsEachVersionsSource) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  const std::string v1 = "return function(p) return 'hello ' .. p end";
  const std::string v2 = "return function(p) return 'hi ' .. p end";
  ASSERT_THAT(executor.Register("greet", MustCompile(v1)), IsOk());
  ASSERT_THAT(executor.Deploy("greet", MustCompile(v2)), IsOk());
  ASSERT_THAT(executor.Register("native", Tenant()), IsOk());

  absl::StatusOr<std::vector<dispatch::FunctionVersion>> versions = executor.ListVersions("greet");
  ASSERT_THAT(versions, IsOk());
  ASSERT_EQ(versions->size(), 2u);
  std::vector<std::string> sources;
  for (const dispatch::FunctionVersion& v : *versions) {
    auto lua = std::dynamic_pointer_cast<const LuaFunction>(v.code);
    ASSERT_NE(lua, nullptr) << "version " << v.version;
    sources.push_back(lua->source());
  }
  EXPECT_EQ(sources, (std::vector<std::string>{v1, v2}));
  EXPECT_FALSE((*versions)[0].active);
  EXPECT_TRUE((*versions)[1].active);

  // A native handler's version has code too, and it is not a LuaFunction.
  absl::StatusOr<std::vector<dispatch::FunctionVersion>> native = executor.ListVersions("native");
  ASSERT_THAT(native, IsOk());
  ASSERT_EQ(native->size(), 1u);
  ASSERT_NE((*native)[0].code, nullptr);
  EXPECT_EQ(std::dynamic_pointer_cast<const LuaFunction>((*native)[0].code), nullptr);
}

// Tests that a hanging script ends at its deadline on the caller's thread: no worker is
// quarantined, and native deadline calls of another function keep succeeding meanwhile.
TEST(LuaExecutor, ConcurrentInfiniteLoopEndsAtDeadlineWithoutQuarantine) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app,
                                      {.max_quarantined = 0, .max_quarantined_per_function = 0});
  ASSERT_THAT(executor.Register("spin", MustCompile("return function() while true do end end")),
              IsOk());
  ASSERT_THAT(executor.Register("tenant", Tenant()), IsOk());
  constexpr int kSpinners = 3;
  constexpr int kSpins = 5;
  std::atomic<bool> spinning{true};
  std::mutex mu;
  std::vector<std::string> unexpected;
  auto note = [&](const absl::Status& status) {
    std::lock_guard<std::mutex> lock(mu);
    unexpected.push_back(status.ToString());
  };
  std::latch go(kSpinners + 1);
  std::vector<std::thread> spinners;
  for (int t = 0; t < kSpinners; ++t) {
    spinners.emplace_back([&] {
      go.arrive_and_wait();
      for (int i = 0; i < kSpins; ++i) {
        const auto before = Clock::now();
        const absl::Status status =
            executor.Invoke(Frame(), "spin", "", {{"timeout_ms", 30}}).status();
        if (status.code() != absl::StatusCode::kDeadlineExceeded) note(status);
        if (Clock::now() - before > std::chrono::seconds(2)) {
          note(absl::InternalError("a spin call took longer than 2 s"));
        }
        if (executor.quarantined() != 0) note(absl::InternalError("a worker was quarantined"));
      }
    });
  }
  int native_calls = 0;
  std::thread native([&] {
    go.arrive_and_wait();
    while (spinning.load()) {
      absl::StatusOr<std::string> reply =
          executor.Invoke(Frame(), "tenant", "x", {{"tenant", "acme"}, {"timeout_ms", 5000}});
      if (!reply.ok()) note(reply.status());
      ++native_calls;
    }
  });
  for (auto& thread : spinners) thread.join();
  spinning.store(false);
  native.join();
  EXPECT_THAT(unexpected, IsEmpty());
  EXPECT_EQ(executor.quarantined(), 0);
  EXPECT_GT(native_calls, 0);
  const absl::StatusOr<dispatch::FunctionCounters> counters = executor.Counters("spin");
  ASSERT_THAT(counters, IsOk());
  EXPECT_EQ(counters->timeouts, static_cast<std::uint64_t>(kSpinners * kSpins));
  EXPECT_EQ(counters->quarantined, 0);
  EXPECT_EQ(counters->refusals, 0u);
  EXPECT_EQ(executor.Counters("tenant")->errors, 0u);
}

TEST(LuaExecutor, MemoryLimitIsResourceExhaustedAndRecordedPeak) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  LuaLimits limits;
  limits.memory_bytes = 1 << 20;
  ASSERT_THAT(
      executor.Register(
          "hog", MustCompile("return function() local t = {} while true do t[#t + 1] = {} end end",
                             limits)),
      IsOk());
  EXPECT_THAT(executor.Invoke(Frame(), "hog", "", {{"timeout_ms", 5000}}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("memory")));
  absl::StatusOr<std::vector<dispatch::InvocationRecord>> records = executor.ListInvocations("hog");
  ASSERT_THAT(records, IsOk());
  ASSERT_EQ(records->size(), 1u);
  const dispatch::InvocationRecord& record = records->front();
  EXPECT_THAT(record.error, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("memory")));
  EXPECT_GT(record.stats.peak_memory_bytes, limits.memory_bytes / 2);
  EXPECT_LE(record.stats.peak_memory_bytes, limits.memory_bytes);
}

// Tests that a script's nested call goes through the executor with the script's frame as its
// parent: the pair a resolver put on the script's frame reaches the native function, and both
// calls are recorded (the script's record counting its host calls).
TEST(LuaExecutor, ScriptInvokesNativeFunctionThroughExecutor) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  auto host = std::make_shared<LuaHost>();
  BindInvoker(*host, executor);
  ASSERT_THAT(executor.Register("tenant", Tenant()), IsOk());
  ASSERT_THAT(
      executor.Register("script",
                        MustCompile("return function(p) return host.invoke('tenant', p) .. ';' .. "
                                    "host.invoke('tenant', 'again') end",
                                    {}, host)),
      IsOk());
  absl::StatusOr<std::string> reply =
      executor.Invoke(Frame(), "script", "hi", {{"tenant", "acme"}, {"timeout_ms", 2000}});
  ASSERT_THAT(reply, IsOk());
  EXPECT_EQ(*reply, "hi@acme;again@acme");

  absl::StatusOr<std::vector<dispatch::InvocationRecord>> script =
      executor.ListInvocations("script");
  ASSERT_THAT(script, IsOk());
  ASSERT_EQ(script->size(), 1u);
  EXPECT_EQ(script->front().stats.host_calls, 2u);
  EXPECT_GT(script->front().stats.peak_memory_bytes, 0u);
  EXPECT_EQ(script->front().output_bytes, reply->size());
  EXPECT_EQ(executor.Counters("tenant")->calls, 2u);

  // A nested call's failure is a Lua error the script can catch.
  ASSERT_THAT(
      executor.Register("missing",
                        MustCompile("return function() local ok, err = pcall(host.invoke, 'nope') "
                                    "return tostring(ok) .. ' ' .. err end",
                                    {}, host)),
      IsOk());
  absl::StatusOr<std::string> missing = executor.Invoke(Frame(), "missing", "");
  ASSERT_THAT(missing, IsOk());
  EXPECT_THAT(*missing, HasSubstr("false NOT_FOUND"));
}

}  // namespace
}  // namespace framekit::lua
