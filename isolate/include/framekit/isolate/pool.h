// WorkerPool: native handlers run in worker processes, so that a crash is a fault of one call
// and not an outage of the host.
//
// In C++ a null dereference, a stack overflow, abort(), exit() or a throw out of a noexcept
// function ends the process; the only boundary that contains them is a process. The pool starts
// the application's worker executable (worker.h) with posix_spawn from one long-lived spawner
// thread (a parent-death signal is tied to the thread that spawned the child), talks to each
// worker over a socketpair with strictly bounded, length-prefixed messages, and classifies
// every death: a signal (with the worker's own stack from its crash handler), an exit code, a
// seccomp violation, an uncaught exception. IsolatedCode exposes one handler as
// dispatch::Code, so the executor's options, resolvers, interceptors, records and fault policy
// apply to it unchanged.
//
// Workers:
//   - Fresh by default: a worker serves one call and is killed after it, so no state can leak
//     from one caller to the next. Reuse is opt-in per function (IsolatedOptions::reuse): then
//     a worker keeps serving calls of that one handler, never of another.
//   - Spare workers are started ahead (spare_workers), so a fresh call does not wait for a
//     process to start.
//   - A zygote makes starting one cheap (WorkerPoolOptions::zygote, on by default): the pool
//     posix_spawns the executable once more in zygote mode, a single-threaded process that runs
//     no handler and forks a worker on request, so a worker costs a fork rather than an exec and
//     the loading of every shared library. Forking it is safe because it has one thread (it
//     checks at start-up, and is turned off for the pool if it finds more); the host itself
//     never forks. Its workers are its children: it reaps them and hands each wait status to
//     the host, so deaths are classified exactly as for spawned workers. If the zygote ends,
//     its workers die with it (calls on them return Unavailable, not a fault), and the pool
//     spawns workers directly until a new zygote is up (restarted with a backoff).
//   - Bounded: at most max_workers processes live at once; a call that finds none waits until
//     its deadline (or acquire_timeout) and then fails with ResourceExhausted.
//   - A handler whose calls keep crashing waits a backoff before its next worker (doubling from
//     respawn_backoff_min to respawn_backoff_max after the second consecutive crash), so a crash
//     loop cannot spin the host; a clean call resets it. Other handlers are not slowed.
//   - At the deadline (or when the frame is cancelled) the worker is told to stop (its frame's
//     stop token fires) and killed cancel_grace later; the call returns DeadlineExceeded (or
//     Cancelled) then. Nothing is quarantined: the caller's thread is free.
//   - Shutdown kills and reaps every worker and the zygote; the destructor calls it. Workers
//     also die with the host (PR_SET_PDEATHSIG: the zygote with the host, its workers with the
//     zygote), so none outlives it even when the host is killed.
//   - A process a worker starts (only possible with limits.seccomp off) is killed by the zygote
//     once its worker has ended, or at Shutdown (the zygote is a child subreaper, so setsid()
//     does not escape it). NOTE: with the zygote off, or when the host is killed, such a
//     process is reparented to init and may outlive the pool; keep seccomp on to rule it out.
//
// Example:
//   framekit::isolate::WorkerPoolOptions options;
//   options.executable = "/usr/libexec/myhost/myhost-worker";
//   FRAMEKIT_ASSIGN_OR_RETURN(std::shared_ptr<framekit::isolate::WorkerPool> pool,
//                             framekit::isolate::WorkerPool::Create(std::move(options)));
//   FRAMEKIT_RETURN_IF_ERROR(executor->Register(
//       "thumbnail", framekit::isolate::IsolatedCode(pool, "thumbnail"),
//       framekit::Options{{"timeout_ms", 2000}}));
//   // A segfault in "thumbnail" is now an Internal status carrying an ExtensionPanic of phase
//   // "invoke", counted by the executor's fault monitor; the host and its other calls go on.
#ifndef FRAMEKIT_ISOLATE_POOL_H_
#define FRAMEKIT_ISOLATE_POOL_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/panic.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/code.h"

