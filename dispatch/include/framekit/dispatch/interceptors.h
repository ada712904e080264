// Interceptors: ordered middleware around every call a dispatcher makes.
//
// An interceptor wraps one call: it sees the call's frame (already resolved) and options and
// either passes the call on with `next(call)` or short-circuits it with a status of its own
// (authentication, quotas, audit) so the handler never runs. Interceptors run in ascending
// `order`, equal orders by name; the first registered runs outermost. The registry is the same
// copy-on-write snapshot FrameResolvers uses: a call reads it with one acquire load and no lock.
//
// Example:
//   auto interceptors = std::make_shared<framekit::dispatch::Interceptors>();
//   FRAMEKIT_RETURN_IF_ERROR(interceptors->Register(
//       "auth", /*order=*/100,
//       [](framekit::dispatch::Call& call, const framekit::dispatch::Next& next) {
//         if (framekit::CallerOf(call.frame) == nullptr) {
//           return absl::PermissionDeniedError("anonymous call");
//         }
//         return next(call);
//       }));
//   framekit::dispatch::FunctionExecutor executor(app, {.interceptors = interceptors});
#ifndef FRAMEKIT_DISPATCH_INTERCEPTORS_H_
#define FRAMEKIT_DISPATCH_INTERCEPTORS_H_

#include <atomic>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/resolvers/internal/cow_registry.h"

namespace framekit::dispatch {

// What kind of call an interceptor is looking at.
enum class CallKind { kInvoke, kInvokeStream, kStart };

// One call on its way to a handler (or a process on its way to setup).
// NOTE: a view: `options` and `payload` point into the dispatcher's storage and are valid only
// while the interceptor runs. An interceptor may replace `frame` (e.g. `call.frame =
// call.frame.With(...)`) before calling next; the handler then sees the new frame.
struct Call {
  CallKind kind = CallKind::kInvoke;
  std::string_view target;           // the function or process name
  Frame frame;                       // forked, resolved, with caller and deadline attached
  const Options* options = nullptr;  // the merged options (never null inside a chain)
  std::string_view payload;          // empty for kStart
};

class Next;

// An interceptor. Returns next(call)'s status to let the call through, or any other status to
// stop it. A throw is isolated: it becomes an Internal status carrying an ExtensionPanic (phase
// "invoke", extension "interceptor NAME") and the handler does not run.
// Re-entrancy: an interceptor may call dispatchers (nested calls) and Register/Unregister (no
// lock is held while it runs; a change applies from the next call). It must call `next` at most
// once, and only before it returns.
using InterceptorFn = std::function<absl::Status(Call& call, const Next& next)>;

}  // namespace framekit::dispatch

namespace framekit::dispatch_internal {
struct InterceptorEntry {
  std::string name;
  int order = 0;
  dispatch::InterceptorFn fn;
  std::string guard_name;  // "interceptor NAME", the extension name faults are reported under
};
}  // namespace framekit::dispatch_internal

namespace framekit::dispatch {

// The rest of the chain after one interceptor: the later interceptors, then the handler.
// Thread-compatible; valid only while the interceptor it was given to runs.
class Next {
 public:
  absl::Status operator()(Call& call) const;

 private:
  friend class Interceptors;
  Next(const dispatch_internal::InterceptorEntry* const* at,
       const dispatch_internal::InterceptorEntry* const* end,
       absl::FunctionRef<absl::Status(Call&)> terminal, FaultMonitor* monitor)
      : at_(at), end_(end), terminal_(terminal), monitor_(monitor) {}

  const dispatch_internal::InterceptorEntry* const* at_;
  const dispatch_internal::InterceptorEntry* const* end_;
  absl::FunctionRef<absl::Status(Call&)> terminal_;
  FaultMonitor* monitor_;
};

// The ordered interceptor registry.
//
// Thread-safety: thread-safe. Run never locks (one acquire load of an immutable snapshot);
// Register and Unregister copy on write under a mutex and apply from the next Run.
// NOTE: as with FrameResolvers, retired snapshots and unregistered interceptors are kept until
// the registry is destroyed; registration is a boot-time act.
class Interceptors {
 public:
  // `monitor` receives the faults interceptors throw; nullptr means DefaultFaultMonitor().
  explicit Interceptors(FaultMonitor* monitor = nullptr);
  Interceptors(const Interceptors&) = delete;
  Interceptors& operator=(const Interceptors&) = delete;

  // Adds `fn` under `name` at `order`. InvalidArgument for an empty name or fn; AlreadyExists
  // for a name registered already (whatever its order); FailedPrecondition after Seal().
  absl::Status Register(std::string name, int order, InterceptorFn fn);
  // Removes the interceptor `name`. NotFound when none; FailedPrecondition after Seal().
  // NOTE: a call already inside the chain still runs it.
  absl::Status Unregister(std::string_view name);
  // Refuses every later Register/Unregister. Idempotent.
  void Seal() { registry_.Seal(); }

  // Names in run order (outermost first).
  std::vector<std::string> names() const;
  std::size_t size() const { return registry_.Load()->entries.size(); }
  std::size_t retained_snapshots() const { return published_.load(); }

  // Runs the chain around `terminal` (the handler). With no interceptors, calls `terminal`
  // directly. Returns the status of the outermost interceptor (or of `terminal`).
  absl::Status Run(Call& call, absl::FunctionRef<absl::Status(Call&)> terminal) const {
    const auto* snapshot = registry_.Load();
    if (snapshot->entries.empty()) return terminal(call);
    const auto* begin = snapshot->entries.data();
    return Next(begin, begin + snapshot->entries.size(), terminal, monitor_)(call);
  }

 private:
  resolvers_internal::CowRegistry<dispatch_internal::InterceptorEntry> registry_;
  FaultMonitor* monitor_;
  std::atomic<std::size_t> published_{1};
};

// Runs `interceptors`' chain around `terminal`; a nullptr registry calls `terminal` directly.
inline absl::Status RunInterceptors(const Interceptors* interceptors, Call& call,
                                    absl::FunctionRef<absl::Status(Call&)> terminal) {
  if (interceptors == nullptr) return terminal(call);
  return interceptors->Run(call, terminal);
}

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_INTERCEPTORS_H_
