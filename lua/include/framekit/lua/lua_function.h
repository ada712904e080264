// Guest code: sandboxed Lua 5.4 functions with preemptive deadlines and memory caps.
//
// A LuaFunction is dispatch::Code compiled from a Lua chunk that returns the handler function:
//
//   return function(payload, frame)
//     host.log("info", "tenant " .. tostring(frame["app.tenant"]))
//     host.write("chunk ")                  -- streamed to the Sink as written
//     return "hello " .. payload            -- appended after the streamed chunks
//   end
//
// The handler receives the payload (a string) and a read-only view of the call's frame indexed
// by key name: only keys the application made portable (ctx/portable.h) are visible, built-in
// types as Lua values (string, integer, boolean, number, and CallerContext as a table with
// user_id, role, tenant_id, email, groups), others as their encoded bytes; anything else reads
// as nil. It returns its output (a string, or nil for none) and may stream chunks through
// host.write.
//
// Isolation: no global, upvalue, metatable or module state of one call is visible to another,
// concurrent or later. A LuaFunction keeps a pool of built sandboxes (lua_States with the
// libraries opened and restricted: the shared base); a call takes one for itself (so concurrent
// calls never share a state), and gets its own global table whose reads fall through to the
// base, its own proxy of every library table (string, table, math, utf8, coroutine, os, host,
// and the denied io, debug, package: reads fall through, writes and rawset land in the proxy),
// its own _G, a fresh math.random seed, and runs the chunk anew (so the handler's upvalues are
// its own). A proxy the previous call on the same state left untouched (no field written or
// rawset) is empty and carries nothing, so it serves the next call too; the chunk is loaded once
// per state and re-run per call. Calls that share a pooled state share its heap:
// collectgarbage("count") leaves out the garbage earlier calls left (until the call runs a full
// collection), but how the collector behaves and how long it takes still depends on it; a host
// whose callers must not share even that sets max_idle_states = 0. Nothing the base holds is
// reachable by a script as a table it could write: the base's globals and libraries only through
// those proxies, the string metatable hidden
// (__metatable), the registry not at all. A call that ends by a fatal condition (deadline,
// cancellation, memory, a denied capability, a failed write) closes its state instead of
// returning it, and so does one that leaves more than 256 KiB of garbage; LuaLimits::
// max_idle_states = 0 builds a fresh state for every call. Differences from plain Lua this
// brings: next(string) sees only the call's own fields (pairs sees all), a method call on a
// string (s:upper()) uses the base's string library, not the call's replacement, and
// getmetatable(_G) is false. (bench/lua_benchmark.cc measures a pooled call against a fresh
// state.) The chunk is compiled once, by Compile, to bytecode the host made with lua_dump;
// scripts themselves can load text chunks only. No value shows a host address: tostring, print
// and string.format("%s") show a table, function, thread or userdata as "table: #3" (its
// number within the call), and string.format("%p") is an error.
//
// What a script sees (the sandbox):
//   base        assert error ipairs next pairs pcall xpcall rawequal rawget rawlen rawset select
//               getmetatable setmetatable tonumber tostring type load _G _VERSION print
//               (print goes to the host log); collectgarbage("count"|"collect"|"step"|
//               "isrunning") only
//   libraries   string (no string.dump), table, math, utf8, coroutine, os.clock, os.time
//   host        host.write(s), host.log([level,] msg), host.remaining(), host.invoke(name,
//               payload), and the application's functions (LuaHost::AddFunction)
// Denied, each ending the call with PermissionDenied naming the capability (a pcall cannot
// catch it): io.*, debug.*, package.*, os.* but clock/time, require, dofile, loadfile,
// string.dump, load of a binary chunk (mode "b" or a chunk starting with "\27"),
// collectgarbage options that change the collector, and metatables with a __gc field (Lua runs
// finalizers with hooks off: a looping __gc could not be preempted).
//
// Limits, all enforced (LuaLimits):
//   deadline    the earlier of the frame's deadline and LuaLimits::timeout. By default a call
//               runs its first thousand VM instructions under a count hook, and a call that
//               runs longer goes over to a signal, with no hook while the script runs: the
//               calling thread's POSIX timer signals it (SIGURG) at the deadline, the frame's
//               cancellation signals it too, and the signal handler installs a
//               one-instruction count hook on the Lua thread running there, which ends the
//               call (coroutine switches are tracked for this). With
//               LuaLimits::hook_instructions = N > 0, or in a ThreadSanitizer build, a count
//               hook every N (1000) instructions checks the deadline and stop token instead;
//               so does a call on a thread that blocks SIGURG, or one made after someone else
//               replaced framekit's SIGURG handler (framekit chains to the handler it found, but
//               cannot see one installed later: it says so once on stderr). The timer is
//               disarmed when the call ends, so no signal reaches the application's own code.
//               The allocator and the pattern matcher check too (string.find/match/gmatch/gsub are
//               Lua 5.4.4's, counting their work, since a backtracking pattern runs no VM
//               instruction). Past the deadline the call ends with DeadlineExceeded, after
//               cancellation with Cancelled; once triggered, every later hook, pcall and
//               coroutine.resume re-raises, so a script cannot catch its way past it.
//   memory      every allocation of the call's state goes through a counting lua_Alloc;
//               growing past memory_bytes fails the allocation, and an out-of-memory error that
//               reaches a pcall or the top ends the call with ResourceExhausted. Standard
//               library functions whose time is proportional to what they allocate
//               (string.rep, table.concat, string.format, gsub results) are bounded by it.
//   output      host.write and the returned string together: max_output_bytes
//               (ResourceExhausted).
//   log lines   max_log_lines per call; further lines are dropped.
//   nesting     at most 64 Lua calls nested on one thread (a script's host.invoke of a Lua
//               function, directly or through others): the next is ResourceExhausted, which the
//               invoking script sees as a Lua error. A failed host.invoke's Lua error is the
//               nested status's code and message, without its payloads.
//
// Status codes of Run: OK; DeadlineExceeded; Cancelled; ResourceExhausted (memory, output,
// nesting);
// PermissionDenied (a denied capability); the Sink's own status when a write fails; Internal
// for a Lua error (error(), a runtime error, an error a host function returned, the handler
// returning a non-string), carrying the message and a traceback with chunkname:line as a
// kLuaErrorUrl payload (IsLuaError, LuaTraceback).
//
// Example:
//   auto host = std::make_shared<framekit::lua::LuaHost>(framekit::lua::LuaHostOptions{
//       .name = "scripts", .portable = portable_keys});
//   FRAMEKIT_RETURN_IF_ERROR(host->AddFunction(
//       "double", [](std::int64_t n) -> absl::StatusOr<std::int64_t> { return 2 * n; }));
//   FRAMEKIT_ASSIGN_OR_RETURN(
//       std::shared_ptr<framekit::lua::LuaFunction> fn,
//       framekit::lua::LuaFunction::Compile(
//           "greet.lua", "return function(p, f) return p .. host.double(21) end",
//           framekit::lua::LuaLimits{.memory_bytes = 4 << 20}, host));
//   framekit::dispatch::RunStats stats;
//   FRAMEKIT_RETURN_IF_ERROR(fn->Run(frame.WithTimeout(std::chrono::milliseconds(50)), "x",
//                                    sink, stats));   // sink receives "x42"
#ifndef FRAMEKIT_LUA_LUA_FUNCTION_H_
#define FRAMEKIT_LUA_LUA_FUNCTION_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/code.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/guard.h"

