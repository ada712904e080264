// ProcessManager: long-lived extension processes (actors) on a bounded pool of worker threads.
//
// Start forks the caller's frame and applies the AppContext's FrameResolvers generically, as
// FunctionExecutor does: a process finds every resolver's pair on ctx.frame(), and a failing
// resolver (or interceptor) means the process never starts. A process then lives through
//   setup     under CallSetup: an error or a fault (ExtensionPanic) is a failed start;
//   poll      one step at a time under the poll guard: a fault is counted, logged (rate-limited
//             by the FaultMonitor) and the loop goes on, until `poll_faults` (K within T) stops
//             the process with that reason;
//   teardown  under CallTeardown (faults logged and swallowed), skipped after a failed setup;
//   finalize  under CallFinalize (faults logged and swallowed), always.
// Steps are scheduled on the manager's workers: an idle process holds no thread, and a parked
// process holds exactly one timer, so the timer queue is bounded by the live processes. A
// process that exits with an error is restarted when its spec says so, at most `max_restarts`
// times within `restart_window`; past that it stays down with its last error.
// At exit a process's callbacks (setup, poll, teardown, finalize) are destroyed, releasing what
// they captured, and its mailbox and frame are dropped; only its pid, name, counters and exit
// status stay, for the last `retain_exited` exits. Older exits are reaped: Wait, Stop and Send
// then fail with NotFound ("process N exited and was reaped"), and List no longer shows them.
//
// clang-format off
// Example:
// clang-format off
//   FRAMEKIT_ASSIGN_OR_RETURN(std::unique_ptr<framekit::dispatch::ProcessManager> manager,
//                             framekit::dispatch::ProcessManager::Create(app, {.workers = 4}));
//   framekit::dispatch::ProcessSpec spec;
//   spec.name = "echo";
//   spec.poll = [](framekit::dispatch::ProcessContext& ctx) {
//     std::optional<std::string> message = ctx.Receive();
//     if (!message) return framekit::dispatch::Step::kIdle;
//     Handle(ctx.frame(), *message);
//     return framekit::dispatch::Step::kBusy;
//   };
//   FRAMEKIT_ASSIGN_OR_RETURN(framekit::dispatch::Pid pid,
//                             manager->Start(parent, spec, {{"tenant", "acme"}}));
//   FRAMEKIT_RETURN_IF_ERROR(manager->Send(pid, "hello"));
//   FRAMEKIT_RETURN_IF_ERROR(manager->Stop(pid, std::chrono::seconds(1)));
// clang-format on
#ifndef FRAMEKIT_DISPATCH_PROCESS_MANAGER_H_
#define FRAMEKIT_DISPATCH_PROCESS_MANAGER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/fault_policy.h"
#include "framekit/dispatch/interceptors.h"

namespace framekit::dispatch {

using Pid = std::uint64_t;

// What one poll did. kIdle is also what a faulted poll counts as.
enum class Step {
  kIdle,  // nothing to do: park until a message, a stop or `idle_interval`
  kBusy,  // did work: poll again as soon as a worker is free
  kDone,  // finished: teardown, finalize, exit OK
};

enum class RestartPolicy { kNever, kOnFailure };

enum class ProcessState { kStarting, kRunning, kStopping, kExited };
// "starting", "running", "stopping", "exited".
std::string_view ProcessStateName(ProcessState state);

class ExtRef;  // framekit/dispatch/guard.h
class ProcessManager;

// What a process's lifecycle functions see. Valid only inside them.
// Thread-safety: used by one lifecycle call at a time (a process never runs two steps at once).
class ProcessContext {
 public:
  Pid pid() const { return pid_; }
  // The process's frame: forked from Start's parent, resolved, cancellable.
  const Frame& frame() const { return frame_; }
  // Stopped by Stop(), by Shutdown() and when the parent frame's scope is cancelled.
  // NOTE: a parked (idle) process notices a parent cancellation at its next poll, at most
  // `idle_interval` later; Stop and Shutdown wake it at once.
  std::stop_token stop_token() const { return frame_.stop_token(); }
  // The oldest mailbox message, or nullopt when the mailbox is empty. Never blocks.
  std::optional<std::string> Receive();
  // How many times this process was restarted.
  int restarts() const { return restarts_; }

