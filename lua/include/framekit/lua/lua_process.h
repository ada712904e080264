// Lua processes: long-lived scripts run by dispatch::ProcessManager, each step preemptively
// bounded.
//
// The source is a chunk returning a table of hooks:
//
//   local seen = 0                                -- process state lives between steps
//   return {
//     setup = function(frame) host.log("starting for " .. tostring(frame["app.tenant"])) end,
//     poll = function(message, frame)             -- message: the oldest mailbox message or nil
//       if message == nil then return "idle" end
//       seen = seen + 1
//       return message == "stop" and "done" or "busy"
//     end,
//     teardown = function(frame) host.log("saw " .. seen) end,
//   }
//
// poll is required; setup and teardown are optional. poll returns "idle" (park until a message,
// a stop or the spec's idle_interval), "busy" (poll again), "done" (exit OK), or nil: "busy"
// when it was given a message, else "idle". Each process gets its own lua_State, built at setup
// (a restart builds a new one): globals and upvalues persist between the steps of one process
// and are never shared with another. The sandbox, the host API and the frame view are those of
// LuaFunction (lua_function.h); host.write goes to the host's log.
//
// Every step (setup, each poll, teardown) runs under the earlier of the process frame's
// deadline and LuaProcessLimits::step_timeout, enforced as for LuaFunction, and the frame's
// cancellation (Stop, Shutdown) ends a running step. A step that fails (a Lua error, its budget
// spent, its memory limit, a denied capability) is thrown as an exception, so the manager
// treats it as any fault: a failed setup is a failed start, a failed poll is a poll fault
// counted under the spec's `poll_faults` policy, a failed teardown is logged. A step that loops
// forever therefore holds a worker for step_timeout at most.
//
// Example:
//   auto host = std::make_shared<framekit::lua::LuaHost>();
//   FRAMEKIT_ASSIGN_OR_RETURN(
//       framekit::dispatch::ProcessSpec spec,
//       framekit::lua::LuaProcessSpec("counter", "return {poll = function(m) return 'idle' end}",
//                                     {.step_timeout = std::chrono::milliseconds(50)}, host));
//   spec.poll_faults.max_faults = 3;  // three failed polls within the window stop it
//   framekit::dispatch::ProcessManager manager(app, {.workers = 2});
//   FRAMEKIT_ASSIGN_OR_RETURN(framekit::dispatch::Pid started, manager.Start(frame, spec));
//   FRAMEKIT_RETURN_IF_ERROR(manager.Send(started, "hello"));
#ifndef FRAMEKIT_LUA_LUA_PROCESS_H_
#define FRAMEKIT_LUA_LUA_PROCESS_H_

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "framekit/dispatch/process_manager.h"
#include "framekit/lua/lua_function.h"

namespace framekit::lua {

struct LuaProcessLimits {
  std::size_t memory_bytes = 16 << 20;  // the process's whole Lua heap, for its life
  // The longest one step (setup, a poll, teardown) may run.
  Clock::duration step_timeout = std::chrono::milliseconds(100);
  std::size_t max_output_bytes = 1 << 20;  // host.write per step
  int max_log_lines = 100;                 // per step
};

// A ProcessSpec (name, setup, poll, teardown, finalize; the other fields at their defaults, for
// the caller to adjust) running `source` as a Lua process. Returns InvalidArgument with
// "name:line: message" for a syntax error, InvalidArgument for nonsensical limits. A null
// `host` is an empty one. The spec may be started any number of times: every process gets its
// own state.
// Thread-safety: the returned spec's functions are called by the manager, one step at a time
// per process, concurrently across processes.
absl::StatusOr<dispatch::ProcessSpec> LuaProcessSpec(std::string name, std::string source,
                                                     LuaProcessLimits limits = {},
                                                     std::shared_ptr<const LuaHost> host = nullptr);

}  // namespace framekit::lua

#endif  // FRAMEKIT_LUA_LUA_PROCESS_H_