namespace spdlog {
class logger;
}

namespace framekit::lua {

// Per-call limits of a LuaFunction.
struct LuaLimits {
  std::size_t memory_bytes = 16 << 20;  // the call's whole Lua heap, libraries included
  // The longest a call may run when its frame has no earlier deadline: a Lua call always has
  // one, which is what makes it preemptive.
  Clock::duration timeout = std::chrono::seconds(5);
  std::size_t max_output_bytes = 16 << 20;
  // How a running script is stopped at its deadline or cancellation. 0 (the default): by a
  // signal, with no hook while the script runs past its first thousand instructions (see
  // "Limits" above); a build under
  // ThreadSanitizer uses a count hook every 1000 instructions instead. N > 0: a count hook every
  // N VM instructions checks the deadline and the stop token (costs about 2x on CPU-bound code).
  int hook_instructions = 0;
  int max_log_lines = 100;  // per call
  // Built sandboxes kept for reuse by later calls (see "Isolation"); 0 builds a fresh state for
  // every call.
  std::size_t max_idle_states = 8;
};

// The payload type URL of a Lua error: the message and a traceback.
inline constexpr std::string_view kLuaErrorUrl = "type.framekit/LuaError";

// Whether `status` is a Lua error (Internal with a kLuaErrorUrl payload).
bool IsLuaError(const absl::Status& status);
// The Lua error's message and traceback ("chunk:3: boom\nstack traceback:\n..."), or nullopt.
std::optional<std::string> LuaTraceback(const absl::Status& status);

}  // namespace framekit::lua

