// Internal: the per-call state of a Lua run and the sandbox primitives shared by the library's
// sources (the allocator, the hook, the pattern matcher). Not part of the public API.
#ifndef FRAMEKIT_LUA_INTERNAL_SANDBOX_H_
#define FRAMEKIT_LUA_INTERNAL_SANDBOX_H_

#include <cstddef>
#include <cstdint>
#include <stop_token>
#include <string>

#include "absl/status/status.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/code.h"
#include "framekit/lua/lua_function.h"

struct lua_State;

namespace framekit::lua_internal {

using lua::LuaFunction;
using lua::LuaHost;
using lua::LuaInvoker;

// Everything one Run needs, reachable from any thread (coroutine) of its lua_State through the
// allocator's userdata (lua_getallocf).
class SignalUpgrade;

struct CallState {
  // Limits.
  std::size_t memory_limit = 0;
  Deadline deadline = Deadline::max();
  std::stop_token stop;
  int hook_period = 1000;
  // Preempted by signal (no count hook): a hook that finds nothing due removes itself.
  bool interrupt_hook = false;
  // Set while a call that will be preempted by signal still runs its first instructions under a
  // count hook: the hook's first firing hands the call over to the signal (preempt.cc).
  SignalUpgrade* upgrade = nullptr;

  // Accounting.
  std::size_t used = 0;
  std::size_t peak = 0;
  // Garbage earlier calls left on a pooled state: what the peak leaves out, and what
  // collectgarbage("count") leaves out until a full collection, so that a call does not read
  // how much another allocated.
  std::size_t inherited = 0;
  std::size_t hidden_garbage = 0;
  std::uint64_t allocations = 0;
  std::uint64_t hooks = 0;
  std::uint64_t host_calls = 0;
  std::uint64_t output_bytes = 0;
  std::uint64_t object_ids = 0;  // numbers given to objects tostring showed
  int log_lines = 0;
  bool closing = false;  // lua_close runs: never refuse memory
  // A refused growth not yet known to be final (Lua retries once after an emergency GC).
  bool pending_refusal = false;
  void* pending_ptr = nullptr;
  std::size_t pending_nsize = 0;

  // The first fatal condition (deadline, cancellation, denied capability, out of memory, a
  // failed Sink write): once set, every checkpoint re-raises it and the call ends with it.
  absl::Status fatal;

  // The call.
  const LuaFunction* function = nullptr;
  const LuaHost* host = nullptr;
  const Frame* frame = nullptr;
  dispatch::Sink* out = nullptr;
  std::size_t max_output = 0;
  int max_log_lines = 0;
  std::string chunkname;
  std::string_view payload;
  const std::string* bytecode = nullptr;
};

CallState& StateOf(lua_State* L);

// The counting allocator (userdata: CallState*). Refuses growth past the limit, and any growth
// once the call is past its deadline; never refuses a free or a shrink, nor anything while
// `closing`.
void* Alloc(void* ud, void* ptr, std::size_t osize, std::size_t nsize);

// Checks the deadline and stop token; raises the call's fatal error (a Lua error that pcall
// wrappers re-raise) when one is set. Called from the count hook and the pattern matcher.
void CheckPoint(lua_State* L);

// Sets `fatal` (if none yet) and raises it. Never returns.
[[noreturn]] void RaiseFatal(lua_State* L, absl::Status status);

// A Lua error's status: Internal "lua: <first line>" with the whole text (message and
// traceback) as the kLuaErrorUrl payload.
absl::Status LuaError(std::string_view text);

// Makes a pending allocator refusal final (ResourceExhausted).
void SettlePending(CallState& cs);

// Installs the deadline hook on L (coroutines created later inherit it).
void InstallHook(lua_State* L, int period);

// Installs the hook with a period of one instruction: the preemption signal's handler calls it
// on the running Lua thread. Async-signal-safe (lua_sethook is).
void InstallInterruptHook(lua_State* L);

// Whether the value at `index` is the error object of a fatal condition.
bool IsFatalObject(lua_State* L, int index);

// A message handler: the error message with a traceback appended (fatal objects pass through).
int Traceback(lua_State* L);

// Writes one chunk of output, enforcing the output limit; a failed write is fatal. Raises.
void WriteOutput(lua_State* L, std::string_view chunk);

// Pushes the read-only frame view (a userdata indexed by portable key name).
void PushFrameView(lua_State* L);

// Builds a sandbox on a new state L, once: the shared base (base subset, string, table, math,
// utf8, coroutine, the os subset, the host table, denied stubs) that every call on L reads and
// none can write. Raises Lua errors (call it protected).
void BuildSandbox(lua_State* L);

// Gives the next call on L its own global table: a fresh table whose reads fall through to the
// base, holding a proxy of every library (reads fall through, writes stay in the call: the
// previous call's proxy when that call left it empty, else a fresh one) and _G; it becomes the
// registry's globals, so load() and the chunk see it. Reseeds math.random. Raises Lua errors
// (call it protected).
void OpenCallEnvironment(lua_State* L);

// Drops what the call left in the registry (its globals, its object numbers). Never raises.
void CloseCallEnvironment(lua_State* L);

// Lua 5.4.4's string.find / match / gmatch / gsub with a work budget (pattern.cc).
int PatternFind(lua_State* L);
int PatternMatch(lua_State* L);
int PatternGmatch(lua_State* L);
int PatternGsub(lua_State* L);

// LuaHost internals for the sandbox.
class LuaHostAccess {
 public:
  static const auto& functions(const LuaHost& host) { return host.functions_; }
  static const LuaInvoker& invoker(const LuaHost& host) { return host.invoker_; }
  static spdlog::logger& logger(const LuaHost& host) { return *host.logger_; }
  static dispatch::ExtRef ref(const LuaHost& host) { return host.ref(); }
};

}  // namespace framekit::lua_internal

#endif  // FRAMEKIT_LUA_INTERNAL_SANDBOX_H_
