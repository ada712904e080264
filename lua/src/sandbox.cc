// The sandbox: the counting allocator, the deadline hook, the library subset with its wrappers,
// the denied stubs, the host table and the read-only frame view.
//
// Error handling: this file is compiled against the C++ build of Lua (lua5.4-c++), where
// lua_error unwinds with a C++ exception, so C++ objects alive in a C function that raises are
// destroyed (tests/lua/lua_function_test.cc, LuaCxx.ErrorRunsDestructors, proves it). The one
// rule that follows: never call a Lua API function that may raise inside a C++ try block (the
// catch-all would swallow Lua's exception); host code runs under the guards with no Lua API
// call inside them.
#include "framekit/lua/internal/sandbox.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/lua/internal/preempt.h"
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#include "spdlog/logger.h"

namespace framekit::lua_internal {
namespace {

// The error object of a fatal condition: a light userdata, so raising it allocates nothing.
char kFatalTag;

absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string_view ToView(lua_State* L, int index) {
  std::size_t n = 0;
  const char* s = lua_tolstring(L, index, &n);
  return s == nullptr ? std::string_view() : std::string_view(s, n);
}

void RaiseIfFatal(lua_State* L) {
  CallState& cs = StateOf(L);
  SettlePending(cs);
  if (!cs.fatal.ok()) {
    lua_pushlightuserdata(L, &kFatalTag);
    lua_error(L);
  }
}

void Hook(lua_State* L, lua_Debug*) {
  CallState& cs = StateOf(L);
  ++cs.hooks;
  // An interrupt hook is off again before the check: one that finds nothing due (a signal
  // from an earlier call) must not keep the script on the trace path, and a signal landing
  // after this line installs it anew.
  if (cs.interrupt_hook) lua_sethook(L, nullptr, 0, 0);
  CheckPoint(L);
  // A call that has run its first instructions goes over to the signal (preempt.h).
  if (cs.upgrade != nullptr) UpgradeToSignal(L, cs);
}

// Marks the coroutine at `index` as the thread running on this OS thread (for the preemption
// signal) until destroyed, when the previous one is running again.
class RunningScope {
 public:
  RunningScope(lua_State* L, int index) : previous_(Running()) {
    lua_State* co = lua_tothread(L, index);
    if (co == nullptr) return;
    SetRunning(co);
    // A signal that hooked the resumer just before the switch is passed on.
    if (StateOf(L).interrupt_hook && lua_gethookmask(L) != 0) InstallInterruptHook(co);
  }
  ~RunningScope() { SetRunning(previous_); }
  RunningScope(const RunningScope&) = delete;
  RunningScope& operator=(const RunningScope&) = delete;

 private:
  lua_State* previous_;
};

// pcall and xpcall as lbaselib's, re-raising a fatal condition instead of returning it.
int FinishPcall(lua_State* L, int status, lua_KContext extra) {
  if (status == LUA_ERRMEM) StateOf(L).pending_refusal = true;
  RaiseIfFatal(L);
  if (status != LUA_OK && status != LUA_YIELD) {
    lua_pushboolean(L, 0);
    lua_pushvalue(L, -2);
    return 2;
  }
  return lua_gettop(L) - static_cast<int>(extra);
}

int Pcall(lua_State* L) {
  luaL_checkany(L, 1);
  lua_pushboolean(L, 1);
  lua_insert(L, 1);
  const int status = lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 0, 0, FinishPcall);
  return FinishPcall(L, status, 0);
}

int Xpcall(lua_State* L) {
  const int n = lua_gettop(L);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushboolean(L, 1);
  lua_pushvalue(L, 1);
  lua_rotate(L, 3, 2);
  const int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, FinishPcall);
  return FinishPcall(L, status, 2);
}

// coroutine.resume / coroutine.close: the original (upvalue 1), then re-raise a fatal
// condition the coroutine's error carried.
int Rethrowing(lua_State* L) {
  {
    RunningScope running(L, 1);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  }
  // A preemption that landed on the coroutine after its last instruction is seen here.
  CheckPoint(L);
  return lua_gettop(L);
}

