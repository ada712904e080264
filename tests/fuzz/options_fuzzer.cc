// Fuzzes Options::Parse: any input either parses, and then round-trips through ToString, or
// yields InvalidArgument. Never a crash, never another code.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "framekit/ctx/options.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<framekit::Options> parsed = framekit::Options::Parse(text);
  if (!parsed.ok()) {
    if (parsed.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  absl::StatusOr<framekit::Options> again = framekit::Options::Parse(parsed->ToString());
  if (!again.ok() || !(*again == *parsed)) std::abort();
  return 0;
}
