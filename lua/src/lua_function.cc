#include "framekit/lua/lua_function.h"

#include <algorithm>
#include <mutex>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/cord.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "framekit/lua/internal/preempt.h"
#include "framekit/lua/internal/sandbox.h"
#include "lauxlib.h"
#include "lua.h"
#include "spdlog/logger.h"
#include "spdlog/sinks/stdout_sinks.h"

namespace framekit::lua_internal {

absl::Status LuaError(std::string_view text) {
  const std::string_view first = text.substr(0, text.find('\n'));
  absl::Status status =
      absl::InternalError(absl::StrCat("lua: ", absl::string_view(first.data(), first.size())));
  status.SetPayload(absl::string_view(lua::kLuaErrorUrl.data(), lua::kLuaErrorUrl.size()),
                    absl::Cord(absl::string_view(text.data(), text.size())));
  return status;
}

}  // namespace framekit::lua_internal

namespace framekit::lua {
namespace {

using lua_internal::CallState;

absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string_view ToView(lua_State* L, int index) {
  std::size_t n = 0;
  const char* s = lua_tolstring(L, index, &n);
  return s == nullptr ? std::string_view() : std::string_view(s, n);
}

using lua_internal::LuaError;

// The handler's result to the Sink: a string (or number) is output, nil is none.
void EmitResult(lua_State* L, std::string* error) {
  const int type = lua_type(L, -1);
  if (type == LUA_TNIL) return;
  if (type == LUA_TSTRING || type == LUA_TNUMBER) {
    lua_internal::WriteOutput(L, ToView(L, -1));
    return;
  }
  *error = absl::StrCat("the handler returned a ", luaL_typename(L, -1),
                        "; it must return a string or nil");
}

// Runs a protected call on top of the stack (the message handler at index 2); false with
// `error` set on a Lua error. A fatal condition or out-of-memory is raised on.
bool CallHandled(lua_State* L, int nargs, std::string* error) {
  const int status = lua_pcall(L, nargs, 1, 2);
  if (status == LUA_OK) return true;
  CallState& cs = lua_internal::StateOf(L);
  if (status == LUA_ERRMEM) cs.pending_refusal = true;
  lua_internal::SettlePending(cs);
  if (!cs.fatal.ok() || lua_internal::IsFatalObject(L, -1)) {
    lua_internal::RaiseFatal(L, absl::InternalError("lua: fatal error"));
  }
  *error = std::string(ToView(L, -1));
  return false;
}

char kChunkTag;  // registry: the function's chunk, loaded once per sandbox

// The whole call, run protected: sandbox, chunk, handler, output.
int Protected(lua_State* L) {
  auto* error = static_cast<std::string*>(lua_touserdata(L, 1));
  CallState& cs = lua_internal::StateOf(L);
  lua_settop(L, 0);
  lua_pushnil(L);                                 // index 1: unused
  lua_pushcfunction(L, lua_internal::Traceback);  // index 2
  lua_internal::OpenCallEnvironment(L);
  // The chunk, loaded when the sandbox was built, runs anew in the call's environment: the
  // handler it returns and that handler's upvalues are this call's own. (Its _ENV upvalue is
  // shared with closures earlier calls made from it, but nothing of an earlier call is reachable
  // any more: its environment, proxies and objects were only reachable from itself.)
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kChunkTag);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  lua_setupvalue(L, -2, 1);  // _ENV
  if (!CallHandled(L, 0, error)) return 0;
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    *error = absl::StrCat(cs.chunkname, ": the chunk must return the handler function, got ",
                          luaL_typename(L, -1));
    return 0;
  }
  lua_pushlstring(L, cs.payload.data(), cs.payload.size());
  lua_internal::PushFrameView(L);
  if (!CallHandled(L, 2, error)) return 0;
  EmitResult(L, error);
  return 0;
}

int Panic(lua_State* L) {
  // Unreachable by construction (every call is protected); Lua aborts after this returns.
  std::fprintf(stderr, "framekit lua: unprotected error: %s\n", lua_tostring(L, -1));
  return 0;
}

int Writer(lua_State*, const void* p, std::size_t size, void* ud) {
  static_cast<std::string*>(ud)->append(static_cast<const char*>(p), size);
  return 0;
}