// A function made by coroutine.wrap (upvalue 1: the coroutine, upvalue 2: the sandbox's
// coroutine.resume): resumes through the tracking wrapper, and raises the coroutine's error
// as lcorolib's wrap does.
int WrappedCoroutine(lua_State* L) {
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_rotate(L, 1, 2);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  if (lua_toboolean(L, 1) == 0) {
    lua_settop(L, 2);
    if (lua_type(L, 2) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return lua_gettop(L) - 1;
}

// coroutine.wrap (upvalue 1: the sandbox's coroutine.resume).
int SafeWrap(lua_State* L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State* co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, WrappedCoroutine, 2);
  return 1;
}

[[noreturn]] void Deny(lua_State* L, std::string_view capability) {
  RaiseFatal(L, absl::PermissionDeniedError(
                    absl::StrCat("lua sandbox: ", AV(capability), " is not available to scripts")));
}

// A denied global function (upvalue 1: its name).
int DeniedFunction(lua_State* L) { Deny(L, ToView(L, lua_upvalueindex(1))); }

// __index / __newindex of a denied library table (upvalue 1: the library's name).
int DeniedField(lua_State* L) {
  std::string capability(ToView(L, lua_upvalueindex(1)));
  capability.append(".").append(lua_type(L, 2) == LUA_TSTRING ? ToView(L, 2) : "?");
  Deny(L, capability);
}

int SafeSetmetatable(lua_State* L) {
  if (lua_type(L, 2) == LUA_TTABLE) {
    lua_pushliteral(L, "__gc");
    if (lua_rawget(L, 2) != LUA_TNIL) Deny(L, "a __gc metamethod");
    lua_pop(L, 1);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  return 1;
}

// load(chunk [, chunkname [, mode [, env]]]) with text chunks only (upvalue 1: the original).
int SafeLoad(lua_State* L) {
  const std::string_view mode = lua_isnoneornil(L, 3) ? "t" : ToView(L, 3);
  if (mode.find('b') != std::string_view::npos) Deny(L, "load of a binary chunk");
  if (lua_type(L, 1) == LUA_TSTRING &&
      ToView(L, 1).substr(0, 1) == std::string_view(LUA_SIGNATURE, 1)) {
    Deny(L, "load of a binary chunk");
  }
  // No env given: drop it, so the original uses the sandbox's globals.
  const int nargs = lua_isnoneornil(L, 4) ? 3 : 4;
  lua_settop(L, nargs);
  lua_pushliteral(L, "t");
  lua_replace(L, 3);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, nargs, LUA_MULTRET);
  return lua_gettop(L);
}

int SafeCollectgarbage(lua_State* L) {
  const std::string_view option = lua_isnoneornil(L, 1) ? "collect" : ToView(L, 1);
  if (option != "count" && option != "collect" && option != "step" && option != "isrunning") {
    Deny(L, absl::StrCat("collectgarbage(\"", AV(option.substr(0, 32)), "\")"));
  }
  CallState& cs = StateOf(L);
  if (option == "count") {
    // The call's own heap (the base and what the call allocated), without the garbage earlier
    // calls on a pooled state left: their sizes are theirs.
    const std::size_t own = cs.used > cs.hidden_garbage ? cs.used - cs.hidden_garbage : 0;
    lua_pushnumber(L, static_cast<lua_Number>(own) / 1024.0);
    return 1;
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  // A full collection freed that garbage: from now on the heap is the call's own.
  if (option == "collect") cs.hidden_garbage = 0;
  return lua_gettop(L);
}

char kObjectIdsTag;  // registry: the call's object -> number table (weak keys)

// A number for the object at `index`, stable within the call: the first object the call shows
// is 1, the next 2, and so on.
lua_Integer ObjectId(lua_State* L, int index) {
  index = lua_absindex(L, index);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &kObjectIdsTag) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 4);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &kObjectIdsTag);
  }
  lua_pushvalue(L, index);
  if (lua_rawget(L, -2) == LUA_TNUMBER) {
    const lua_Integer id = lua_tointeger(L, -1);
    lua_pop(L, 2);
    return id;
  }
  lua_pop(L, 1);
  const auto id = static_cast<lua_Integer>(++StateOf(L).object_ids);
  lua_pushvalue(L, index);
  lua_pushinteger(L, id);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  return id;
}