namespace framekit::lua_internal {

// A value crossing between Lua and an application host function.
using HostValue = std::variant<std::monostate, bool, std::int64_t, double, std::string>;
enum class HostType { kBool, kInteger, kNumber, kString };

template <class T>
using Bare = std::remove_cvref_t<T>;

template <class T>
constexpr HostType HostTypeOf() {
  using U = Bare<T>;
  if constexpr (std::is_same_v<U, bool>) {
    return HostType::kBool;
  } else if constexpr (std::is_integral_v<U>) {
    return HostType::kInteger;
  } else if constexpr (std::is_floating_point_v<U>) {
    return HostType::kNumber;
  } else {
    static_assert(std::is_same_v<U, std::string> || std::is_same_v<U, std::string_view>,
                  "host function parameters: bool, integers, floating point, std::string, "
                  "std::string_view (and a leading const Frame&)");
    return HostType::kString;
  }
}

template <class T>
decltype(auto) FromHost(const HostValue& value) {
  using U = Bare<T>;
  if constexpr (std::is_same_v<U, bool>) {
    return std::get<bool>(value);
  } else if constexpr (std::is_integral_v<U>) {
    return static_cast<U>(std::get<std::int64_t>(value));
  } else if constexpr (std::is_floating_point_v<U>) {
    return static_cast<U>(std::get<double>(value));
  } else if constexpr (std::is_same_v<U, std::string_view>) {
    return std::string_view(std::get<std::string>(value));
  } else {
    return static_cast<const std::string&>(std::get<std::string>(value));
  }
}

template <class T>
HostValue ToHost(T&& value) {
  using U = Bare<T>;
  if constexpr (std::is_same_v<U, bool>) {
    return HostValue(std::in_place_type<bool>, value);
  } else if constexpr (std::is_integral_v<U>) {
    return HostValue(std::in_place_type<std::int64_t>, static_cast<std::int64_t>(value));
  } else if constexpr (std::is_floating_point_v<U>) {
    return HostValue(std::in_place_type<double>, static_cast<double>(value));
  } else {
    static_assert(std::is_convertible_v<U, std::string_view>,
                  "host function results: void, bool, integers, floating point, strings, "
                  "absl::Status or absl::StatusOr of those");
    return HostValue(std::in_place_type<std::string>, std::string(std::string_view(value)));
  }
}

template <class T>
inline constexpr bool kIsStatusOr = false;
template <class T>
inline constexpr bool kIsStatusOr<absl::StatusOr<T>> = true;

// The type-erased, guarded form of an application host function.
using HostThunk =
    std::function<absl::StatusOr<HostValue>(const Frame& frame, std::span<const HostValue> args)>;

struct HostFunctionEntry {
  std::vector<HostType> params;
  HostThunk call;  // never throws: wrapped in dispatch::HostFunc
};

template <class R, class Fn>
absl::StatusOr<HostValue> ResultOf(Fn&& fn) {
  if constexpr (std::is_void_v<R>) {
    fn();
    return HostValue();
  } else if constexpr (std::is_same_v<R, absl::Status>) {
    absl::Status status = fn();
    if (!status.ok()) return status;
    return HostValue();
  } else if constexpr (kIsStatusOr<R>) {
    R result = fn();
    if (!result.ok()) return result.status();
    return ToHost(*std::move(result));
  } else {
    return ToHost(fn());
  }
}

template <class F, class Sig>
struct ThunkMaker;

// Without a frame parameter.
template <class F, class R, class... A>
struct ThunkMaker<F, R(A...)> {
  static std::vector<HostType> Params() { return {HostTypeOf<A>()...}; }
  static HostThunk Make(F fn) {
    return [fn = std::move(fn)](const Frame&, std::span<const HostValue> args) mutable {
      return Call(fn, args, std::index_sequence_for<A...>());
    };
  }
  template <std::size_t... I>
  static absl::StatusOr<HostValue> Call(F& fn, std::span<const HostValue> args,
                                        std::index_sequence<I...>) {
    return ResultOf<R>([&]() -> R { return fn(FromHost<A>(args[I])...); });
  }
};

// With a leading const Frame& (the call's frame).
template <class F, class R, class... A>
struct ThunkMaker<F, R(const Frame&, A...)> {
  static std::vector<HostType> Params() { return {HostTypeOf<A>()...}; }
  static HostThunk Make(F fn) {
    return [fn = std::move(fn)](const Frame& frame, std::span<const HostValue> args) mutable {
      return Call(fn, frame, args, std::index_sequence_for<A...>());
    };
  }
  template <std::size_t... I>
  static absl::StatusOr<HostValue> Call(F& fn, const Frame& frame, std::span<const HostValue> args,
                                        std::index_sequence<I...>) {
    return ResultOf<R>([&]() -> R { return fn(frame, FromHost<A>(args[I])...); });
  }
};

struct CallState;
class LuaHostAccess;

}  // namespace framekit::lua_internal

