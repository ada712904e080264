#include "framekit/lua/lua_process.h"

#include <algorithm>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/status_macros.h"
#include "framekit/lua/internal/preempt.h"
#include "framekit/lua/internal/sandbox.h"
#include "lauxlib.h"
#include "lua.h"
#include "spdlog/logger.h"

namespace framekit::lua {
namespace {

using lua_internal::CallState;

char kHooksTag;  // registry: the chunk's table of hooks

std::string_view ToView(lua_State* L, int index) {
  std::size_t n = 0;
  const char* s = lua_tolstring(L, index, &n);
  return s == nullptr ? std::string_view() : std::string_view(s, n);
}

// host.write of a process: each chunk is a line of the host's log.
class LogSink : public dispatch::Sink {
 public:
  LogSink(const LuaHost& host, std::string name) : host_(host), name_(std::move(name)) {}
  absl::Status Write(std::string_view chunk) override {
    lua_internal::LuaHostAccess::logger(host_).info("[{}] {}", name_, chunk);
    return absl::OkStatus();
  }

 private:
  const LuaHost& host_;
  const std::string name_;
};

struct StepArgs {
  const char* hook;
  const std::string* message;  // poll only; null: nil
  std::string* result;         // poll's returned word
  std::string* error;          // a Lua error's text
};

// One step, protected: setup loads the chunk and keeps its hooks; every step calls its hook.
int StepProtected(lua_State* L) {
  auto* args = static_cast<StepArgs*>(lua_touserdata(L, 1));
  CallState& cs = lua_internal::StateOf(L);
  lua_settop(L, 0);
  lua_pushcfunction(L, lua_internal::Traceback);  // index 1
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &kHooksTag) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_internal::OpenCallEnvironment(L);
    const std::string name = absl::StrCat("=", cs.chunkname);
    if (luaL_loadbufferx(L, cs.payload.data(), cs.payload.size(), name.c_str(), "t") != LUA_OK ||
        lua_pcall(L, 0, 1, 1) != LUA_OK) {
      *args->error = std::string(ToView(L, -1));
      return 0;
    }
    if (lua_type(L, -1) != LUA_TTABLE) {
      *args->error = absl::StrCat(cs.chunkname, ": the chunk must return a table of hooks, got ",
                                  luaL_typename(L, -1));
      return 0;
    }
    lua_getfield(L, -1, "poll");
    if (lua_type(L, -1) != LUA_TFUNCTION) {
      *args->error = absl::StrCat(cs.chunkname, ": the hooks must include a poll function");
      return 0;
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &kHooksTag);
  }
  if (lua_getfield(L, -1, args->hook) == LUA_TNIL) return 0;  // an optional hook left out
  int nargs = 1;
  if (args->message != nullptr || std::string_view(args->hook) == "poll") {
    if (args->message != nullptr) {
      lua_pushlstring(L, args->message->data(), args->message->size());
    } else {
      lua_pushnil(L);
    }
    nargs = 2;
  }
  lua_internal::PushFrameView(L);
  const int status = lua_pcall(L, nargs, 1, 1);
  if (status != LUA_OK) {
    if (status == LUA_ERRMEM) cs.pending_refusal = true;
    lua_internal::SettlePending(cs);
    if (!cs.fatal.ok() || lua_internal::IsFatalObject(L, -1)) {
      lua_internal::RaiseFatal(L, absl::InternalError("lua: fatal error"));
    }
    *args->error = std::string(ToView(L, -1));
    return 0;
  }
  if (lua_type(L, -1) == LUA_TSTRING) *args->result = std::string(ToView(L, -1));
  return 0;
}

// One process's Lua state, from setup to finalize.
class ProcessState {
 public:
  ProcessState(std::string name, const std::string& source, const LuaProcessLimits& limits,
               const LuaHost& host)
      : sink_(host, name), name_(std::move(name)) {
    cs_.memory_limit = limits.memory_bytes;
    cs_.host = &host;
    cs_.out = &sink_;
    cs_.chunkname = name_;
    cs_.payload = source;  // the source, read by the setup step only
    cs_.max_output = limits.max_output_bytes;
    cs_.max_log_lines = limits.max_log_lines;
    cs_.hook_period = lua_internal::kSignalPreemption ? 0 : lua_internal::kFallbackHookPeriod;
    cs_.interrupt_hook = cs_.hook_period == 0;
    step_timeout_ = limits.step_timeout;
  }
  ~ProcessState() {
    if (L_ == nullptr) return;
    cs_.closing = true;
    lua_close(L_);
  }
  ProcessState(const ProcessState&) = delete;
  ProcessState& operator=(const ProcessState&) = delete;