namespace framekit::isolate {

// What each worker process is allowed. Applied by the worker itself before it serves a call.
// Core dumps are always off in a worker (RLIMIT_CORE 0 and not dumpable): a crash is reported
// through its fault record instead.
struct WorkerLimits {
  // RLIMIT_AS in bytes; 0 for none. Not applied in a worker built with AddressSanitizer or
  // ThreadSanitizer, whose runtimes reserve terabytes of shadow address space.
  std::uint64_t address_space_bytes = std::uint64_t{1} << 30;
  // RLIMIT_CPU in seconds of CPU time (the worker dies by SIGXCPU); 0 for none.
  std::uint64_t cpu_seconds = 0;
  // RLIMIT_NOFILE: open files, the wire's two included. 0 for none.
  std::uint64_t open_files = 64;
  // The default seccomp profile: execve/execveat, ptrace, process_vm_readv/writev, mount and
  // umount, pivot_root, chroot, unshare, setns, (f)init_module and delete_module, kexec, reboot,
  // swapon/off, bpf, perf_event_open, keyctl, fork/vfork and clone of a new process (threads
  // stay allowed) are denied; a violation kills the worker with SIGSYS and is reported as
  // DeathKind::kSeccomp naming the call.
  bool seccomp = true;
};

struct WorkerPoolOptions {
  // The worker executable (its main calls WorkerMain) and extra arguments for it.
  std::string executable;
  std::vector<std::string> args;
  // At most this many worker processes at once (> 0), spares included.
  int max_workers = 8;
  // Fresh workers kept started ahead (>= 0, at most max_workers).
  int spare_workers = 2;
  // Start workers by forking them from a zygote (see the file comment): a replacement costs a
  // fork, not an exec and the loading of every shared library. false: every worker is started
  // with posix_spawn.
  bool zygote = true;
  WorkerLimits limits;
  // Between telling a worker to stop (deadline, cancellation) and killing it.
  std::chrono::milliseconds cancel_grace{20};
  // How long a call without a deadline waits for a worker.
  std::chrono::milliseconds acquire_timeout{10000};
  // How long a new worker may take to report ready before it is killed.
  std::chrono::milliseconds startup_timeout{10000};
  // A handler's crash-loop backoff (see the file comment); min 0 turns it off (benchmarks).
  std::chrono::milliseconds respawn_backoff_min{10};
  std::chrono::milliseconds respawn_backoff_max{2000};
  // The keys whose values cross to the worker; null: the call keys only (AddCallKeys). Must
  // match the worker registry's.
  std::shared_ptr<const PortableKeys> portable_keys;
  // Bound on one wire message either way (payload, one output chunk, ...).
  std::size_t max_message_bytes = 8 << 20;
  // Bound on a call's whole output; a worker sending more is killed (ResourceExhausted).
  std::size_t max_output_bytes = 64 << 20;
};

// How a worker ended a call abnormally.
enum class DeathKind {
  kSignal,        // killed by a signal (SIGSEGV, SIGABRT, stack overflow, SIGXCPU, ...)
  kExit,          // exited (with any status) while serving a call
  kSeccomp,       // made a system call its seccomp profile denies
  kHandlerThrew,  // the handler threw; the worker's guard caught it (the worker lives on)
  kProtocol,      // sent something the wire does not allow; killed
};
std::string_view DeathKindName(DeathKind kind);  // "signal", "exit", "seccomp", ...

// The fault record of a worker death.
struct WorkerDeath {
  DeathKind kind = DeathKind::kSignal;
  int signal = 0;       // kSignal, kSeccomp
  int exit_code = 0;    // kExit
  std::string syscall;  // kSeccomp: the denied call's name (or number)
  std::string detail;   // e.g. the uncaught exception before an abort
  std::string stack;    // the crashing thread's stack, one frame per line (may be empty)
  std::int64_t pid = 0;
  std::string Summary() const;  // one line, e.g. "killed by SIGSEGV (Segmentation fault)"
};

// What Run throws on a worker death, so that the executor's invoke guard reports it like any
// fault (counted, logged, fault policy): the ExtensionPanic's type is
// "framekit::isolate::WorkerFault", its message the death's summary, and its one nested level
// the worker's stack.
class WorkerFault : public std::runtime_error, public std::nested_exception {
 public:
  explicit WorkerFault(WorkerDeath death);
  const WorkerDeath& death() const { return death_; }