namespace framekit::lua {

// Invokes another function on behalf of a script (host.invoke): `parent` is the script's call
// frame. The integrator sets it to the executor's Invoke, in one call with BindInvoker
// (framekit/lua/executor_binding.h); until then host.invoke fails with a Lua error
// "host.invoke is not configured".
// Called concurrently from many calls: must be thread-safe.
using LuaInvoker = absl::AnyInvocable<absl::StatusOr<std::string>(
    const Frame& parent, std::string_view function, std::string_view payload) const>;

struct LuaHostOptions {
  std::string name = "lua";  // the extension name faults are reported under
  // The keys scripts may read from their frame, by name; none when null.
  std::shared_ptr<const PortableKeys> portable = nullptr;
  // Where host.log and print go; stderr when null.
  std::shared_ptr<spdlog::logger> logger = nullptr;
  // Where host function faults are reported; DefaultFaultMonitor() when null.
  // NOTE: must outlive the host.
  dispatch::FaultMonitor* monitor = nullptr;
};

// What the host offers scripts: portable frame keys, logging, and the application's own host
// functions, registered at boot.
//
// Thread-safety: thread-compatible while being set up (AddFunction, set_invoker); once shared
// with LuaFunction::Compile (as std::shared_ptr<const LuaHost>) it is immutable and used by
// every call concurrently.
class LuaHost {
 public:
  explicit LuaHost(LuaHostOptions options = {});
  ~LuaHost();
  LuaHost(const LuaHost&) = delete;
  LuaHost& operator=(const LuaHost&) = delete;

