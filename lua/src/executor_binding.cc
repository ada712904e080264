#include "framekit/lua/executor_binding.h"

namespace framekit::lua {

void BindInvoker(LuaHost& host, dispatch::FunctionExecutor& executor) {
  host.set_invoker([&executor](const Frame& parent, std::string_view function,
                               std::string_view payload) -> absl::StatusOr<std::string> {
    return executor.Invoke(parent, function, payload);
  });
}

}  // namespace framekit::lua