// The count hook's period: LuaLimits::hook_instructions, or 0 for none (signal preemption)
// when the build supports it, else every 1000 instructions.
int HookPeriod(const LuaLimits& limits) {
  if (limits.hook_instructions > 0) return limits.hook_instructions;
  return lua_internal::kSignalPreemption ? 0 : lua_internal::kFallbackHookPeriod;
}

int BuildProtected(lua_State* L) {
  lua_internal::BuildSandbox(L);
  CallState& cs = lua_internal::StateOf(L);
  const std::string name = absl::StrCat("=", cs.chunkname);
  if (luaL_loadbufferx(L, cs.bytecode->data(), cs.bytecode->size(), name.c_str(), "b") != LUA_OK) {
    return lua_error(L);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kChunkTag);
  return 0;
}

// The status of a failed top-level lua_pcall on L (the error object on top).
absl::Status TopLevelFailure(lua_State* L, CallState& cs, int status) {
  if (status == LUA_ERRMEM) cs.pending_refusal = true;
  lua_internal::SettlePending(cs);
  if (!cs.fatal.ok()) return cs.fatal;
  return LuaError(lua_internal::IsFatalObject(L, -1) ? "fatal error" : ToView(L, -1));
}

// Lua runs nested on one thread (a script's host.invoke of a Lua function, directly or through
// other functions) at most; each level holds a lua_State and its C frames on the thread's stack.
constexpr int kMaxNestedRuns = 64;
thread_local int tls_nested_runs = 0;

struct NestedRun {
  NestedRun() { ++tls_nested_runs; }
  ~NestedRun() { --tls_nested_runs; }
  NestedRun(const NestedRun&) = delete;
  NestedRun& operator=(const NestedRun&) = delete;
};

}  // namespace

// A state with the sandbox built, kept between calls of one function. Between calls its
// allocator's userdata is `parked` (which never refuses), so closing it needs no call.
struct LuaFunction::Sandbox {
  lua_State* L = nullptr;
  std::size_t base_used = 0;  // the heap right after the build
  std::size_t used = 0;       // the heap when the last call ended
  CallState parked;

  ~Sandbox() {
    if (L == nullptr) return;
    parked.closing = true;
    parked.used = used;
    lua_setallocf(L, lua_internal::Alloc, &parked);
    lua_close(L);
  }
};

struct LuaFunction::Pool {
  std::mutex mu;
  std::vector<std::unique_ptr<Sandbox>> idle ABSL_GUARDED_BY(mu);
};

