// Code: what runs behind a function's version — native C++, a Lua chunk, a handler in a worker
// process, a function on another node — and Sink, where it writes its output.
//
// The executor does everything else for every kind of code alike (options, FrameResolvers,
// caller and deadline, interceptors, bulkheads, records, fault policy); a runtime only turns
// (frame, payload) into output chunks and a status, and reports what it can measure in RunStats.
//
// Example:
//   class Echo : public framekit::dispatch::Code {
//    public:
//     bool preemptive() const override { return false; }
//     absl::Status Run(const framekit::Frame& frame, std::string_view payload,
//                      framekit::dispatch::Sink& out,
//                      framekit::dispatch::RunStats& stats) override {
//       return out.Write(payload);
//     }
//   };
#ifndef FRAMEKIT_DISPATCH_CODE_H_
#define FRAMEKIT_DISPATCH_CODE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "framekit/ctx/frame.h"

namespace framekit::dispatch {

// Where a handler writes its output, chunk by chunk.
// Thread-safety: a sink is written by one handler at a time.
class Sink {
 public:
  virtual ~Sink() = default;
  // Delivers `chunk`. A non-OK status (the caller went away, the stream was closed) tells the
  // handler to stop producing; it should return that status.
  virtual absl::Status Write(std::string_view chunk) = 0;
};

// What a runtime reports about one run. Every field is 0 when the runtime cannot tell.
struct RunStats {
  std::uint64_t peak_memory_bytes = 0;  // the run's peak heap (its own allocator's view)
  std::uint64_t host_calls = 0;         // calls from the code into the host
  std::uint64_t output_bytes = 0;       // bytes written to the Sink
  std::uint64_t instructions = 0;       // VM instructions executed (approximate)
};

// The code behind one version of a function.
//
// Thread-safety: implementations must be thread-safe: Run may be called concurrently, with a
// distinct Sink and RunStats per call.
class Code {
 public:
  virtual ~Code() = default;

  // True when Run returns by the frame's deadline, and promptly after its cancellation,
  // whatever the code does. The executor runs such code on the caller's thread: no worker
  // handoff, no quarantine. Read once, when the code is registered or deployed: the answer
  // must not change.
  virtual bool preemptive() const = 0;

  // Runs the code for one call: reads `frame` and `payload`, writes output to `out`, fills
  // `stats`. Returns the call's status: DeadlineExceeded / Cancelled when the frame's deadline
  // passed or its scope was cancelled, the Sink's status when a Write failed, and the
  // runtime's own codes otherwise (documented by each implementation).
  // NOTE: `payload` is valid until Run returns; an implementation copies what it keeps.
  virtual absl::Status Run(const Frame& frame, std::string_view payload, Sink& out,
                           RunStats& stats) = 0;
};

// A native handler: reads the call's frame and payload and writes its output to `out`.
// The frame is immutable; its stop_token() is triggered at the call's deadline (and when the
// parent's scope is cancelled), and a handler should check it when it may run long.
// Re-entrancy: a handler may invoke other functions (pass `frame` as the parent) and may call
// any executor method. A throw is isolated by the executor's invoke guard.
// NOTE: `payload` is valid until the handler returns; copy what it keeps.
using Handler =
    std::function<absl::Status(const Frame& frame, std::string_view payload, Sink& out)>;

// `handler` as Code: native and not preemptive (the executor runs a deadline call of it on a
// worker and quarantines the worker if it overruns). Reports no RunStats. Returns nullptr for
// an empty handler.
std::shared_ptr<Code> NativeCode(Handler handler);

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_CODE_H_
