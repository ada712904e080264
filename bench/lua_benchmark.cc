// LuaFunction's overheads, each against a baseline of the same run:
//   BM_LuaRunTrivial vs BM_LuaBarePcall   the whole Run (a pooled sandbox, the call's own
//                                         environment, load, call) vs a bare lua_pcall of the
//                                         same function on a ready state
//   BM_LuaRunTrivialFreshState            the whole Run building a fresh sandbox per call
//   BM_LuaLoop{Signal,Hook1000,HookNever} the preemption's cost on a CPU-bound script, against
//   vs BM_LuaLoopBare{NoHook,EmptyHook}   the bare loop with no hook and with an empty one
//   BM_LuaIsolation{FreshState,SharedBase} a fresh lua_State per call vs a new thread and
//                                         environment table over one shared base state
//   BM_LuaIsolationFloor                  the least any per-call isolation costs: a new
//                                         environment table, the loaded chunk run anew in it
//                                         (so the handler's upvalues are the call's own), the
//                                         handler called; no libraries, limits or frame
#include <string>

#include "benchmark/benchmark.h"
#include "framekit/lua/lua_function.h"
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

namespace {

class NullSink : public framekit::dispatch::Sink {
 public:
  absl::Status Write(std::string_view) override { return absl::OkStatus(); }
};

constexpr const char* kTrivial = "return function(p) return p end";
constexpr const char* kLoop =
    "return function() local s = 0 for i = 1, 100000 do s = s + i end return tostring(s) end";

void RunFunction(benchmark::State& state, const char* source, int hook, std::size_t idle = 8) {
  framekit::lua::LuaLimits limits;
  limits.hook_instructions = hook;
  limits.max_idle_states = idle;
  auto fn = framekit::lua::LuaFunction::Compile("bench.lua", source, limits);
  if (!fn.ok()) return state.SkipWithError("compile");
  NullSink sink;
  const framekit::Frame frame;
  for (auto _ : state) {
    framekit::dispatch::RunStats stats;
    absl::Status status = (*fn)->Run(frame, "x", sink, stats);
    benchmark::DoNotOptimize(status);
  }
}

void BM_LuaRunTrivial(benchmark::State& state) { RunFunction(state, kTrivial, 0); }
BENCHMARK(BM_LuaRunTrivial);
// The same with no reuse: a fresh state and sandbox for every call.
void BM_LuaRunTrivialFreshState(benchmark::State& state) { RunFunction(state, kTrivial, 0, 0); }
BENCHMARK(BM_LuaRunTrivialFreshState);

void BarePcall(benchmark::State& state, const char* source, bool hook) {
  lua_State* L = luaL_newstate();
  luaL_openlibs(L);
  luaL_loadstring(L, source);
  lua_call(L, 0, 1);
  if (hook)
    lua_sethook(
        L, [](lua_State*, lua_Debug*) {}, LUA_MASKCOUNT, 1000);
  for (auto _ : state) {
    lua_pushvalue(L, -1);
    lua_pushliteral(L, "x");
    lua_pcall(L, 1, 1, 0);
    lua_pop(L, 1);
  }
  lua_close(L);
}
void BM_LuaBarePcall(benchmark::State& state) { BarePcall(state, kTrivial, false); }
BENCHMARK(BM_LuaBarePcall);

// The preemption's cost on a CPU-bound loop: through LuaFunction with signal preemption (the
// default: no hook), with a count hook every 1000 instructions and with one that never fires
// (1e9), against the bare loop with and without an empty hook.
void BM_LuaLoopSignal(benchmark::State& state) { RunFunction(state, kLoop, 0); }
BENCHMARK(BM_LuaLoopSignal);
void BM_LuaLoopHook1000(benchmark::State& state) { RunFunction(state, kLoop, 1000); }
BENCHMARK(BM_LuaLoopHook1000);
void BM_LuaLoopHookNever(benchmark::State& state) { RunFunction(state, kLoop, 1000000000); }
BENCHMARK(BM_LuaLoopHookNever);
void BM_LuaLoopBareNoHook(benchmark::State& state) { BarePcall(state, kLoop, false); }
BENCHMARK(BM_LuaLoopBareNoHook);
void BM_LuaLoopBareEmptyHook(benchmark::State& state) { BarePcall(state, kLoop, true); }
BENCHMARK(BM_LuaLoopBareEmptyHook);

// Isolation by a fresh state per call: new state, the libraries, load, call, close.
void BM_LuaIsolationFreshState(benchmark::State& state) {
  for (auto _ : state) {
    lua_State* L = luaL_newstate();
    luaL_openlibs(L);
    luaL_loadstring(L, kTrivial);
    lua_call(L, 0, 1);
    lua_pushliteral(L, "x");
    lua_pcall(L, 1, 1, 0);
    lua_close(L);
  }
}
BENCHMARK(BM_LuaIsolationFreshState);

// Isolation by a shared base: per call a new thread and an environment table whose __index is
// the base's globals (the base must then be frozen, and its string metatable shared: the
// weaker guarantee this design does not take).
void BM_LuaIsolationSharedBase(benchmark::State& state) {
  lua_State* L = luaL_newstate();
  luaL_openlibs(L);
  for (auto _ : state) {
    lua_State* T = lua_newthread(L);
    lua_newtable(T);  // env
    lua_newtable(T);  // its metatable
    lua_pushglobaltable(T);
    lua_setfield(T, -2, "__index");
    lua_setmetatable(T, -2);
    luaL_loadstring(T, kTrivial);
    lua_pushvalue(T, -2);
    lua_setupvalue(T, -2, 1);  // _ENV
    lua_call(T, 0, 1);
    lua_pushliteral(T, "x");
    lua_pcall(T, 1, 1, 0);
    lua_pop(L, 1);  // the thread
  }
  lua_close(L);
}
BENCHMARK(BM_LuaIsolationSharedBase);

// The floor under any isolating Run: per call only a fresh environment table (reads falling
// through to the globals), the already loaded chunk re-run in it to make a handler of its own,
// and the handler's call. Everything LuaFunction adds (library proxies, the frame view, limits,
// preemption, stats) comes on top of this.
void BM_LuaIsolationFloor(benchmark::State& state) {
  lua_State* L = luaL_newstate();
  luaL_openlibs(L);
  luaL_loadstring(L, kTrivial);  // the chunk, kept at index 1
  lua_newtable(L);               // the environments' shared metatable, index 2
  lua_pushglobaltable(L);
  lua_setfield(L, -2, "__index");
  for (auto _ : state) {
    lua_pushvalue(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, 2);
    lua_setmetatable(L, -2);
    lua_setupvalue(L, -2, 1);  // _ENV
    lua_call(L, 0, 1);         // the handler
    lua_pushliteral(L, "x");
    lua_pcall(L, 1, 1, 0);
    lua_pop(L, 1);
  }
  lua_close(L);
}
BENCHMARK(BM_LuaIsolationFloor);

}  // namespace