 private:
  friend class ProcessManager;
  ProcessManager* manager_ = nullptr;
  void* process_ = nullptr;
  Pid pid_ = 0;
  Frame frame_;
  int restarts_ = 0;
};

// How to run one process. Lifecycle functions run on the manager's workers, one at a time per
// process; they may throw (every phase is guarded).
// Re-entrancy: they may call any ProcessManager method except Wait/Stop on their own pid (which
// would wait for themselves) and Shutdown.
struct ProcessSpec {
  // 1-128 of [A-Za-z0-9_.-], starting with a letter or digit (the grammar the executor uses
  // too); also the extension name faults are reported under.
  std::string name;
  // Copied into the manager at Start; destroyed when the process exits (after finalize).
  std::function<absl::Status(ProcessContext&)> setup = nullptr;  // optional
  std::function<Step(ProcessContext&)> poll = nullptr;           // required
  std::function<void(ProcessContext&)> teardown = nullptr;       // optional
  std::function<void(ProcessContext&)> finalize = nullptr;       // optional
  // Send fails with ResourceExhausted when this many messages are waiting.
  std::size_t mailbox_capacity = 64;
  // How long a kIdle poll parks the process when no message or stop arrives. Must be positive:
  // Start refuses 0 or less (it would poll in a busy loop).
  std::chrono::milliseconds idle_interval{10};
  // K poll faults within T stop the process (any verdict but kContinue stops it). A negative
  // window is refused at Start; max_faults <= 0 never stops it (see FaultPolicy).
  FaultPolicy poll_faults = {
      .max_faults = 5, .window = std::chrono::seconds(10), .on_trip = FaultVerdict::kEvict};
  RestartPolicy restart = RestartPolicy::kNever;
  // At most this many restarts within `restart_window`; then the process stays down. Start
  // refuses a negative max_restarts or restart_window.
  int max_restarts = 3;
  std::chrono::nanoseconds restart_window = std::chrono::seconds(60);
};

// How a process ended, as Wait returns it.
struct ProcessExit {
  absl::Status status;  // the exit status: see Wait
  int restarts = 0;     // restarts before this final exit
};

// One process, as List shows it.
struct ProcessInfo {
  Pid pid = 0;
  std::string name;
  ProcessState state = ProcessState::kStarting;
  Clock::time_point started{};
  std::uint64_t faults = 0;  // poll faults over the process's life
  int restarts = 0;
  absl::Status exit;  // meaningful once kExited
};

// Checked by ProcessManager::Create (InvalidArgument); the constructor clamps instead.
struct ProcessManagerOptions {
  // Worker threads; every process step runs on one of them. 1..ProcessManager::kMaxWorkers.
  int workers = 4;
  // Run on Start around admission (CallKind::kStart): a refusal means the process never starts.
  std::shared_ptr<const Interceptors> interceptors = nullptr;
  // Receives faults; nullptr: DefaultFaultMonitor(). Must outlive the manager.
  FaultMonitor* monitor = nullptr;
  // How many exited processes are kept for Wait, Stop and List, newest first; older exits are
  // reaped (NotFound). 0 reaps at exit: only a Wait already waiting sees the exit status.
  std::size_t retain_exited = 64;
  // Processes alive at once (started and not yet exited), > 0: Start fails with
  // ResourceExhausted beyond it, so that a process that starts processes (or a caller that
  // never stops them) cannot grow the host without bound. A process costs about 3 KiB here plus
  // what its spec captures.
  std::size_t max_processes = 10000;
  // As FunctionExecutorOptions: whether a "caller" option may name the caller of a process
  // whose frame has none (off: a caller on the frame always wins, an option never replaces it).
  bool allow_caller_option = false;
  // As FunctionExecutorOptions: the opt-out of strict options, and the option keys the
  // interceptors read.
  bool allow_undeclared_options = false;
  std::vector<std::string> option_keys = {};
};

// Thread-safety: thread-safe. Lifecycle code, and the destructors of what a spec captured,
// never run under the manager's lock.
// NOTE: only the last `retain_exited` exited processes are kept; see the file comment.
class ProcessManager {
 public:
  static constexpr int kMaxWorkers = 1024;

  // `app` supplies the FrameResolvers and must outlive the manager. Options out of range are
  // clamped (workers to [1, kMaxWorkers], max_processes to at least 1); use Create to have them
  // refused instead.
  explicit ProcessManager(const AppContext& app, ProcessManagerOptions options = {});
  // As the constructor, but InvalidArgument (naming the field) for options out of range.
  static absl::StatusOr<std::unique_ptr<ProcessManager>> Create(const AppContext& app,
                                                                ProcessManagerOptions options = {});
  // OK, or the InvalidArgument Create would return for `options`.
  static absl::Status Validate(const ProcessManagerOptions& options);
  // Shutdown().
  ~ProcessManager();
  ProcessManager(const ProcessManager&) = delete;
  ProcessManager& operator=(const ProcessManager&) = delete;