  // Makes `fn` callable from scripts as host.NAME(...). `fn` takes bool, integer, floating
  // point, std::string or std::string_view parameters (optionally after a leading
  // `const Frame&`, which receives the call's frame) and returns void, one of those types,
  // absl::Status or absl::StatusOr of one of them. A script passing the wrong type or count of
  // arguments gets a Lua error naming the argument; a non-OK status becomes a Lua error with
  // its message; a throw is a fault of this host function (reported to the monitor) and
  // becomes a Lua error carrying the ExtensionPanic message `host function "NAME": ...`.
  // Returns InvalidArgument for a name that is not a Lua identifier (at most 64 characters, no
  // reserved word), AlreadyExists for a name
  // taken (the built-ins write, log, remaining and invoke included).
  // NOTE: `fn` is called concurrently by concurrent calls; it must be thread-safe and must not
  // block past the call's deadline (it runs on the script's thread: the deadline is checked
  // again only when it returns).
  template <class F>
  absl::Status AddFunction(std::string name, F fn) {
    using Sig = typename dispatch_internal::CallableTraits<F>::Signature;
    using Maker = lua_internal::ThunkMaker<F, Sig>;
    lua_internal::HostFunctionEntry entry;
    entry.params = Maker::Params();
    entry.call = dispatch::HostFunc<absl::StatusOr<lua_internal::HostValue>(
        const Frame&, std::span<const lua_internal::HostValue>)>(ref(), name,
                                                                 Maker::Make(std::move(fn)));
    return AddEntry(std::move(name), std::move(entry));
  }

  // Sets what host.invoke calls (see LuaInvoker). Replaces an earlier invoker.
  void set_invoker(LuaInvoker invoker);

  const LuaHostOptions& options() const { return options_; }

 private:
  friend class lua_internal::LuaHostAccess;
  dispatch::ExtRef ref() const;
  absl::Status AddEntry(std::string name, lua_internal::HostFunctionEntry entry);

  LuaHostOptions options_;
  std::shared_ptr<spdlog::logger> logger_;
  LuaInvoker invoker_;
  absl::flat_hash_map<std::string, lua_internal::HostFunctionEntry> functions_;
};

// A compiled Lua function: dispatch::Code that preempts.
//
// Thread-safety: thread-safe; Run may be called from any number of threads at once (each run
// has its own lua_State).
class LuaFunction final : public dispatch::Code {
 public:
  // Compiles `source`, a chunk returning the handler function, under the name `chunkname`
  // (error messages and tracebacks read "chunkname:line: ..."). Returns InvalidArgument with
  // "chunkname:line: message" for a syntax error (or a binary chunk), InvalidArgument for
  // nonsensical limits (zero memory, output or hook period, a non-positive timeout). A null
  // `host` is an empty one.
  // NOTE: the chunk's top-level code runs on every call (it builds the handler); keep it cheap.
  static absl::StatusOr<std::shared_ptr<LuaFunction>> Compile(
      std::string chunkname, std::string source, LuaLimits limits = {},
      std::shared_ptr<const LuaHost> host = nullptr);

  // Always true: see the file comment for how each limit is enforced.
  bool preemptive() const override { return true; }

  // Runs the handler for one call. See the file comment for the status codes; `stats` gets the
  // peak memory, host calls, output bytes and, under a count hook, an
  // instruction estimate (hook firings x period; 0 with signal preemption), even when the call
  // fails.
  absl::Status Run(const Frame& frame, std::string_view payload, dispatch::Sink& out,
                   dispatch::RunStats& stats) override;

  const std::string& chunkname() const { return chunkname_; }
  const std::string& source() const { return source_; }
  const LuaLimits& limits() const { return limits_; }

  LuaFunction(std::string chunkname, std::string source, std::string bytecode, LuaLimits limits,
              std::shared_ptr<const LuaHost> host);
  ~LuaFunction() override;

  struct Sandbox;

 private:
  struct Pool;
  // A sandbox holding more garbage than this after a call is closed rather than reused.
  static constexpr std::size_t kMaxCarriedGarbage = 256 << 10;

  std::unique_ptr<Sandbox> TakeSandbox();
  void ReturnSandbox(std::unique_ptr<Sandbox> sandbox, lua_internal::CallState& cs,
                     const absl::Status& status);

  const std::string chunkname_;
  const std::string source_;
  const std::string bytecode_;  // made by lua_dump at Compile; never taken from a script
  const LuaLimits limits_;
  const std::shared_ptr<const LuaHost> host_;
  const std::unique_ptr<Pool> pool_;
};

}  // namespace framekit::lua

#endif  // FRAMEKIT_LUA_LUA_FUNCTION_H_
