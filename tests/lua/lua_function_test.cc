#include "framekit/lua/lua_function.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "framekit/ctx/caller.h"
#include "framekit/ctx/internal/status_macros.h"
#include "framekit/dispatch/function_executor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "lauxlib.h"
#include "lua.h"
#include "support/status_matchers.h"

namespace framekit::lua {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

inline const Key<std::string> kTenant{"test.tenant"};
inline const Key<std::int64_t> kQuota{"test.quota"};
inline const Key<std::string> kSecret{"test.secret"};

class StringSink : public dispatch::Sink {
 public:
  absl::Status Write(std::string_view chunk) override {
    text.append(chunk);
    ++writes;
    return status;
  }
  std::string text;
  int writes = 0;
  absl::Status status;
};

std::shared_ptr<const PortableKeys> Portable() {
  auto keys = std::make_shared<PortableKeys>();
  EXPECT_THAT(keys->Add(kTenant), IsOk());
  EXPECT_THAT(keys->Add(kQuota), IsOk());
  EXPECT_THAT(keys->Add(CallerKey()), IsOk());
  return keys;
}

std::shared_ptr<LuaHost> MakeHost() {
  return std::make_shared<LuaHost>(LuaHostOptions{.name = "test", .portable = Portable()});
}

std::shared_ptr<LuaFunction> MustCompile(std::string source, LuaLimits limits = {},
                                         std::shared_ptr<const LuaHost> host = MakeHost()) {
  absl::StatusOr<std::shared_ptr<LuaFunction>> fn =
      LuaFunction::Compile("test.lua", std::move(source), limits, std::move(host));
  EXPECT_THAT(fn, IsOk());
  return fn.ok() ? *fn : nullptr;
}

struct Outcome {
  absl::Status status;
  std::string output;
  dispatch::RunStats stats;
  Clock::duration elapsed;
};

Outcome RunOnce(LuaFunction& fn, const Frame& frame = Frame().WithTimeout(2s),
                std::string_view payload = "") {
  Outcome out;
  StringSink sink;
  const auto start = Clock::now();
  out.status = fn.Run(frame, payload, sink, out.stats);
  out.elapsed = Clock::now() - start;
  out.output = sink.text;
  return out;
}

Outcome RunSource(std::string source, LuaLimits limits = {}, Frame frame = Frame().WithTimeout(2s)) {
  std::shared_ptr<LuaFunction> fn = MustCompile(std::move(source), limits);
  if (fn == nullptr) return {absl::InternalError("no compile"), "", {}, {}};
  return RunOnce(*fn, frame);
}

// --- the C++ build of Lua ----------------------------------------------------------------

struct Flag {
  bool* set;
  ~Flag() { *set = true; }
};
bool destroyed = false;
int RaiseWithObject(lua_State* L) {
  Flag flag{&destroyed};
  return luaL_error(L, "boom");
}

// Tests that lua_error unwinds with a C++ exception (lua5.4-c++), so C++ destructors in host
// functions run; a longjmp build would skip them.
TEST(LuaCxx, ErrorRunsDestructors) {
  lua_State* L = luaL_newstate();
  lua_pushcfunction(L, RaiseWithObject);
  EXPECT_NE(lua_pcall(L, 0, 0, 0), LUA_OK);
  EXPECT_TRUE(destroyed);
  lua_close(L);
}

// --- basics --------------------------------------------------------------------------------

TEST(LuaFunction, ReturnsOutputAndStreamsChunks) {
  Outcome out = RunSource(R"(return function(payload, frame)
    host.write("a", "b")
    return "hello " .. payload
  end)");
  std::shared_ptr<LuaFunction> fn = MustCompile(
      "return function(p) host.write('<') return p .. '>' end");
  out = RunOnce(*fn, Frame().WithTimeout(1s), "x");
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(out.output, "<x>");
  EXPECT_TRUE(fn->preemptive());
  EXPECT_GT(out.stats.peak_memory_bytes, 0u);
  EXPECT_EQ(out.stats.host_calls, 1u);
  EXPECT_EQ(out.stats.output_bytes, 3u);
}

TEST(LuaFunction, SyntaxErrorIsInvalidArgumentWithChunkAndLine) {
  absl::StatusOr<std::shared_ptr<LuaFunction>> fn =
      LuaFunction::Compile("bad.lua", "return function()\n  x = = 1\nend");
  EXPECT_THAT(fn, StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("bad.lua:2:")));
}

TEST(LuaFunction, KeepsTheSource) {
  std::shared_ptr<LuaFunction> fn = MustCompile("return function() end");
  EXPECT_EQ(fn->source(), "return function() end");
  EXPECT_EQ(fn->chunkname(), "test.lua");
}

TEST(LuaFunction, LuaErrorIsInternalWithTraceback) {
  Outcome out = RunSource("return function()\n  local x = nil\n  error('kaputt')\nend");
  EXPECT_THAT(out.status, StatusIs(absl::StatusCode::kInternal, HasSubstr("test.lua:3: kaputt")));
  EXPECT_TRUE(IsLuaError(out.status));
  ASSERT_TRUE(LuaTraceback(out.status).has_value());
  EXPECT_THAT(*LuaTraceback(out.status), HasSubstr("stack traceback"));
  EXPECT_THAT(*LuaTraceback(out.status), HasSubstr("test.lua:3"));
}

TEST(LuaFunction, ChunkMustReturnAFunctionAndHandlerAString) {
  EXPECT_THAT(RunSource("return 42").status,
              StatusIs(absl::StatusCode::kInternal, HasSubstr("must return the handler")));
  EXPECT_THAT(RunSource("return function() return {} end").status,
              StatusIs(absl::StatusCode::kInternal, HasSubstr("string or nil")));
  EXPECT_THAT(RunSource("return function() return nil end").status, IsOk());
}

TEST(LuaFunction, FrameViewShowsPortableKeysOnlyAndIsReadOnly) {
  const Frame frame = WithCaller(Frame(), {.user_id = "u1", .groups = {"ops"}})
                          .With({Pair::Of(kTenant, "acme"), Pair::Of(kQuota, 7),
                                 Pair::Of(kSecret, "hunter2")})
                          .WithTimeout(2s);
  std::shared_ptr<LuaFunction> fn = MustCompile(R"(return function(p, frame)
    local c = frame["framekit.caller"]
    return table.concat({frame["test.tenant"], math.type(frame["test.quota"]),
                         tostring(frame["test.secret"]), c.user_id, c.groups[1]}, ",")
  end)");
  Outcome out = RunOnce(*fn, frame);
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(out.output, "acme,integer,nil,u1,ops");
  fn = MustCompile("return function(p, frame) frame['test.tenant'] = 'evil' end");
  EXPECT_THAT(RunOnce(*fn, frame).status,
              StatusIs(absl::StatusCode::kInternal, HasSubstr("read-only")));
  fn = MustCompile("return function(p, frame) return tostring(getmetatable(frame)) end");
  EXPECT_EQ(RunOnce(*fn, frame).output, "false");
}

}  // namespace
}  // namespace framekit::lua