 private:
  WorkerDeath death_;
};

// How one call runs.
struct CallOptions {
  // Reuse the worker for later calls of the same handler (see the file comment).
  bool reuse = false;
};

// Counters, exact.
struct PoolStats {
  std::uint64_t spawned = 0;         // workers started
  std::uint64_t spawn_failures = 0;  // starts that failed (exec error, no ready in time)
  std::uint64_t calls = 0;           // calls that got a worker
  std::uint64_t deaths = 0;          // calls whose worker died or misbehaved (faults)
  std::uint64_t deadline_kills = 0;  // workers killed at a deadline or cancellation
  std::uint64_t reaped = 0;          // worker processes waited for
  int live = 0;                      // worker processes now (spares, busy, idle)
  int spares = 0;                    // started workers ready for any call now
  // Start-up, from the request (posix_spawn, or the fork request to the zygote) to the worker's
  // ready message: the newest and the mean. A zygote's own start-up is not included.
  std::chrono::nanoseconds last_startup{};
  std::chrono::nanoseconds mean_startup{};
  std::uint64_t zygote_starts = 0;            // zygote processes started (1 unless one ended)
  std::int64_t zygote_pid = 0;                // the running zygote's pid; 0 when none runs
  std::chrono::nanoseconds zygote_startup{};  // the newest zygote's, posix_spawn to ready
};

// Thread-safety: thread-safe; any number of concurrent Calls.
class WorkerPool {
 public:
  // InvalidArgument for an empty executable or a bad bound. Starts the spawner thread, which
  // starts the spares in the background (Create does not wait for them).
  static absl::StatusOr<std::shared_ptr<WorkerPool>> Create(WorkerPoolOptions options);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Runs `handler` in a worker with `frame`'s portable pairs and remaining deadline, streaming
  // its output to `out`. Returns the handler's status (code and message), or
  //   Internal + ExtensionPanic (extension = handler, phase invoke)   the worker died or
  //                      misbehaved; `death`, when given, receives the record;
  //   DeadlineExceeded / Cancelled    the frame's deadline passed / scope was cancelled
  //                      (the worker was killed if it did not stop within cancel_grace);
  //   ResourceExhausted  no worker within the deadline or acquire_timeout, or the call or its
  //                      output is over the message bounds;
  //   Unavailable        the pool is shut down, or the executable cannot be started;
  //   the Sink's status when a Write failed (the worker is killed);
  //   NotFound           the worker has no such handler (from the worker).
  absl::Status Call(std::string_view handler, const Frame& frame, std::string_view payload,
                    dispatch::Sink& out, const CallOptions& options = {},
                    dispatch::RunStats* stats = nullptr, WorkerDeath* death = nullptr);

  // Refuses new calls, kills every worker (busy ones too: their calls return Unavailable) and
  // reaps them; joins the spawner. Idempotent.
  void Shutdown();

  PoolStats stats() const;
  // The pids of the worker processes alive now, for tests and diagnostics.
  std::vector<std::int64_t> worker_pids() const;

  struct State;  // internal

 private:
  explicit WorkerPool(std::shared_ptr<State> state);
  std::shared_ptr<State> state_;
};

struct IsolatedOptions {
  CallOptions call;
};

// `handler` of `pool` as dispatch::Code. preemptive(): true (Run returns by the deadline plus
// cancel_grace whatever the worker does, so the executor runs it on the caller's thread with no
// quarantine). Run returns WorkerPool::Call's status, except that a worker death is thrown as
// WorkerFault for the executor's invoke guard to report (see WorkerFault).
// NOTE: Run throws only that; call it under a guard (the executor does), or use
// WorkerPool::Call, which never throws. Returns nullptr for a null pool or an empty name.
std::shared_ptr<dispatch::Code> IsolatedCode(std::shared_ptr<WorkerPool> pool, std::string handler,
                                             IsolatedOptions options = {});

}  // namespace framekit::isolate

#endif  // FRAMEKIT_ISOLATE_POOL_H_