// luaL_tolstring without addresses: a table, function, thread or userdata without __tostring
// reads "table: #3" (its number within the call) instead of its heap address.
void PushSafeString(lua_State* L, int index) {
  index = lua_absindex(L, index);
  const int type = lua_type(L, index);
  const bool addressed = type == LUA_TTABLE || type == LUA_TFUNCTION || type == LUA_TTHREAD ||
                         type == LUA_TUSERDATA || type == LUA_TLIGHTUSERDATA;
  if (!addressed || luaL_getmetafield(L, index, "__tostring") != LUA_TNIL) {
    if (addressed) lua_pop(L, 1);
    luaL_tolstring(L, index, nullptr);
    return;
  }
  const lua_Integer id = ObjectId(L, index);
  const int name = luaL_getmetafield(L, index, "__name");
  if (name == LUA_TSTRING) {
    lua_pushfstring(L, "%s: #%I", lua_tostring(L, -1), id);
    lua_remove(L, -2);
    return;
  }
  if (name != LUA_TNIL) lua_pop(L, 1);
  lua_pushfstring(L, "%s: #%I", luaL_typename(L, index), id);
}

int SafeTostring(lua_State* L) {
  luaL_checkany(L, 1);
  PushSafeString(L, 1);
  return 1;
}

// string.format without addresses (upvalue 1: the original): %p is refused, and %s of an
// object without __tostring shows its number within the call, as tostring does.
int SafeFormat(lua_State* L) {
  const std::string_view format = luaL_checkstring(L, 1);
  int arg = 1;
  for (std::size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') continue;
    if (++i < format.size() && format[i] == '%') continue;
    while (i < format.size() && std::strchr("-+ #0123456789.", format[i]) != nullptr) ++i;
    if (i >= format.size()) break;
    ++arg;
    if (format[i] == 'p') return luaL_error(L, "string.format: %%p is not available to scripts");
    if (format[i] == 's' && arg <= lua_gettop(L)) {
      PushSafeString(L, arg);
      lua_replace(L, arg);
    }
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

void Log(lua_State* L, spdlog::level::level_enum level, std::string_view message) {
  CallState& cs = StateOf(L);
  if (cs.log_lines >= cs.max_log_lines) return;
  ++cs.log_lines;
  constexpr std::size_t kMaxLine = 4096;
  const std::string* trace = cs.frame->Find(dispatch::TraceIdKey());
  const std::string_view text = message.substr(0, kMaxLine);
  const std::string_view trace_id = trace != nullptr ? std::string_view(*trace) : "-";
  const std::string line = absl::StrCat("[", cs.chunkname, "] trace_id=", AV(trace_id), " ",
                                        AV(text), message.size() > kMaxLine ? "..." : "");
  dispatch::CallTeardown(LuaHostAccess::ref(*cs.host),
                         [&] { LuaHostAccess::logger(*cs.host).log(level, "{}", line); });
}

int Print(lua_State* L) {
  ++StateOf(L).host_calls;
  const int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; ++i) {
    if (i > 1) luaL_addchar(&b, '\t');
    PushSafeString(L, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  Log(L, spdlog::level::info, ToView(L, -1));
  return 0;
}

int HostLog(lua_State* L) {
  ++StateOf(L).host_calls;
  spdlog::level::level_enum level = spdlog::level::info;
  int message = 1;
  if (lua_gettop(L) >= 2) {
    static const char* const kLevels[] = {"debug", "info", "warn", "error", nullptr};
    static const spdlog::level::level_enum kValues[] = {spdlog::level::debug, spdlog::level::info,
                                                        spdlog::level::warn, spdlog::level::err};
    level = kValues[luaL_checkoption(L, 1, nullptr, kLevels)];
    message = 2;
  }
  Log(L, level, luaL_checkstring(L, message));
  return 0;
}

}  // namespace

// Writes one chunk of output, enforcing max_output; a failed write is fatal.
void WriteOutput(lua_State* L, std::string_view chunk) {
  CallState& cs = StateOf(L);
  if (chunk.empty()) return;
  if (cs.output_bytes + chunk.size() > cs.max_output) {
    RaiseFatal(L, absl::ResourceExhaustedError(
                      absl::StrCat("lua: output exceeds the limit of ", cs.max_output, " bytes")));
  }
  cs.output_bytes += chunk.size();
  absl::Status status;
  try {
    status = cs.out->Write(chunk);
  } catch (...) {
    RethrowIfForcedUnwind();
    status = absl::InternalError("lua: the sink threw");
  }
  if (!status.ok()) RaiseFatal(L, std::move(status));
}

namespace {

int HostWrite(lua_State* L) {
  ++StateOf(L).host_calls;
  const int n = lua_gettop(L);
  for (int i = 1; i <= n; ++i) {
    luaL_checktype(L, i, LUA_TSTRING);
    WriteOutput(L, ToView(L, i));
  }
  return 0;
}

int HostRemaining(lua_State* L) {
  CallState& cs = StateOf(L);
  ++cs.host_calls;
  const auto left = std::chrono::duration<double>(cs.deadline - Clock::now()).count();
  lua_pushnumber(L, std::max(0.0, left));
  return 1;
}

int HostInvoke(lua_State* L) {
  CallState& cs = StateOf(L);
  ++cs.host_calls;
  const std::string_view function = luaL_checkstring(L, 1);
  const std::string_view payload = luaL_optstring(L, 2, "");
  const LuaInvoker& invoker = LuaHostAccess::invoker(*cs.host);
  if (!invoker) return luaL_error(L, "host.invoke is not configured");
  auto guarded = dispatch::HostFunc<absl::StatusOr<std::string>()>(
      LuaHostAccess::ref(*cs.host), "invoke",
      [&]() { return invoker(*cs.frame, function, payload); });
  absl::StatusOr<std::string> result = guarded();
  CheckPoint(L);
  if (!result.ok()) {
    // Code and message only: Status::ToString would add the payloads, which for a nested Lua
    // error hold its whole text again (a chain of invokes doubles the text at every level) and
    // for a worker's fault its stack, with host addresses no script may see.
    const absl::Status& status = result.status();
    const std::string text =
        absl::StrCat(absl::StatusCodeToString(status.code()), ": ", status.message());
    lua_pushlstring(L, text.data(), text.size());
    return lua_error(L);
  }
  lua_pushlstring(L, result->data(), result->size());
  return 1;
}

// An application host function (upvalue 1: its HostFunctionEntry, upvalue 2: its name).
int HostApp(lua_State* L) {
  CallState& cs = StateOf(L);
  ++cs.host_calls;
  const auto& entry =
      *static_cast<const HostFunctionEntry*>(lua_touserdata(L, lua_upvalueindex(1)));
  const int n = static_cast<int>(entry.params.size());
  if (lua_gettop(L) > n) {
    return luaL_error(L, "host.%s takes %d argument(s), got %d",
                      lua_tostring(L, lua_upvalueindex(2)), n, lua_gettop(L));
  }
  std::vector<HostValue> args;
  args.reserve(entry.params.size());
  for (int i = 1; i <= n; ++i) {
    switch (entry.params[i - 1]) {
      case HostType::kBool:
        luaL_checktype(L, i, LUA_TBOOLEAN);
        args.emplace_back(std::in_place_type<bool>, lua_toboolean(L, i) != 0);
        break;
      case HostType::kInteger:
        args.emplace_back(std::in_place_type<std::int64_t>, luaL_checkinteger(L, i));
        break;
      case HostType::kNumber:
        args.emplace_back(std::in_place_type<double>, luaL_checknumber(L, i));
        break;
      case HostType::kString:
        luaL_checktype(L, i, LUA_TSTRING);
        args.emplace_back(std::in_place_type<std::string>, ToView(L, i));
        break;
    }
  }
  absl::StatusOr<HostValue> result = entry.call(*cs.frame, args);
  CheckPoint(L);
  if (!result.ok()) {
    const std::string message(result.status().message());
    lua_pushlstring(L, message.data(), message.size());
    return lua_error(L);
  }
  return std::visit(
      [L](const auto& value) -> int {
        using T = std::decay_t<decltype(value)>;
        if constexpr (std::is_same_v<T, std::monostate>) {
          return 0;
        } else if constexpr (std::is_same_v<T, bool>) {
          lua_pushboolean(L, value ? 1 : 0);
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          lua_pushinteger(L, value);
        } else if constexpr (std::is_same_v<T, double>) {
          lua_pushnumber(L, value);
        } else {
          lua_pushlstring(L, value.data(), value.size());
        }
        return 1;
      },
      *result);
}

void PushCaller(lua_State* L, const CallerContext& caller) {
  lua_createtable(L, 0, 5);
  const auto field = [L](const char* name, const std::string& value) {
    lua_pushlstring(L, value.data(), value.size());
    lua_setfield(L, -2, name);
  };
  field("user_id", caller.user_id);
  field("role", caller.role);
  field("tenant_id", caller.tenant_id);
  field("email", caller.email);
  lua_createtable(L, static_cast<int>(caller.groups.size()), 0);
  for (std::size_t i = 0; i < caller.groups.size(); ++i) {
    lua_pushlstring(L, caller.groups[i].data(), caller.groups[i].size());
    lua_rawseti(L, -2, static_cast<lua_Integer>(i + 1));
  }
  lua_setfield(L, -2, "groups");
}

// frame[name]: the portable value of that name, or nil.
int FrameIndex(lua_State* L) {
  CallState& cs = StateOf(L);
  ++cs.host_calls;
  if (lua_type(L, 2) != LUA_TSTRING) return 0;
  const PortableKeys* portable = cs.host->options().portable.get();
  if (portable == nullptr) return 0;
  std::optional<PortableValue> value = portable->Lookup(*cs.frame, ToView(L, 2));
  if (!value.has_value()) return 0;
  std::visit(
      [L](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          lua_pushlstring(L, v.data(), v.size());
        } else if constexpr (std::is_same_v<T, std::int64_t>) {
          lua_pushinteger(L, v);
        } else if constexpr (std::is_same_v<T, bool>) {
          lua_pushboolean(L, v ? 1 : 0);
        } else if constexpr (std::is_same_v<T, double>) {
          lua_pushnumber(L, v);
        } else {
          PushCaller(L, v);
        }
      },
      *value);
  return 1;
}

int FrameNewindex(lua_State* L) { return luaL_error(L, "the frame is read-only"); }

void SetFunction(lua_State* L, const char* name, lua_CFunction fn) {
  lua_pushcfunction(L, fn);
  lua_setfield(L, -2, name);
}

// Replaces table[name] (table on top) by `fn` with the old value as upvalue 1.
void Wrap(lua_State* L, const char* name, lua_CFunction fn) {
  lua_getfield(L, -1, name);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

void DenyGlobalFunction(lua_State* L, const char* name) {
  lua_pushstring(L, name);
  lua_pushcclosure(L, DeniedFunction, 1);
  lua_setglobal(L, name);
}

// The host table: the built-ins and the application's functions.
void PushHostTable(lua_State* L) {
  CallState& cs = StateOf(L);
  lua_newtable(L);
  SetFunction(L, "write", HostWrite);
  SetFunction(L, "log", HostLog);
  SetFunction(L, "remaining", HostRemaining);
  SetFunction(L, "invoke", HostInvoke);
  for (const auto& [name, entry] : LuaHostAccess::functions(*cs.host)) {
    lua_pushlightuserdata(L, const_cast<HostFunctionEntry*>(&entry));
    lua_pushlstring(L, name.data(), name.size());
    lua_pushcclosure(L, HostApp, 2);
    lua_setfield(L, -2, name.c_str());
  }
}

}  // namespace

// An allocator refusal is final unless Lua retries the same request after its emergency
// collection and that retry succeeds.
void SettlePending(CallState& cs) {
  if (cs.pending_refusal && cs.fatal.ok()) {
    cs.fatal = absl::ResourceExhaustedError(
        absl::StrCat("lua: memory limit of ", cs.memory_limit, " bytes exceeded"));
  }
  cs.pending_refusal = false;
}

void InstallHook(lua_State* L, int period) { lua_sethook(L, Hook, LUA_MASKCOUNT, period); }

void InstallInterruptHook(lua_State* L) { lua_sethook(L, Hook, LUA_MASKCOUNT, 1); }

int Traceback(lua_State* L) {
  if (IsFatalObject(L, 1)) return 1;
  const char* message = lua_tostring(L, 1);
  if (message == nullptr) {
    message = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, message, 1);
  return 1;
}

CallState& StateOf(lua_State* L) {
  void* ud = nullptr;
  lua_getallocf(L, &ud);
  return *static_cast<CallState*>(ud);
}

void* Alloc(void* ud, void* ptr, std::size_t osize, std::size_t nsize) {
  CallState& cs = *static_cast<CallState*>(ud);
  const std::size_t old = ptr == nullptr ? 0 : osize;
  if (nsize == 0) {
    std::free(ptr);
    cs.used -= old;
    return nullptr;
  }
  const bool grows = nsize > old;
  if (grows && !cs.closing) {
    const bool retry = cs.pending_refusal && cs.pending_ptr == ptr && cs.pending_nsize == nsize;
    if (cs.pending_refusal && !retry) SettlePending(cs);
    bool refuse = cs.used - old + nsize > cs.memory_limit;
    if ((++cs.allocations & 255) == 0 && cs.fatal.ok()) {
      if (Clock::now() >= cs.deadline) {
        cs.fatal = absl::DeadlineExceededError("lua: deadline exceeded");
      } else if (cs.stop.stop_requested()) {
        cs.fatal = absl::CancelledError("lua: call cancelled");
      }
    }
    refuse = refuse || !cs.fatal.ok();
    if (refuse) {
      if (retry) {
        SettlePending(cs);
      } else {
        cs.pending_refusal = true;
        cs.pending_ptr = ptr;
        cs.pending_nsize = nsize;
      }
      return nullptr;
    }
    cs.pending_refusal = false;
  }
  void* block = std::realloc(ptr, nsize);
  if (block == nullptr) return nullptr;
  cs.used = cs.used - old + nsize;
  cs.peak = std::max(cs.peak, cs.used);
  return block;
}

void CheckPoint(lua_State* L) {
  CallState& cs = StateOf(L);
  if (cs.fatal.ok()) {
    if (Clock::now() >= cs.deadline) {
      cs.fatal = absl::DeadlineExceededError("lua: deadline exceeded");
    } else if (cs.stop.stop_requested()) {
      cs.fatal = absl::CancelledError("lua: call cancelled");
    }
  }
  RaiseIfFatal(L);
}

void RaiseFatal(lua_State* L, absl::Status status) {
  CallState& cs = StateOf(L);
  if (cs.fatal.ok()) cs.fatal = std::move(status);
  lua_pushlightuserdata(L, &kFatalTag);
  lua_error(L);
  std::abort();  // lua_error does not return
}

bool IsFatalObject(lua_State* L, int index) {
  return lua_touserdata(L, index) == &kFatalTag && lua_islightuserdata(L, index);
}

namespace {

// Registry slots of a sandbox (light userdata keys).
char kEnvMetaTag;      // the metatable of every call's global table: {__index = base globals}
char kProxyMetasTag;   // name -> metatable of that library's per-call proxy
char kFrameMetaTag;    // the frame view's metatable
char kBaseGlobalsTag;  // the base's global table
char kReseedTag;       // the base's math.randomseed
char kProxiesTag;      // name -> the proxy the last call on this state used

// A seed for math.random: splitmix64 over a per-thread start drawn from std::random_device.
std::uint64_t NextSeed() {
  thread_local std::uint64_t state = [] {
    std::random_device device;
    return (std::uint64_t{device()} << 32) ^ device();
  }();
  std::uint64_t z = (state += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

// The libraries a handler may use, each opened as a global, then os (not global: clock and
// time are copied from it), left on the stack for BuildSandbox.
void OpenLibraries(lua_State* L) {
  static constexpr luaL_Reg kGlobal[] = {
      {LUA_GNAME, luaopen_base},       {LUA_STRLIBNAME, luaopen_string},
      {LUA_TABLIBNAME, luaopen_table}, {LUA_MATHLIBNAME, luaopen_math},
      {LUA_UTF8LIBNAME, luaopen_utf8}, {LUA_COLIBNAME, luaopen_coroutine},
  };
  for (const luaL_Reg& library : kGlobal) {
    luaL_requiref(L, library.name, library.func, 1);
    lua_pop(L, 1);
  }
  luaL_requiref(L, LUA_OSLIBNAME, luaopen_os, 0);  // not global: clock and time are copied
}

// The base library's globals: safe replacements, and the file and module loaders denied.
void RestrictGlobals(lua_State* L) {
  lua_pushglobaltable(L);
  SetFunction(L, "pcall", Pcall);
  SetFunction(L, "xpcall", Xpcall);
  SetFunction(L, "print", Print);
  SetFunction(L, "tostring", SafeTostring);
  Wrap(L, "setmetatable", SafeSetmetatable);
  Wrap(L, "load", SafeLoad);
  Wrap(L, "collectgarbage", SafeCollectgarbage);
  lua_pushnil(L);
  lua_setfield(L, -2, "warn");
  lua_pop(L, 1);
  DenyGlobalFunction(L, "dofile");
  DenyGlobalFunction(L, "loadfile");
  DenyGlobalFunction(L, "require");
}

// The string library: step-counted patterns, no dump, no addresses, and its metatable hidden.
void RestrictString(lua_State* L) {
  lua_getglobal(L, LUA_STRLIBNAME);
  SetFunction(L, "find", PatternFind);
  SetFunction(L, "match", PatternMatch);
  SetFunction(L, "gmatch", PatternGmatch);
  SetFunction(L, "gsub", PatternGsub);
  Wrap(L, "format", SafeFormat);
  lua_pushliteral(L, "string.dump");
  lua_pushcclosure(L, DeniedFunction, 1);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  // Hide the shared string metatable (getmetatable("") returns false).
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
}

// Iterates a library proxy (upvalue 1: the library): the proxy's own fields first, then the
// library's fields the proxy does not shadow. next(proxy, key) as a C function.
int ProxyNext(lua_State* L) {
  lua_settop(L, 2);
  const int library = lua_upvalueindex(1);
  // A key the proxy does not hold is the library's, unless the script cleared it from the
  // proxy while iterating (then the proxy's traversal goes on).
  bool in_library = false;
  if (!lua_isnil(L, 2)) {
    lua_pushvalue(L, 2);
    in_library = lua_rawget(L, 1) == LUA_TNIL;
    lua_pushvalue(L, 2);
    in_library = in_library && lua_rawget(L, library) != LUA_TNIL;
    lua_pop(L, 2);
  }
  if (!in_library) {
    lua_pushvalue(L, 2);
    if (lua_next(L, 1) != 0) return 2;
    lua_pushnil(L);
  } else {
    lua_pushvalue(L, 2);
  }
  while (lua_next(L, library) != 0) {
    lua_pushvalue(L, -2);
    const bool shadowed = lua_rawget(L, 1) != LUA_TNIL;
    lua_pop(L, 1);
    if (!shadowed) return 2;
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  return 1;
}

// __pairs of a library proxy (upvalue 1: the library).
int ProxyPairs(lua_State* L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushcclosure(L, ProxyNext, 1);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  return 3;
}

// os.NAME (upvalue 1: the allowed subset): the allowed function, or denied.
int OsIndex(lua_State* L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  Deny(L, absl::StrCat("os.", AV(lua_type(L, 2) == LUA_TSTRING ? ToView(L, 2) : "?")));
}

// The metatable of a library's per-call proxy (library on top, replaced by the metatable):
// reads fall through to the shared library, writes land in the call's own proxy.
void LibraryMeta(lua_State* L) {
  lua_createtable(L, 0, 3);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, ProxyPairs, 1);
  lua_setfield(L, -2, "__pairs");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_remove(L, -2);
}

// Completes the metatable on top of the stack: writes to library `name` are denied and the
// metatable itself is hidden.
void DenyWritesAndHide(lua_State* L, const char* name) {
  lua_pushstring(L, name);
  lua_pushcclosure(L, DeniedField, 1);
  lua_setfield(L, -2, "__newindex");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
}

// The metatable of a denied library: every read or write is denied.
void DeniedMeta(lua_State* L, const char* name) {
  lua_createtable(L, 0, 3);
  lua_pushstring(L, name);
  lua_pushcclosure(L, DeniedField, 1);
  lua_setfield(L, -2, "__index");
  DenyWritesAndHide(L, name);
}

// os: clock and time (real os table below the top), anything else denied.
void OsMeta(lua_State* L) {
  lua_createtable(L, 0, 2);
  lua_getfield(L, -2, "clock");
  lua_setfield(L, -2, "clock");
  lua_getfield(L, -2, "time");
  lua_setfield(L, -2, "time");
  lua_createtable(L, 0, 3);
  lua_insert(L, -2);
  lua_pushcclosure(L, OsIndex, 1);
  lua_setfield(L, -2, "__index");
  DenyWritesAndHide(L, LUA_OSLIBNAME);
}

// The proxies' metatables, by global name, into the registry.
void RegisterProxies(lua_State* L) {
  lua_newtable(L);
  for (const char* name :
       {LUA_STRLIBNAME, LUA_TABLIBNAME, LUA_MATHLIBNAME, LUA_UTF8LIBNAME, LUA_COLIBNAME}) {
    lua_getglobal(L, name);
    LibraryMeta(L);
    lua_setfield(L, -2, name);
  }
  PushHostTable(L);
  LibraryMeta(L);
  lua_setfield(L, -2, "host");
  lua_pushvalue(L, -2);  // the real os table
  OsMeta(L);
  lua_setfield(L, -3, LUA_OSLIBNAME);
  lua_pop(L, 1);
  for (const char* name : {LUA_IOLIBNAME, LUA_DBLIBNAME, LUA_LOADLIBNAME}) {
    DeniedMeta(L, name);
    lua_setfield(L, -2, name);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kProxyMetasTag);
}

void RegisterFrameMeta(lua_State* L) {
  lua_createtable(L, 0, 4);
  SetFunction(L, "__index", FrameIndex);
  SetFunction(L, "__newindex", FrameNewindex);
  lua_pushliteral(L, "frame");
  lua_setfield(L, -2, "__name");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kFrameMetaTag);
}

}  // namespace

void BuildSandbox(lua_State* L) {
  OpenLibraries(L);  // leaves the real os table on the stack
  RestrictGlobals(L);
  RestrictString(L);

  lua_getglobal(L, LUA_COLIBNAME);
  Wrap(L, "resume", Rethrowing);
  Wrap(L, "close", Rethrowing);
  lua_getfield(L, -1, "resume");
  lua_pushcclosure(L, SafeWrap, 1);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);

  RegisterProxies(L);  // pops the real os table
  lua_pop(L, 1);
  RegisterFrameMeta(L);

  lua_createtable(L, 0, 2);
  lua_pushglobaltable(L);
  lua_setfield(L, -2, "__index");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kEnvMetaTag);
  lua_pushglobaltable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kBaseGlobalsTag);
  lua_getglobal(L, LUA_MATHLIBNAME);
  lua_getfield(L, -1, "randomseed");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kReseedTag);
  lua_pop(L, 1);
}