namespace {

// Builds a sandbox on a new state, allocating through `cs` (left as its allocator).
absl::StatusOr<std::unique_ptr<LuaFunction::Sandbox>> BuildSandbox(CallState& cs, int hook) {
  lua_State* L = lua_newstate(lua_internal::Alloc, &cs);
  if (L == nullptr) return absl::ResourceExhaustedError("lua: memory limit too small for a state");
  lua_atpanic(L, Panic);
  if (hook > 0) lua_internal::InstallHook(L, hook);
  lua_pushcfunction(L, BuildProtected);
  const int status = lua_pcall(L, 0, 0, 0);
  if (status != LUA_OK) {
    absl::Status failure = TopLevelFailure(L, cs, status);
    cs.closing = true;
    lua_close(L);
    return failure;
  }
  lua_gc(L, LUA_GCCOLLECT, 0);
  auto sandbox = std::make_unique<LuaFunction::Sandbox>();
  sandbox->L = L;
  sandbox->base_used = cs.used;
  return sandbox;
}

// Runs the call on a built sandbox (its allocator already `cs`).
absl::Status RunOn(lua_State* L, CallState& cs) {
  std::string error;
  lua_pushcfunction(L, Protected);
  lua_pushlightuserdata(L, &error);
  const int status = lua_pcall(L, 1, 0, 0);
  absl::Status result;
  if (status != LUA_OK) {
    result = TopLevelFailure(L, cs, status);
  } else {
    lua_internal::SettlePending(cs);
    if (!cs.fatal.ok()) {
      result = cs.fatal;
    } else if (!error.empty()) {
      result = LuaError(error);
    }
  }
  lua_settop(L, 0);
  lua_internal::CloseCallEnvironment(L);
  return result;
}

// A name usable as host.NAME: Lua's identifier grammar, reserved words excluded (host.and is a
// syntax error).
bool IsIdentifier(std::string_view name) {
  if (name.empty() || name.size() > 64 || (name[0] >= '0' && name[0] <= '9')) return false;
  static constexpr std::string_view kReserved[] = {
      "and",      "break",  "do",   "else", "elseif", "end",  "false", "for",
      "function", "goto",   "if",   "in",   "local",  "nil",  "not",   "or",
      "repeat",   "return", "then", "true", "until",  "while"};
  if (std::find(std::begin(kReserved), std::end(kReserved), name) != std::end(kReserved)) {
    return false;
  }
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

}  // namespace

bool IsLuaError(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInternal &&
         status.GetPayload(AV(kLuaErrorUrl)).has_value();
}

std::optional<std::string> LuaTraceback(const absl::Status& status) {
  absl::optional<absl::Cord> payload = status.GetPayload(AV(kLuaErrorUrl));
  if (!payload.has_value()) return std::nullopt;
  return std::string(*payload);
}

LuaHost::LuaHost(LuaHostOptions options) : options_(std::move(options)) {
  logger_ = options_.logger != nullptr
                ? options_.logger
                : std::make_shared<spdlog::logger>(
                      "lua", std::make_shared<spdlog::sinks::stderr_sink_mt>());
}

LuaHost::~LuaHost() = default;

dispatch::ExtRef LuaHost::ref() const {
  return options_.monitor != nullptr ? dispatch::ExtRef(options_.name, *options_.monitor)
                                     : dispatch::ExtRef(options_.name);
}

void LuaHost::set_invoker(LuaInvoker invoker) { invoker_ = std::move(invoker); }

absl::Status LuaHost::AddEntry(std::string name, lua_internal::HostFunctionEntry entry) {
  if (!IsIdentifier(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("host function name \"", absl::CHexEscape(name.substr(0, 64)),
                     name.size() > 64 ? "...\"" : "\"", " is not a Lua identifier"));
  }
  if (name == "write" || name == "log" || name == "remaining" || name == "invoke" ||
      functions_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("host function \"", name, "\" exists already"));
  }
  functions_.emplace(std::move(name), std::move(entry));
  return absl::OkStatus();
}

LuaFunction::LuaFunction(std::string chunkname, std::string source, std::string bytecode,
                         LuaLimits limits, std::shared_ptr<const LuaHost> host)
    : chunkname_(std::move(chunkname)),
      source_(std::move(source)),
      bytecode_(std::move(bytecode)),
      limits_(limits),
      host_(std::move(host)),
      pool_(std::make_unique<Pool>()) {}

LuaFunction::~LuaFunction() = default;

std::unique_ptr<LuaFunction::Sandbox> LuaFunction::TakeSandbox() {
  std::lock_guard<std::mutex> lock(pool_->mu);
  if (pool_->idle.empty()) return nullptr;
  std::unique_ptr<Sandbox> sandbox = std::move(pool_->idle.back());
  pool_->idle.pop_back();
  return sandbox;
}

void LuaFunction::ReturnSandbox(std::unique_ptr<Sandbox> sandbox, CallState& cs,
                                const absl::Status& status) {
  // A call that ended by a fatal condition (deadline, cancellation, memory, a denied
  // capability, a failed write) was stopped at an arbitrary point: its state is not reused.
  // Neither is one holding more garbage than a collection is worth.
  const bool clean = status.ok() || (IsLuaError(status) && cs.fatal.ok());
  const bool small = cs.used <= sandbox->base_used + kMaxCarriedGarbage;
  if (clean && small) {
    sandbox->used = cs.used;
    sandbox->parked.used = cs.used;
    sandbox->parked.closing = true;
    lua_setallocf(sandbox->L, lua_internal::Alloc, &sandbox->parked);
    std::lock_guard<std::mutex> lock(pool_->mu);
    if (pool_->idle.size() < limits_.max_idle_states) {
      pool_->idle.push_back(std::move(sandbox));
      return;
    }
  }
  cs.closing = true;
  lua_setallocf(sandbox->L, lua_internal::Alloc, &cs);
  lua_close(sandbox->L);
  sandbox->L = nullptr;
}

