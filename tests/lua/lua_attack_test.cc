// Hostile and careless uses of lua/: limits at their edges, scripts that try to escape their
// deadline through metamethods and library callbacks, re-entrant calls, SIGURG shared with the
// application, and scripts trying to change what another call or the host sees.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "framekit/ctx/caller.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/lua/executor_binding.h"
#include "framekit/lua/lua_function.h"
#include "framekit/lua/lua_process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "support/tenant_app.h"

namespace framekit::lua {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::framekit::testing::TenantApp;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

inline const Key<std::string> kRegion{"attack.region"};

class StringSink : public dispatch::Sink {
 public:
  absl::Status Write(std::string_view chunk) override {
    text.append(chunk);
    return absl::OkStatus();
  }
  std::string text;
};

std::shared_ptr<const PortableKeys> Portable() {
  auto keys = std::make_shared<PortableKeys>();
  EXPECT_THAT(keys->Add(kRegion), IsOk());
  EXPECT_THAT(keys->Add(CallerKey()), IsOk());
  return keys;
}

std::shared_ptr<LuaFunction> MustCompile(const std::string& source, LuaLimits limits = {},
                                         std::shared_ptr<const LuaHost> host = nullptr) {
  absl::StatusOr<std::shared_ptr<LuaFunction>> fn =
      LuaFunction::Compile("attack.lua", source, limits, std::move(host));
  EXPECT_THAT(fn, IsOk());
  return fn.ok() ? *fn : nullptr;
}

struct Outcome {
  absl::Status status;
  std::string out;
  Clock::duration took{};
};

// Runs `fn` on `frame` on a thread of its own and waits at most `bound` for it: a call that does
// not end is a failed test (reported, then the process ends, since the thread cannot be freed).
Outcome RunBounded(std::shared_ptr<LuaFunction> fn, Frame frame, std::string payload = "",
                   std::chrono::seconds bound = 10s) {
  struct Shared {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Outcome outcome;
  };
  if (fn == nullptr) return {absl::InternalError("no function"), "", {}};
  auto shared = std::make_shared<Shared>();
  std::thread([shared, fn, frame, payload] {
    StringSink sink;
    dispatch::RunStats stats;
    const auto start = Clock::now();
    absl::Status status = fn->Run(frame, payload, sink, stats);
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->outcome = {std::move(status), std::move(sink.text), Clock::now() - start};
    shared->done = true;
    shared->cv.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(shared->mu);
  if (!shared->cv.wait_for(lock, bound, [&] { return shared->done; })) {
    std::fprintf(stderr, "FATAL: a Lua call did not end within %lld s\n",
                 static_cast<long long>(bound.count()));
    std::fflush(stderr);
    std::_Exit(3);
  }
  return shared->outcome;
}

// ---- limits at their edges ----

TEST(LuaAttack, NonsenseLimitsAreRefused) {
  const std::string ok = "return function() return 'x' end";
  EXPECT_THAT(LuaFunction::Compile("a", ok, {.memory_bytes = 0}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaFunction::Compile("a", ok, {.timeout = 0ms}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaFunction::Compile("a", ok, {.timeout = -5s}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaFunction::Compile("a", ok, {.max_output_bytes = 0}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaFunction::Compile("a", ok, {.hook_instructions = -1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaFunction::Compile("a", ok, {.max_log_lines = -1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// Tests that the largest timeout does not overflow the deadline arithmetic: a quick script
// succeeds, and a spinning one still ends at its frame's deadline.
TEST(LuaAttack, MaxTimeoutDoesNotOverflow) {
  LuaLimits limits{.timeout = Clock::duration::max()};
  Outcome quick = RunBounded(MustCompile("return function() return 'ok' end", limits), Frame());
  EXPECT_THAT(quick.status, IsOk());
  EXPECT_EQ(quick.out, "ok");
  Outcome spin = RunBounded(MustCompile("return function() while true do end end", limits),
                            Frame().WithTimeout(50ms));
  EXPECT_THAT(spin.status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(spin.took, 2s);
  // A huge but finite timeout.
  LuaLimits hours{.timeout = std::chrono::hours(24 * 365 * 100)};
  EXPECT_THAT(RunBounded(MustCompile("return function() return 'ok' end", hours), Frame()).status,
              IsOk());
}

TEST(LuaAttack, DeadlinePassedOrInfiniteOrCancelledBeforeTheCall) {
  auto fn = MustCompile("return function() return 'ran' end");
  EXPECT_THAT(RunBounded(fn, Frame().WithTimeout(-1s)).status,
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(RunBounded(fn, Frame().WithDeadline(Deadline::min())).status,
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  Outcome inf = RunBounded(fn, Frame().WithDeadline(Deadline::max()));
  EXPECT_THAT(inf.status, IsOk());
  auto [frame, canceller] = Frame().WithCancel();
  canceller.Cancel();
  EXPECT_THAT(RunBounded(fn, frame).status, StatusIs(absl::StatusCode::kCancelled));
}

TEST(LuaAttack, OddChunkNamesAndPayloads) {
  const std::string src = "return function(p) return #p .. '' end";
  for (const std::string& name :
       {std::string(), std::string(1 << 20, 'n'), std::string("\xff\xfe\0x", 4)}) {
    absl::StatusOr<std::shared_ptr<LuaFunction>> fn = LuaFunction::Compile(name, src);
    if (!fn.ok()) {
      EXPECT_THAT(fn.status(), StatusIs(absl::StatusCode::kInvalidArgument));
      continue;
    }
    Outcome o = RunBounded(*fn, Frame(), std::string(1 << 20, '\xff'));
    EXPECT_THAT(o.status, IsOk());
    EXPECT_EQ(o.out, std::to_string(1 << 20));
  }
  // A syntax error in a chunk with a 1 MB name: InvalidArgument, bounded message.
  absl::StatusOr<std::shared_ptr<LuaFunction>> bad =
      LuaFunction::Compile(std::string(1 << 20, 'n'), "return function(");
  EXPECT_THAT(bad.status(), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(LuaAttack, HostFunctionNamesAreChecked) {
  LuaHost host;
  auto fn = [](std::int64_t n) { return n; };
  EXPECT_THAT(host.AddFunction("", fn), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(host.AddFunction(std::string(1 << 20, 'a'), fn),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(host.AddFunction("\xff\xfe", fn), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(host.AddFunction("a.b", fn), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(host.AddFunction("and", fn), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(host.AddFunction("invoke", fn), StatusIs(absl::StatusCode::kAlreadyExists));
}

// ---- scripts that try to outlive their deadline ----

struct Escape {
  const char* name;
  const char* source;
};

class LuaEscape : public ::testing::TestWithParam<Escape> {};

// Tests that a script looping inside a metamethod, a library callback or an error path still
// ends with a status by its deadline, in both preemption modes.
TEST_P(LuaEscape, EndsByTheDeadline) {
  for (int hook : {0, 1000}) {
    auto fn = MustCompile(GetParam().source, {.memory_bytes = 8 << 20, .hook_instructions = hook});
    ASSERT_NE(fn, nullptr);
    Outcome o = RunBounded(fn, Frame().WithTimeout(60ms));
    EXPECT_FALSE(o.status.ok()) << GetParam().name << " hook " << hook << ": " << o.out;
    EXPECT_THAT(
        o.status.code(),
        ::testing::AnyOf(absl::StatusCode::kDeadlineExceeded, absl::StatusCode::kResourceExhausted,
                         absl::StatusCode::kPermissionDenied, absl::StatusCode::kInternal))
        << GetParam().name << ": " << o.status;
    EXPECT_LT(o.took, 3s) << GetParam().name << " hook " << hook;
    // Pooled state after a fatal end: the next call of the same function is healthy.
  }
}

INSTANTIATE_TEST_SUITE_P(
    Attack, LuaEscape,
    ::testing::Values(
        Escape{"close", R"(return function()
          local x <close> = setmetatable({}, {__close = function() while true do end end})
          return 'x' end)"},
        Escape{"close_after_error", R"(return function()
          local x <close> = setmetatable({}, {__close = function() while true do end end})
          error('boom') end)"},
        Escape{"index", R"(return function()
          local t = setmetatable({}, {__index = function() while true do end end})
          return t.x end)"},
        Escape{"tostring_error", R"(return function()
          error(setmetatable({}, {__tostring = function() while true do end end})) end)"},
        Escape{"tostring_error_after_deadline", R"(return function()
          local e = setmetatable({}, {__tostring = function() while true do end end})
          local ok = pcall(function() while true do end end)
          error(e) end)"},
        Escape{"name_error", R"(return function()
          error(setmetatable({}, {__name = 'x', __tostring = function() while true do end end}))
          end)"},
        Escape{"return_table_tostring", R"(return function()
          return setmetatable({}, {__tostring = function() while true do end end}) end)"},
        Escape{"coroutine_wrap", R"(return function()
          local f = coroutine.wrap(function() while true do end end)
          f() end)"},
        Escape{"coroutine_nested", R"(return function()
          local f = coroutine.wrap(function()
            local g = coroutine.wrap(function() while true do coroutine.yield() end end)
            while true do g() end end)
          f() end)"},
        Escape{"coroutine_close", R"(return function()
          local co = coroutine.create(function()
            local x <close> = setmetatable({}, {__close = function() while true do end end})
            coroutine.yield() end)
          coroutine.resume(co)
          coroutine.close(co) end)"},
        Escape{"gsub_callback", R"(return function()
          return (string.gsub('aaa', 'a', function() while true do end end)) end)"},
        Escape{"sort_comparator", R"(return function()
          local t = {} for i = 1, 100 do t[i] = i end
          table.sort(t, function() while true do end end) end)"},
        Escape{"sort_invalid_order", R"(return function()
          local t = {} for i = 1, 100000 do t[i] = i end
          while true do pcall(table.sort, t, function() return true end) end end)"},
        Escape{"xpcall_handler", R"(return function()
          xpcall(error, function() while true do end end) end)"},
        Escape{"xpcall_handler_recursive", R"(return function()
          local function h(m) error(m) end
          while true do xpcall(error, h) end end)"},
        Escape{"pcall_swallow", R"(return function()
          while true do pcall(function() while true do end end) end end)"},
        Escape{"deep_recursion", R"(return function()
          local function r(n) return 1 + r(n + 1) end
          return r(1) end)"},
        Escape{"deep_recursion_pcall", R"(return function()
          local function r(n) return pcall(r, n + 1) end
          while true do r(1) end end)"},
        Escape{"c_stack_metamethods", R"(return function()
          local t = setmetatable({}, {}) getmetatable(t).__index = function(s, k) return s[k] end
          while true do pcall(function() return t.x end) end end)"},
        Escape{"string_rep", R"(return function() return string.rep('x', 1 << 40) end)"},
        Escape{"string_rep_sep", R"(return function() return string.rep('x', 1 << 30, 'yy') end)"},
        Escape{"concat_loop", R"(return function()
          local s = 'x' while true do s = s .. s end end)"},
        Escape{"table_grow", R"(return function()
          local t = {} local i = 0 while true do i = i + 1 t[i] = {} end end)"},
        Escape{"format_width", R"(return function()
          while true do local s = string.format('%99d', 1) end end)"},
        Escape{"pattern_backtrack", R"(return function()
          return string.find(string.rep('a', 50000), '.-.-.-.-.-.-.-b') end)"},
        Escape{"load_reader", R"(return function()
          return load(function() while true do end end) end)"},
        Escape{"load_huge_text", R"(return function()
          local f = load(string.rep('local a = 1 ', 1000000)) return f() end)"},
        Escape{"utf8_codes", R"(return function()
          local s = string.rep('\u{10FFFF}', 100000)
          while true do for _, c in utf8.codes(s) do end end end)"},
        Escape{"table_concat", R"(return function()
          local t = {} for i = 1, 1000 do t[i] = string.rep('x', 1000) end
          while true do local s = table.concat(t, string.rep('y', 10000)) end end)"},
        Escape{"gc_metatable", R"(return function()
          setmetatable({}, {__gc = function() while true do end end}) end)"},
        Escape{"collectgarbage_options", R"(return function()
          collectgarbage('stop') local t = {} while true do t[#t + 1] = {} end end)"},
        Escape{"tostring_loop", R"(return function()
          local t = setmetatable({}, {__tostring = function() while true do end end})
          print(t) end)"},
        Escape{"host_log_tostring", R"(return function()
          local t = setmetatable({}, {__tostring = function() while true do end end})
          host.log('info', t) end)"},
        Escape{"concat_metamethod", R"(return function()
          local t = setmetatable({}, {__concat = function() while true do end end})
          return t .. 'x' end)"},
        Escape{"eq_metamethod_in_sort", R"(return function()
          local mt = {__lt = function() while true do end end}
          local t = {} for i = 1, 10 do t[i] = setmetatable({}, mt) end table.sort(t) end)"},
        Escape{"len_in_insert", R"(return function()
          local t = setmetatable({}, {__len = function() while true do end end})
          table.insert(t, 1) end)"},
        Escape{"next_loop_pairs", R"(return function()
          local t = setmetatable({}, {__pairs = function() while true do end end})
          for k in pairs(t) do end end)"}),
    [](const ::testing::TestParamInfo<Escape>& info) { return std::string(info.param.name); });

// Tests that a looping __gc-free script that fills memory and then loops in the finalizers of
// the state's own objects cannot outlive the call: the state closes when the call ends.
TEST(LuaAttack, PooledStateIsHealthyAfterEveryEscape) {
  auto fn = MustCompile(R"(
    local n = 0
    return function(p)
      if p == 'spin' then while true do end end
      n = n + 1
      return tostring(n) .. tostring(rawget(_G, 'leak'))
    end)");
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(RunBounded(fn, Frame().WithTimeout(20ms), "spin").status,
                StatusIs(absl::StatusCode::kDeadlineExceeded));
    Outcome o = RunBounded(fn, Frame().WithTimeout(2s), "count");
    EXPECT_THAT(o.status, IsOk());
    EXPECT_EQ(o.out, "1nil");
  }
}

// ---- what one call can change for another ----

TEST(LuaAttack, PooledStatesLeakNothingBetweenCalls) {
  auto host = std::make_shared<LuaHost>(LuaHostOptions{.portable = Portable()});
  auto fn = MustCompile(R"(
    return function(p)
      if p == 'write' then
        leak = 'global'
        _G.leak2 = 'g2'
        rawset(_G, 'leak3', 'g3')
        string.leak = 's'
        rawset(string, 'leak4', 's4')
        table.leak = 't'
        math.leak = 'm'
        coroutine.leak = 'c'
        utf8.leak = 'u'
        host.leak = 'h'
        host.write = function() return 'hijacked' end
        string.upper = function() return 'hijacked' end
        math.random = function() return 4 end
        _ENV.leak5 = 'e'
        pcall(setmetatable, _G, {__index = function() return 'meta' end})
        pcall(function() getmetatable('').__index = {leak = 'sm'} end)
        pcall(function() getmetatable('').leak = 'sm2' end)
        local ok = pcall(function() setmetatable(string, {__index = function() return 'x' end}) end)
        return 'wrote'
      end
      local seen = {}
      for _, v in ipairs({tostring(leak), tostring(leak2), tostring(leak3), tostring(string.leak),
                          tostring(string.leak4), tostring(table.leak), tostring(math.leak),
                          tostring(coroutine.leak), tostring(utf8.leak),
                          tostring(host.leak), tostring(leak5), tostring(('').leak),
                          tostring(getmetatable(string)), tostring(_G.nothing)}) do
        seen[#seen + 1] = v
      end
      seen[#seen + 1] = string.upper('a')
      seen[#seen + 1] = ('a'):upper()
      return table.concat(seen, ',')
    end)",
                        {.max_idle_states = 1}, host);
  // getmetatable(string) is false: the proxy hides its metatable.
  const std::string clean = "nil,nil,nil,nil,nil,nil,nil,nil,nil,nil,nil,nil,false,nil,A,A";
  EXPECT_EQ(RunBounded(fn, Frame().WithTimeout(2s), "read").out, clean);
  for (int i = 0; i < 3; ++i) {
    Outcome w = RunBounded(fn, Frame().WithTimeout(2s), "write");
    EXPECT_THAT(w.status, IsOk());
    Outcome r = RunBounded(fn, Frame().WithTimeout(2s), "read");
    EXPECT_THAT(r.status, IsOk());
    EXPECT_EQ(r.out, clean);
  }
}

TEST(LuaAttack, ScriptCannotWriteTheFrameView) {
  auto host = std::make_shared<LuaHost>(LuaHostOptions{.portable = Portable()});
  auto fn = MustCompile(R"(
    return function(p, frame)
      local r = {}
      r[#r + 1] = tostring(pcall(function() frame['attack.region'] = 'evil' end))
      r[#r + 1] = tostring(pcall(rawset, frame, 'attack.region', 'evil'))
      r[#r + 1] = tostring(pcall(setmetatable, frame, {}))
      r[#r + 1] = tostring(getmetatable(frame))
      local caller = frame['framekit.caller']
      if type(caller) == 'table' then pcall(function() caller.user_id = 'root' end) end
      r[#r + 1] = tostring(frame['attack.region'])
      r[#r + 1] = type(caller) == 'table' and tostring(frame['framekit.caller'].user_id) or 'none'
      return table.concat(r, ',')
    end)",
                        {}, host);
  Frame frame = WithCaller(Frame(), {.user_id = "alice"}).With(kRegion, "eu").WithTimeout(2s);
  Outcome o = RunBounded(fn, frame);
  EXPECT_THAT(o.status, IsOk());
  // Every write is refused; the view still reads the real values afterwards.
  EXPECT_THAT(o.out, ::testing::StartsWith("false,false,false,"));
  EXPECT_THAT(o.out, ::testing::EndsWith(",eu,alice"));
}

// ---- re-entry ----

// Tests that a script invoking itself through the executor ends with a status (no stack
// overflow of the host thread, no hang), whatever depth it reaches.
TEST(LuaAttack, SelfInvokeRecursionEndsWithAStatus) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  auto host = std::make_shared<LuaHost>();
  BindInvoker(*host, executor);
  ASSERT_THAT(executor.Register("self", MustCompile(R"(
    return function(p) return host.invoke('self', p) end)",
                                                    {}, host)),
              IsOk());
  std::atomic<bool> done{false};
  absl::StatusOr<std::string> result;
  std::thread t([&] {
    result = executor.Invoke(Frame(), "self", "x", {{"timeout_ms", std::int64_t{2000}}});
    done = true;
  });
  for (int i = 0; i < 1000 && !done; ++i) std::this_thread::sleep_for(10ms);
  if (!done) {
    std::fprintf(stderr, "FATAL: recursive invoke did not end\n");
    std::_Exit(3);
  }
  t.join();
  // The innermost level is refused (ResourceExhausted); each outer one turns it into a Lua error.
  EXPECT_THAT(result.status(),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("nested more than")));
}

// Tests that the nesting bound fits a small thread stack: 64 levels of script -> host.invoke ->
// script take well under 1 MiB (the stack a host's worker threads may have).
TEST(LuaAttack, NestedRunsFitASmallStack) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  auto host = std::make_shared<LuaHost>();
  ASSERT_THAT(
      host->AddFunction("sp",
                        [] {
                          volatile char here = 0;
                          return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(&here));
                        }),
      IsOk());
  BindInvoker(*host, executor);
  ASSERT_THAT(executor.Register("down", MustCompile(R"(
    return function(p)
      local n = tonumber(p)
      if n == 0 then return tostring(host.sp()) end
      return host.invoke('down', tostring(n - 1))
    end)",
                                                    {}, host)),
              IsOk());
  absl::StatusOr<std::string> shallow = executor.Invoke(Frame(), "down", "0");
  absl::StatusOr<std::string> deep = executor.Invoke(Frame(), "down", "10");
  ASSERT_THAT(shallow, IsOk());
  ASSERT_THAT(deep, IsOk());
  const long long per_level = (std::stoll(*shallow) - std::stoll(*deep)) / 10;
  EXPECT_GT(per_level, 0);
  EXPECT_LT(per_level * 64, 1 << 20) << per_level << " bytes of stack per level";
  EXPECT_THAT(executor.Invoke(Frame(), "down", "62"), IsOk());
  absl::Status too_deep = executor.Invoke(Frame(), "down", "64").status();
  EXPECT_THAT(too_deep, StatusIs(absl::StatusCode::kInternal, HasSubstr("nested more than 64")));
  // Each level adds its prefix to the message, not the inner status's payloads again (which
  // doubled the text per level: megabytes at depth 20).
  EXPECT_LT(too_deep.message().size(), 8u << 10);
  EXPECT_LT(too_deep.ToString().size(), 16u << 10);
}

// Tests that a nested Lua call's deadline preempts it and the outer call still ends by its own.
TEST(LuaAttack, NestedLuaCallsKeepTheirDeadlines) {
  TenantApp app;
  dispatch::FunctionExecutor executor(app.app);
  auto host = std::make_shared<LuaHost>();
  BindInvoker(*host, executor);
  ASSERT_THAT(executor.Register("spin", MustCompile("return function() while true do end end",
                                                    {.timeout = 30ms}, host)),
              IsOk());
  ASSERT_THAT(executor.Register("outer", MustCompile(R"(
    return function(p)
      local ok, err = pcall(host.invoke, 'spin', p)
      if p == 'then_spin' then while true do end end
      return tostring(ok)
    end)",
                                                     {.timeout = 5s}, host)),
              IsOk());
  auto start = Clock::now();
  absl::StatusOr<std::string> r =
      executor.Invoke(Frame(), "outer", "", {{"timeout_ms", std::int64_t{3000}}});
  EXPECT_THAT(r.status(), IsOk());
  if (r.ok()) {
    EXPECT_EQ(*r, "false");
  }
  EXPECT_LT(Clock::now() - start, 2s);
  start = Clock::now();
  r = executor.Invoke(Frame(), "outer", "then_spin", {{"timeout_ms", std::int64_t{200}}});
  EXPECT_THAT(r.status(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - start, 2s);
}

// ---- SIGURG shared with the application ----

std::atomic<int> g_app_sigurg{0};
void AppSigurg(int) { g_app_sigurg.fetch_add(1, std::memory_order_relaxed); }

// Tests that a SIGURG meant for the application (e.g. sent to a thread running no Lua) still
// reaches the application's handler once framekit's is installed.
TEST(LuaAttack, ApplicationSigurgHandlerStillRuns) {
  struct sigaction sa {};
  sa.sa_handler = AppSigurg;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGURG, &sa, &old), 0);
  // framekit installs its handler at the first signal-preempted call.
  auto spin = MustCompile("return function() while true do end end");
  EXPECT_THAT(RunBounded(spin, Frame().WithTimeout(20ms)).status,
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  const int before = g_app_sigurg.load();
  std::thread other([] {
    pthread_kill(pthread_self(), SIGURG);
    std::this_thread::sleep_for(10ms);
  });
  other.join();
  EXPECT_EQ(g_app_sigurg.load(), before + 1);
  // And Lua preemption still works.
  EXPECT_THAT(RunBounded(spin, Frame().WithTimeout(20ms)).status,
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  sigaction(SIGURG, &old, nullptr);
}

// Tests that a call on a thread that blocks SIGURG (as threads of runtimes that take signals on
// one dedicated thread do) still ends at its deadline.
TEST(LuaAttack, ThreadBlockingSigurgStillPreempted) {
  auto spin = MustCompile("return function() while true do end end");
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGURG);
  sigset_t old;
  ASSERT_EQ(pthread_sigmask(SIG_BLOCK, &set, &old), 0);
  // RunBounded's thread inherits this thread's mask.
  Outcome o = RunBounded(spin, Frame().WithTimeout(50ms), "", 10s);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  EXPECT_THAT(o.status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(o.took, 3s);
}

// Tests that the timer of a call that returned early does not fire later on the thread, in the
// application's code: a sleep there is not interrupted (EINTR, which SA_RESTART does not prevent
// for nanosleep, poll or epoll_wait).
TEST(LuaAttack, TimerDoesNotOutliveTheCall) {
  auto quick = MustCompile("return function() return 'q' end");
  std::atomic<int> interrupted{0};
  std::thread t([&] {
    for (int round = 0; round < 3; ++round) {
      for (int i = 0; i < 20; ++i) {
        StringSink sink;
        dispatch::RunStats stats;
        // 30 ms: long enough for a trivial call on a loaded sanitizer build (5 ms failed once in
        // a loaded TSan run), and short enough that a timer left armed fires inside the sleep.
        EXPECT_THAT(quick->Run(Frame().WithTimeout(30ms), "", sink, stats), IsOk());
      }
      timespec ts{0, 100 * 1000 * 1000};
      if (nanosleep(&ts, nullptr) != 0) interrupted.fetch_add(1);
    }
  });
  t.join();
  EXPECT_EQ(interrupted.load(), 0);
}

// Tests that a handler the application installs over framekit's does not leave scripts
// unpreempted: calls fall back to a count hook.
TEST(LuaAttack, HandlerReplacedAfterFramekitStillPreempts) {
  auto spin = MustCompile("return function() while true do end end");
  EXPECT_THAT(RunBounded(spin, Frame().WithTimeout(20ms)).status,
              StatusIs(absl::StatusCode::kDeadlineExceeded));  // framekit's handler is in
  struct sigaction sa {};
  sa.sa_handler = AppSigurg;
  sigemptyset(&sa.sa_mask);
  struct sigaction old {};
  ASSERT_EQ(sigaction(SIGURG, &sa, &old), 0);
  Outcome o = RunBounded(spin, Frame().WithTimeout(50ms));
  sigaction(SIGURG, &old, nullptr);
  EXPECT_THAT(o.status, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(o.took, 3s);
  // With framekit's handler back, signal preemption again.
  EXPECT_THAT(RunBounded(spin, Frame().WithTimeout(20ms)).status,
              StatusIs(absl::StatusCode::kDeadlineExceeded));
}

// ---- many calls: no leak of fds, threads or memory ----

long VmRssKb() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long kb = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  }
  std::fclose(f);
  return kb;
}

int OpenFds() {
  int n = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    if (fcntl(fd, F_GETFD) != -1) ++n;
  }
  return n;
}

// Tests that calls on short-lived threads (each with its own timer) and states closed by fatal
// ends leak neither timers, fds nor memory.
TEST(LuaAttack, ManyCallsOnManyThreadsLeakNothing) {
  auto fn = MustCompile(R"(return function(p)
      if p == 'spin' then while true do end end
      return p end)");
  auto round = [&](int threads, int calls) {
    for (int t = 0; t < threads; ++t) {
      std::thread([&] {
        StringSink sink;
        dispatch::RunStats stats;
        for (int i = 0; i < calls; ++i) {
          (void)fn->Run(Frame().WithTimeout(i % 50 == 0 ? 1ms : 1s), i % 50 == 0 ? "spin" : "x",
                        sink, stats);
        }
      }).join();
    }
  };
  round(50, 100);
  [[maybe_unused]] const long rss = VmRssKb();
  const int fds = OpenFds();
  round(500, 100);
  EXPECT_LE(OpenFds(), fds);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  // (Under the sanitizers freed memory sits in their quarantine: LeakSanitizer checks there.)
  EXPECT_LT(VmRssKb() - rss, 20 * 1024) << "RSS grew by more than 20 MiB";
#endif
}

// ---- Lua processes ----

TEST(LuaAttack, ProcessLimitsAreChecked) {
  const std::string src = "return {poll = function() return 'idle' end}";
  EXPECT_THAT(LuaProcessSpec("p", src, {.memory_bytes = 0}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaProcessSpec("p", src, {.step_timeout = 0ms}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaProcessSpec("p", src, {.step_timeout = -1ms}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaProcessSpec("p", src, {.max_output_bytes = 0}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaProcessSpec("p", src, {.max_log_lines = -1}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(LuaProcessSpec("p", src, {.step_timeout = Clock::duration::max()}).status(), IsOk());
}

}  // namespace
}  // namespace framekit::lua
