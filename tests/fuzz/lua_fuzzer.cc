// Runs arbitrary Lua source as a LuaFunction under tight limits (10 ms, 1 MiB): whatever the
// input, no crash, no hang, and every run ends with a status.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

#include "framekit/lua/lua_function.h"

namespace {

class NullSink : public framekit::dispatch::Sink {
 public:
  absl::Status Write(std::string_view) override { return absl::OkStatus(); }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  framekit::lua::LuaLimits limits;
  limits.memory_bytes = 1 << 20;
  limits.timeout = std::chrono::milliseconds(10);
  limits.max_log_lines = 0;
  const std::string source(reinterpret_cast<const char*>(data), size);
  // As a handler chunk, and as a handler body.
  for (const std::string& chunk :
       {source, "return function(payload, frame)\n" + source + "\nend"}) {
    auto fn = framekit::lua::LuaFunction::Compile("fuzz.lua", chunk, limits);
    if (!fn.ok()) continue;
    // Twice: the second call runs on the sandbox the first left (when it ended cleanly).
    for (int run = 0; run < 2; ++run) {
      NullSink sink;
      framekit::dispatch::RunStats stats;
      const auto start = std::chrono::steady_clock::now();
      (void)(*fn)->Run(framekit::Frame(), "payload", sink, stats);
      if (std::chrono::steady_clock::now() - start > std::chrono::seconds(2)) __builtin_trap();
    }
  }
  return 0;
}
