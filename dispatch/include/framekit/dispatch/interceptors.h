// Interceptors: ordered middleware around every call a dispatcher makes.
//
// An interceptor wraps one call: it sees the call's frame (already resolved) and options and
// either passes the call on with `next(call)` or short-circuits it with a status of its own
// (authentication, quotas, audit) so the handler never runs. Interceptors run in ascending
// `order`, equal orders by name; the first in that order runs outermost. The registry is a
// copy-on-write snapshot that reclaims retired snapshots (see Interceptors).
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
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "framekit/base/internal/cow_registry.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/dispatch/fault_monitor.h"

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
// Registration may happen at run time (a host adds and removes middleware while serving), so
// unlike FrameResolvers this registry reclaims what it retires. Each call holds the snapshot it
// runs through by a std::shared_ptr copied under a small lock (`read_mu_`, held for the copy
// only, never while an interceptor runs); a write publishes a new snapshot and drops the
// registry's reference to the old one, which is freed, with every interceptor only it refers
// to, when the last call still inside it returns. Retention is thus bounded by the calls in
// flight, not by the history of writes (see retained_snapshots()). The price, measured with
// bench/dispatch_benchmark (BM_Interceptors*): a lock, an atomic increment and decrement per
// call that has interceptors; a registry with none is read with one acquire load and no lock.
// Epoch- or hazard-pointer schemes would shave the lock but not the refcount, and need a
// reclamation thread or per-thread state this library otherwise avoids.
//
// Thread-safety: thread-safe. Register and Unregister copy on write under a mutex and apply
// from the next Run; Run may race with them and sees the old snapshot or the new one.
// Memory ordering: a writer builds the snapshot completely before publishing it under
// `read_mu_` (the lock orders it before every later reader's copy); `empty_` is stored with
// release after publication and read with acquire, and only short-cuts the empty registry.
class Interceptors {
 public:
  // `monitor` receives the faults interceptors throw; nullptr means DefaultFaultMonitor().
  explicit Interceptors(FaultMonitor* monitor = nullptr);
  Interceptors(const Interceptors&) = delete;
  Interceptors& operator=(const Interceptors&) = delete;

  // Adds `fn` under `name` at `order`. InvalidArgument for a name outside the function-name
  // grammar (1-128 of [A-Za-z0-9_.-], starting with a letter or digit; the message echoes at
  // most 64 bytes of it) or an empty fn; AlreadyExists for a name registered already (whatever
  // its order); FailedPrecondition after Seal().
  absl::Status Register(std::string name, int order, InterceptorFn fn);
  // Removes the interceptor `name`. NotFound when none; FailedPrecondition after Seal().
  // NOTE: a call already inside the chain still runs it; its function (and what it captured)
  // is destroyed by whichever thread drops the last reference: this call, or the last call
  // still running through the old snapshot.
  absl::Status Unregister(std::string_view name);
  // Refuses every later Register/Unregister. Idempotent.
  void Seal();

  // Names in run order (outermost first).
  std::vector<std::string> names() const;
  std::size_t size() const { return Load()->entries.size(); }
  // Snapshots alive now: the current one plus those still held by calls in flight.
  std::size_t retained_snapshots() const { return live_snapshots_->load(); }

  // Runs the chain around `terminal` (the handler). With no interceptors, calls `terminal`
  // directly. Returns the status of the outermost interceptor (or of `terminal`).
  absl::Status Run(Call& call, absl::FunctionRef<absl::Status(Call&)> terminal) const {
    if (empty_.load(std::memory_order_acquire)) [[likely]] {
      return terminal(call);
    }
    const std::shared_ptr<const Snapshot> snapshot = Load();
    if (snapshot->entries.empty()) return terminal(call);
    const auto* begin = snapshot->entries.data();
    return Next(begin, begin + snapshot->entries.size(), terminal, monitor_)(call);
  }

 private:
  using Entry = dispatch_internal::InterceptorEntry;
  // Immutable once published.
  struct Snapshot {
    std::vector<const Entry*> entries;                // sorted by (order, name)
    std::vector<std::shared_ptr<const Entry>> owned;  // keeps `entries` alive
  };

  std::shared_ptr<const Snapshot> Load() const;
  std::shared_ptr<const Snapshot> MakeSnapshot(Snapshot snapshot) const;
  // Publishes `next` and returns the snapshot it replaced, for the caller to drop unlocked.
  std::shared_ptr<const Snapshot> Publish(std::shared_ptr<const Snapshot> next);

  FaultMonitor* monitor_;
  std::shared_ptr<std::atomic<std::size_t>> live_snapshots_;
  std::mutex write_mu_;
  bool sealed_ ABSL_GUARDED_BY(write_mu_) = false;
  mutable std::mutex read_mu_;
  std::shared_ptr<const Snapshot> current_ ABSL_GUARDED_BY(read_mu_);
  std::atomic<bool> empty_{true};
};

// Runs `interceptors`' chain around `terminal`; a nullptr registry calls `terminal` directly.
inline absl::Status RunInterceptors(const Interceptors* interceptors, Call& call,
                                    absl::FunctionRef<absl::Status(Call&)> terminal) {
  if (interceptors == nullptr) return terminal(call);
  return interceptors->Run(call, terminal);
}

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_INTERCEPTORS_H_