  // Starts `spec` with `options` and returns its pid; setup runs asynchronously (its failure
  // is the exit status Wait returns). Options are read as FunctionExecutor reads them: strict
  // (an option no registered resolver declares, and that is not "caller" or "trace_id" or one
  // of option_keys, is InvalidArgument, IsUndeclaredOption), with "caller" and "trace_id"
  // checked and attached as the executor does (kCallerOption, kTraceIdOption). Fails, and
  // nothing starts (setup never runs), with InvalidArgument for a bad spec (name outside the
  // grammar, no poll, mailbox_capacity 0, idle_interval <= 0, negative max_restarts or windows)
  // or option, PermissionDenied for a "caller" option, DeadlineExceeded when `parent`'s deadline
  // has passed, Cancelled when `parent`'s scope is cancelled, the resolver's error
  // (`frame resolver "NAME": ...`), an interceptor's status, ResourceExhausted when
  // `max_processes` are alive, or FailedPrecondition after Shutdown().
  absl::StatusOr<Pid> Start(const Frame& parent, ProcessSpec spec, const Options& options = {});
  // Queues `message`. NotFound for an unknown or reaped pid; FailedPrecondition once the process is
  // stopping or exited; ResourceExhausted when the mailbox is full (never a silent drop).
  absl::Status Send(Pid pid, std::string message);
  // Cancels the process's frame (its stop token fires) and waits up to `grace` for it to exit.
  // OK when it exited in time (or had already); DeadlineExceeded when it overran `grace` (it
  // still exits when its current step returns); NotFound for an unknown or reaped pid.
  // NOTE: from a process's own lifecycle function, use a zero grace: it cannot exit while the
  // call that waits for it is running.
  absl::Status Stop(Pid pid, Clock::duration grace);
  // Waits up to `timeout` for the process to exit and returns how it ended. Its status is OK
  // after kDone or a Stop, setup's error (an ExtensionPanic when setup threw), or Aborted
  // carrying the last ExtensionPanic when poll faults reached the spec's policy. Fails with
  // NotFound for an unknown or reaped pid (a Wait already waiting when the process exits gets
  // its exit even if it is reaped), DeadlineExceeded when it is still running at the timeout.
  absl::StatusOr<ProcessExit> Wait(Pid pid, Clock::duration timeout);
  // Every live process and the retained exited ones, by pid.
  std::vector<ProcessInfo> List() const;
  // Stops every process, waits for them to exit, joins every worker. Idempotent.
  // From a lifecycle function it cannot wait for itself: there it stops every process and
  // refuses new ones, then returns at once; the destructor (or a Shutdown on another thread)
  // waits and joins.
  // NOTE: blocks while a lifecycle function ignores its stop token.
  void Shutdown();

  // Entries in the process table: live processes plus at most `retain_exited` exited ones.
  std::size_t process_count() const;
  // Pending park timers: at most one per parked process.
  std::size_t timer_count() const;
  // Worker threads running (after clamping).
  int workers() const { return static_cast<int>(workers_.size()); }

 private:
  friend class ProcessContext;
  struct Process;
  using TimerQueue = std::multimap<Clock::time_point, std::shared_ptr<Process>>;

  void WorkerLoop();
  // What a poll step leaves the process to do next.
  enum class StepNext { kRequeue, kPark };

  // RunStep runs the current phase with no lock held; each helper below is one phase, or one
  // locked section of it.
  void RunStep(const std::shared_ptr<Process>& process);
  // kSetup: runs setup; on success the process is kRunning and moves to kLoop, else kFinalize.
  void RunSetup(Process& p, const ExtRef& ext);
  // kLoop: one poll (or the move to kTeardown once stopped); a fault is counted and may stop it.
  StepNext RunPoll(Process& p, const ExtRef& ext, const std::stop_token& stop);
  // Counts a poll fault (under mu_) and records it against the poll-fault policy (outside it).
  FaultIntensity::Outcome CountPollFault(Process& p);
  // kTeardown/kFinalize: teardown, finalize, then a restart or ExitProcess.
  void RunExitPhases(const std::shared_ptr<Process>& process, const ExtRef& ext,
                     const std::stop_token& stop);
  // True when the restart policy allows another run: the process is back at kSetup and queued.
  // False (exit_reason annotated) when the restart intensity was reached.
  bool TryRestart(const std::shared_ptr<Process>& process);
  // Under mu_: parks the process (a timer) or queues its next step.
  void Reschedule(const std::shared_ptr<Process>& process, StepNext next,
                  const std::stop_token& stop);
  void WakeLocked(const std::shared_ptr<Process>& process) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<Process> Find(Pid pid) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status NotFoundLocked(Pid pid) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExitProcess(const std::shared_ptr<Process>& process, bool stopped);
  static absl::Status CheckParent(const Frame& parent, std::string_view name);

  const AppContext& app_;
  const ProcessManagerOptions options_;
  FaultMonitor* const monitor_;
  const std::size_t max_processes_;  // options_.max_processes, at least 1

  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // a step is runnable, a timer is due, or stopping
  std::condition_variable exit_cv_;  // a process exited
  std::map<Pid, std::shared_ptr<Process>> processes_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Process>> run_queue_ ABSL_GUARDED_BY(mu_);
  TimerQueue timers_ ABSL_GUARDED_BY(mu_);       // parked processes by wake-up time
  std::deque<Pid> exited_ ABSL_GUARDED_BY(mu_);  // retained exits, oldest first
  Pid next_pid_ ABSL_GUARDED_BY(mu_) = 1;
  int live_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool workers_stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
  // The keys strict options accept besides the resolvers': the manager's and options_'s.
  const std::vector<std::string_view> own_option_keys_ = OwnOptionKeys(options_);
  static std::vector<std::string_view> OwnOptionKeys(const ProcessManagerOptions& options);
};

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_PROCESS_MANAGER_H_
