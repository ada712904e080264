// The umbrella header: every public framekit header of the modules in framekit::framekit,
// the status macros (FRAMEKIT_RETURN_IF_ERROR, FRAMEKIT_ASSIGN_OR_RETURN) included.
// Including it is the same as including each of them; prefer the single headers in libraries
// that care about build times.
#ifndef FRAMEKIT_FRAMEKIT_H_
#define FRAMEKIT_FRAMEKIT_H_

#include "framekit/app/app_context.h"
#include "framekit/app/boot.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/key.h"
#include "framekit/ctx/options.h"
#include "framekit/ctx/pair.h"
#include "framekit/ctx/panic.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/code.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/fault_policy.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/interceptors.h"
#include "framekit/dispatch/process_manager.h"
#include "framekit/dispatch/recovery_registry.h"
#include "framekit/isolate/pool.h"
#include "framekit/isolate/worker.h"
#include "framekit/lua/executor_binding.h"
#include "framekit/lua/lua_function.h"
#include "framekit/lua/lua_process.h"
#include "framekit/net/dial.h"
#include "framekit/net/network.h"
#include "framekit/net/overlay.h"
#include "framekit/resolvers/frame_resolvers.h"

#endif  // FRAMEKIT_FRAMEKIT_H_