void OpenCallEnvironment(lua_State* L) {
  lua_createtable(L, 0, 12);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kEnvMetaTag);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setfield(L, -2, LUA_GNAME);
  // The proxies the previous call on L left: one it left empty (no field written or rawset; its
  // metatable is fixed and hidden) carries nothing from that call and serves this one too;
  // any other is replaced by a fresh one.
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &kProxiesTag) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 0, 12);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &kProxiesTag);
  }
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kProxyMetasTag);  // env proxies metas
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {  // env proxies metas name meta
    lua_pushvalue(L, -2);
    bool clean = false;
    if (lua_rawget(L, -5) == LUA_TTABLE) {  // env proxies metas name meta proxy
      lua_pushnil(L);
      clean = lua_next(L, -2) == 0;
      if (!clean) lua_pop(L, 2);
    }
    if (!clean) {
      lua_pop(L, 1);
      lua_createtable(L, 0, 0);
      lua_pushvalue(L, -2);
      lua_setmetatable(L, -2);  // env proxies metas name meta proxy
      lua_pushvalue(L, -3);
      lua_pushvalue(L, -2);
      lua_rawset(L, -7);  // proxies[name] = proxy
    }
    lua_pushvalue(L, -3);
    lua_insert(L, -2);
    lua_rawset(L, -7);  // env[name] = proxy; leaves env proxies metas name meta
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
  // math.random's state lives in the shared library: a fresh seed, so no call sees the
  // sequence another call chose. Explicit, so that seeding reads no clock.
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kReseedTag);
  lua_pushinteger(L, static_cast<lua_Integer>(NextSeed()));
  lua_call(L, 1, 0);
}

void CloseCallEnvironment(lua_State* L) {
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &kObjectIdsTag);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kBaseGlobalsTag);
  lua_rawseti(L, LUA_REGISTRYINDEX, LUA_RIDX_GLOBALS);
}

void PushFrameView(lua_State* L) {
  lua_newuserdatauv(L, 0, 0);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &kFrameMetaTag);
  lua_setmetatable(L, -2);
}

}  // namespace framekit::lua_internal
