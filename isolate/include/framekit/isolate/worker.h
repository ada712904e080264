// The worker side of isolate/: the handlers an application runs in worker processes, and the
// worker main that serves them.
//
// The application builds one worker executable: its main registers the handlers by name and
// calls WorkerMain. The host's WorkerPool (pool.h) starts that executable with posix_spawn,
// which is safe from a multithreaded host, unlike fork() followed by arbitrary code in the
// child; by default it starts it once as a single-threaded zygote, in which WorkerMain forks
// each worker on the pool's request (see pool.h). In every worker, WorkerMain then, before
// serving any call:
//   - asks for SIGKILL when its parent (the host, or the zygote, which dies with the host) dies
//     (PR_SET_PDEATHSIG) and exits at once if the parent is already gone;
//   - applies the limits it was started with (setrlimit: address space, CPU seconds, open
//     files) and, when asked, the seccomp profile (see WorkerLimits in pool.h);
//   - installs an async-signal-safe crash handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT
//     and SIGSYS (on an alternate stack, so a stack overflow is reported too) that writes the
//     signal and the crashing thread's stack (backtrace_symbols_fd) to the fault pipe, then
//     dies by the same signal (link the executable with -rdynamic, CMake's ENABLE_EXPORTS, for
//     function names in that stack); and a terminate handler that writes the uncaught exception
//     first (a throw out of a noexcept function ends there).
// It serves one call at a time: the frame arrives with its portable pairs (all
// ValueOrigin::kInherited), the remaining deadline and a stop token that fires when the host
// cancels the call; output chunks stream back as the handler writes them.
//
// The whole worker executable of an application can be this short.
//
// Example:
//   #include "framekit/isolate/worker.h"
//
//   int main(int argc, char** argv) {
//     framekit::isolate::WorkerRegistry registry;
//     absl::Status added = registry.Add(
//         "reverse", [](const framekit::Frame& frame, std::string_view payload,
//                       framekit::dispatch::Sink& out) -> absl::Status {
//           return out.Write(std::string(payload.rbegin(), payload.rend()));
//         });
//     if (!added.ok()) return 2;
//     return framekit::isolate::WorkerMain(registry, argc, argv);
//   }
#ifndef FRAMEKIT_ISOLATE_WORKER_H_
#define FRAMEKIT_ISOLATE_WORKER_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/code.h"

namespace framekit::isolate {

// Adds the keys every isolated call carries, the caller (CallerKey()) and the trace id
// (dispatch::TraceIdKey()), to `keys`. Host and worker must agree on the portable keys:
// call it on both sides, then add the application's own. AlreadyExists if one is there.
absl::Status AddCallKeys(PortableKeys& keys);

// The handlers of one worker executable, by name.
//
// Thread-safety: thread-compatible; filled in main() before WorkerMain, then only read.
class WorkerRegistry {
 public:
  // Portable keys: the caller and trace id (AddCallKeys). Replace with set_portable_keys to
  // receive the application's own keys too.
  WorkerRegistry();

  // Registers `handler` under `name` (1-128 bytes of [A-Za-z0-9_.-]). InvalidArgument for a bad
  // name or an empty handler; AlreadyExists for a duplicate.
  absl::Status Add(std::string name, dispatch::Handler handler);
  // The keys a call's frame is decoded with; must match the host's (see AddCallKeys).
  void set_portable_keys(std::shared_ptr<const PortableKeys> keys) { keys_ = std::move(keys); }

  const dispatch::Handler* Find(std::string_view name) const;
  const PortableKeys& portable_keys() const { return *keys_; }

 private:
  absl::flat_hash_map<std::string, dispatch::Handler> handlers_;
  std::shared_ptr<const PortableKeys> keys_;
};

// Serves calls from the host that started this process, with the handlers of `registry`, until
// the host closes the connection; returns the process exit code. Run without the arguments the
// pool passes (see pool.h), it writes a usage line to stderr and returns 2.
// NOTE: call it from main() before starting any thread of your own (static initialisers
// included): the seccomp profile and the limits apply to the whole process, and a zygote with a
// second thread refuses to fork (the pool then spawns every worker). The process ends with _exit:
// static destructors and atexit handlers do not run, not even when a handler calls exit() (the call
// then fails with that exit status as its fault record).
int WorkerMain(const WorkerRegistry& registry, int argc, char** argv);

}  // namespace framekit::isolate

#endif  // FRAMEKIT_ISOLATE_WORKER_H_
