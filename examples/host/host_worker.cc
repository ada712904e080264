// framekit-host-worker: the demo host's worker executable. The handlers that run isolated, in
// processes of their own: one that dereferences null on every Nth call and one that never
// returns. The host starts it (framekit::isolate::WorkerPool); run by hand, it says so and
// exits 2.
#include <string>

#include "absl/strings/numbers.h"
#include "framekit/isolate/worker.h"

namespace {

using framekit::Frame;
using framekit::dispatch::Sink;

// The payload is "CALL/N": the call's number and the crash period. Call numbers come from the
// host (a fresh worker per call remembers nothing).
absl::Status Flaky(const Frame&, std::string_view payload, Sink& out) {
  const std::size_t slash = payload.find('/');
  int call = 0;
  int period = 0;
  if (slash == std::string_view::npos ||
      !absl::SimpleAtoi(absl::string_view(payload.data(), slash), &call) ||
      !absl::SimpleAtoi(absl::string_view(payload.data() + slash + 1, payload.size() - slash - 1),
                        &period) ||
      period <= 0) {
    return absl::InvalidArgumentError("payload must be CALL/N");
  }
  if (call % period == 0) {
    volatile int* null = nullptr;
    *null = call;  // the bug this demo contains
  }
  return out.Write("ok");
}

absl::Status Spin(const Frame&, std::string_view, Sink&) {
  volatile bool forever = true;
  while (forever) {
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  framekit::isolate::WorkerRegistry registry;
  if (!registry.Add("flaky", Flaky).ok() || !registry.Add("spin", Spin).ok() ||
      !registry
           .Add("echo", [](const Frame&, std::string_view payload,
                           Sink& out) { return out.Write(payload); })
           .ok()) {
    return 2;
  }
  return framekit::isolate::WorkerMain(registry, argc, argv);
}