absl::StatusOr<std::shared_ptr<LuaFunction>> LuaFunction::Compile(
    std::string chunkname, std::string source, LuaLimits limits,
    std::shared_ptr<const LuaHost> host) {
  if (limits.memory_bytes == 0 || limits.max_output_bytes == 0 || limits.hook_instructions < 0 ||
      limits.timeout <= Clock::duration::zero() || limits.max_log_lines < 0) {
    return absl::InvalidArgumentError("lua: limits must be positive");
  }
  if (host == nullptr) host = std::make_shared<const LuaHost>();
  CallState cs;
  // Parsing is linear in the source; its memory is bounded apart from the per-call limit.
  cs.memory_limit = (64u << 20) + 16 * source.size();
  lua_State* L = lua_newstate(lua_internal::Alloc, &cs);
  if (L == nullptr) return absl::ResourceExhaustedError("lua: out of memory");
  lua_atpanic(L, Panic);
  const std::string name = absl::StrCat("=", chunkname);
  absl::Status status;
  std::string bytecode;
  if (luaL_loadbufferx(L, source.data(), source.size(), name.c_str(), "t") != LUA_OK) {
    status = absl::InvalidArgumentError(AV(ToView(L, -1)));
  } else {
    lua_dump(L, Writer, &bytecode, /*strip=*/0);
  }
  cs.closing = true;
  lua_close(L);
  if (!status.ok()) return status;
  return std::make_shared<LuaFunction>(std::move(chunkname), std::move(source), std::move(bytecode),
                                       limits, std::move(host));
}

absl::Status LuaFunction::Run(const Frame& frame, std::string_view payload, dispatch::Sink& out,
                              dispatch::RunStats& stats) {
  CallState cs;
  cs.memory_limit = limits_.memory_bytes;
  cs.deadline = DeadlineAfter(Clock::now(), limits_.timeout);
  if (const std::optional<Deadline> deadline = frame.deadline()) {
    cs.deadline = std::min(cs.deadline, *deadline);
  }
  cs.stop = frame.stop_token();
  cs.hook_period = HookPeriod(limits_);
  cs.interrupt_hook = cs.hook_period == 0;
  cs.function = this;
  cs.host = host_.get();
  cs.frame = &frame;
  cs.out = &out;
  cs.max_output = limits_.max_output_bytes;
  cs.max_log_lines = limits_.max_log_lines;
  cs.chunkname = chunkname_;
  cs.payload = payload;
  cs.bytecode = &bytecode_;
  if (Clock::now() >= cs.deadline) return absl::DeadlineExceededError("lua: deadline exceeded");
  if (cs.stop.stop_requested()) return absl::CancelledError("lua: call cancelled");
  // A script that invokes itself (host.invoke) nests a new state and new C frames on this
  // thread per level, past what Lua's own C-stack limit counts: bound the depth here, before
  // the thread's stack runs out.
  if (tls_nested_runs >= kMaxNestedRuns) {
    return absl::ResourceExhaustedError(
        absl::StrCat("lua: calls nested more than ", kMaxNestedRuns, " deep on one thread"));
  }
  const NestedRun nested;

  std::unique_ptr<Sandbox> sandbox = TakeSandbox();
  if (sandbox == nullptr) {
    absl::StatusOr<std::unique_ptr<Sandbox>> built = BuildSandbox(cs, cs.hook_period);
    if (!built.ok()) return built.status();
    sandbox = *std::move(built);
  } else {
    lua_setallocf(sandbox->L, lua_internal::Alloc, &cs);
    cs.used = sandbox->used;
  }
  const std::size_t start_used = cs.used;
  cs.peak = cs.used;
  cs.inherited = start_used > sandbox->base_used ? start_used - sandbox->base_used : 0;
  cs.hidden_garbage = cs.inherited;
  absl::Status status =
      lua_internal::RunPreempted(cs, sandbox->L, [&] { return RunOn(sandbox->L, cs); });
  // The peak as if the call had started on a clean sandbox: garbage earlier calls left does not
  // count against this one.
  stats.peak_memory_bytes = cs.peak - cs.inherited;
  ReturnSandbox(std::move(sandbox), cs, status);
  stats.host_calls = cs.host_calls;
  stats.output_bytes = cs.output_bytes;
  stats.instructions =
      cs.interrupt_hook ? 0 : cs.hooks * static_cast<std::uint64_t>(cs.hook_period);
  return status;
}

}  // namespace framekit::lua
