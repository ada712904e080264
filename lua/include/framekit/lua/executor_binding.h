// Lets scripts call the executor's functions: host.invoke(name, payload) becomes an Invoke.
//
// A script's nested call passes the script's own call frame as the parent, so everything the
// executor does for any call applies to it generically: FrameResolvers (fed by the parent's
// inherited pairs), the parent's deadline and cancellation, interceptors, bulkheads, records and
// the fault policy. The nested call carries no options of its own.
//
// Example:
//   auto host = std::make_shared<framekit::lua::LuaHost>();
//   framekit::lua::BindInvoker(*host, *executor);  // before the host is shared with Compile
//   FRAMEKIT_ASSIGN_OR_RETURN(
//       std::shared_ptr<framekit::lua::LuaFunction> fn,
//       framekit::lua::LuaFunction::Compile(
//           "caller.lua", "return function(p) return host.invoke('greet', p) end", {}, host));
//   FRAMEKIT_RETURN_IF_ERROR(executor->Register("caller", fn));
#ifndef FRAMEKIT_LUA_EXECUTOR_BINDING_H_
#define FRAMEKIT_LUA_EXECUTOR_BINDING_H_

#include "framekit/dispatch/function_executor.h"
#include "framekit/lua/lua_function.h"

namespace framekit::lua {

// Sets `host`'s invoker to `executor.Invoke(script frame, name, payload)`, replacing an earlier
// invoker. A failed nested call becomes a Lua error carrying its status text (a script may
// pcall it).
// NOTE: `executor` must outlive every call of every function compiled with `host`. Like
// set_invoker, call it while setting the host up, before it is shared.
void BindInvoker(LuaHost& host, dispatch::FunctionExecutor& executor);

}  // namespace framekit::lua

#endif  // FRAMEKIT_LUA_EXECUTOR_BINDING_H_