  // Runs one step; OK, or why it failed.
  absl::Status Step(dispatch::ProcessContext& ctx, const char* hook, const std::string* message,
                    std::string* result) {
    cs_.fatal = absl::OkStatus();
    cs_.pending_refusal = false;
    cs_.deadline = DeadlineAfter(Clock::now(), step_timeout_);
    if (const std::optional<Deadline> deadline = ctx.frame().deadline()) {
      cs_.deadline = std::min(cs_.deadline, *deadline);
    }
    cs_.stop = ctx.stop_token();
    cs_.frame = &ctx.frame();
    cs_.log_lines = 0;
    cs_.output_bytes = 0;
    cs_.object_ids = 0;
    if (L_ == nullptr) {
      FRAMEKIT_RETURN_IF_ERROR(Build());
    }
    std::string error;
    StepArgs args{hook, message, result, &error};
    const absl::Status status = lua_internal::RunPreempted(cs_, L_, [&]() -> absl::Status {
      lua_pushcfunction(L_, StepProtected);
      lua_pushlightuserdata(L_, &args);
      const int code = lua_pcall(L_, 1, 0, 0);
      if (code == LUA_ERRMEM) cs_.pending_refusal = true;
      lua_internal::SettlePending(cs_);
      if (!cs_.fatal.ok()) return cs_.fatal;
      if (code != LUA_OK) return lua_internal::LuaError(ToView(L_, -1));
      if (!error.empty()) return lua_internal::LuaError(error);
      return absl::OkStatus();
    });
    lua_settop(L_, 0);
    return status;
  }

 private:
  static int BuildProtected(lua_State* L) {
    lua_internal::BuildSandbox(L);
    return 0;
  }

  absl::Status Build() {
    lua_State* L = lua_newstate(lua_internal::Alloc, &cs_);
    if (L == nullptr) return absl::ResourceExhaustedError("lua: memory limit too small");
    if (cs_.hook_period > 0) lua_internal::InstallHook(L, cs_.hook_period);
    lua_pushcfunction(L, BuildProtected);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
      lua_internal::SettlePending(cs_);
      absl::Status status = cs_.fatal.ok()
                                ? absl::ResourceExhaustedError("lua: cannot build the sandbox")
                                : cs_.fatal;
      cs_.closing = true;
      lua_close(L);
      return status;
    }
    L_ = L;
    return absl::OkStatus();
  }

  CallState cs_;
  LogSink sink_;
  const std::string name_;
  Clock::duration step_timeout_{};
  lua_State* L_ = nullptr;
};

// What every process started from one spec shares: the source and a state per live pid.
struct Shared {
  std::string name;
  std::string source;
  LuaProcessLimits limits;
  std::shared_ptr<const LuaHost> host;
  std::mutex mu;
  absl::flat_hash_map<dispatch::Pid, std::shared_ptr<ProcessState>> states;

  std::shared_ptr<ProcessState> Find(dispatch::Pid pid) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = states.find(pid);
    return it == states.end() ? nullptr : it->second;
  }
};

// A failed step as the manager's guards see a fault: an exception carrying the status.
[[noreturn]] void ThrowStep(const char* hook, const absl::Status& status) {
  throw std::runtime_error(absl::StrCat("lua ", hook, ": ", status.ToString()));
}

dispatch::Step StepOf(std::string_view word, bool had_message) {
  if (word == "done") return dispatch::Step::kDone;
  if (word == "busy") return dispatch::Step::kBusy;
  if (word == "idle") return dispatch::Step::kIdle;
  return had_message ? dispatch::Step::kBusy : dispatch::Step::kIdle;
}

}  // namespace

absl::StatusOr<dispatch::ProcessSpec> LuaProcessSpec(std::string name, std::string source,
                                                     LuaProcessLimits limits,
                                                     std::shared_ptr<const LuaHost> host) {
  if (limits.memory_bytes == 0 || limits.max_output_bytes == 0 ||
      limits.step_timeout <= Clock::duration::zero() || limits.max_log_lines < 0) {
    return absl::InvalidArgumentError("lua: limits must be positive");
  }
  // The syntax check (and nothing else) of LuaFunction::Compile.
  FRAMEKIT_RETURN_IF_ERROR(LuaFunction::Compile(name, source, {}, host).status());
  auto shared = std::make_shared<Shared>();
  shared->name = name;
  shared->source = std::move(source);
  shared->limits = limits;
  shared->host = host != nullptr ? std::move(host) : std::make_shared<const LuaHost>();

  dispatch::ProcessSpec spec;
  spec.name = std::move(name);
  spec.setup = [shared](dispatch::ProcessContext& ctx) -> absl::Status {
    auto state =
        std::make_shared<ProcessState>(shared->name, shared->source, shared->limits, *shared->host);
    {
      std::lock_guard<std::mutex> lock(shared->mu);
      shared->states[ctx.pid()] = state;  // a restart replaces the old state
    }
    std::string ignored;
    return state->Step(ctx, "setup", nullptr, &ignored);
  };
  spec.poll = [shared](dispatch::ProcessContext& ctx) -> dispatch::Step {
    std::shared_ptr<ProcessState> state = shared->Find(ctx.pid());
    if (state == nullptr) return dispatch::Step::kDone;
    const std::optional<std::string> message = ctx.Receive();
    std::string word;
    const absl::Status status =
        state->Step(ctx, "poll", message.has_value() ? &*message : nullptr, &word);
    if (!status.ok()) ThrowStep("poll", status);
    return StepOf(word, message.has_value());
  };
  spec.teardown = [shared](dispatch::ProcessContext& ctx) {
    std::shared_ptr<ProcessState> state = shared->Find(ctx.pid());
    if (state == nullptr) return;
    std::string ignored;
    const absl::Status status = state->Step(ctx, "teardown", nullptr, &ignored);
    if (!status.ok()) ThrowStep("teardown", status);
  };
  spec.finalize = [shared](dispatch::ProcessContext& ctx) {
    std::lock_guard<std::mutex> lock(shared->mu);
    shared->states.erase(ctx.pid());
  };
  return spec;
}

}  // namespace framekit::lua
