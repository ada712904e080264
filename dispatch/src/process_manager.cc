#include "framekit/dispatch/process_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/base/internal/name.h"
#include "framekit/base/internal/strings.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/internal/call_identity.h"
#include "framekit/resolvers/frame_resolvers.h"

namespace framekit::dispatch {
namespace {

// The manager whose worker the current thread is, if any: Shutdown from a lifecycle function
// must not wait for the step it runs in.
thread_local const ProcessManager* tls_worker_of = nullptr;

using base_internal::AsAbsl;
using base_internal::IsValidName;

std::int64_t Millis(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

// The spec fields Start checks beyond name and poll: each would make a process spin, or make
// its restart and fault limits meaningless.
absl::Status ValidateSpecLimits(const ProcessSpec& spec) {
  const auto invalid = [&](std::string_view field, auto&&... why) {
    return absl::InvalidArgumentError(
        absl::StrCat("process \"", spec.name, "\": ", absl::string_view(field.data(), field.size()),
                     " ", why...));
  };
  if (spec.mailbox_capacity == 0) return invalid("mailbox_capacity", "is 0");
  if (spec.idle_interval <= std::chrono::milliseconds(0)) {
    return invalid("idle_interval", "must be positive, is ", spec.idle_interval.count(), " ms");
  }
  if (spec.max_restarts < 0) {
    return invalid("max_restarts", "must not be negative, is ", spec.max_restarts);
  }
  if (spec.restart_window < std::chrono::nanoseconds(0)) {
    return invalid("restart_window", "must not be negative, is ", Millis(spec.restart_window),
                   " ms");
  }
  if (spec.poll_faults.window < std::chrono::nanoseconds(0)) {
    return invalid("poll_faults.window", "must not be negative, is ",
                   Millis(spec.poll_faults.window), " ms");
  }
  return absl::OkStatus();
}

// The exit status of a process stopped by its poll-fault policy: Aborted, carrying the last
// fault's ExtensionPanic payload.
absl::Status PollFaultsReason(const ProcessSpec& spec, const FaultIntensity::Outcome& outcome,
                              const ExtensionPanic& fault) {
  absl::Status reason = absl::AbortedError(absl::StrCat(
      "process \"", spec.name, "\" stopped: ", outcome.faults_in_window, " poll faults within ",
      std::chrono::duration_cast<std::chrono::milliseconds>(spec.poll_faults.window).count(),
      " ms; last: ", fault.type, ": ", fault.message));
  const absl::Status panic_status = PanicStatus(fault);
  const absl::string_view url(kExtensionPanicUrl.data(), kExtensionPanicUrl.size());
  if (auto payload = panic_status.GetPayload(url)) reason.SetPayload(url, *payload);
  return reason;
}

// `exit_reason` annotated for a process that stays down: its restart intensity was reached.
absl::Status RestartLimitReason(const ProcessSpec& spec, const absl::Status& exit_reason) {
  return absl::Status(
      exit_reason.code(),
      absl::StrCat(
          exit_reason.message(), " [stays down: restart intensity of ", spec.max_restarts,
          " restarts within ",
          std::chrono::duration_cast<std::chrono::milliseconds>(spec.restart_window).count(),
          " ms reached]"));
}

}  // namespace

std::string_view ProcessStateName(ProcessState state) {
  switch (state) {
    case ProcessState::kStarting:
      return "starting";
    case ProcessState::kRunning:
      return "running";
    case ProcessState::kStopping:
      return "stopping";
    case ProcessState::kExited:
      return "exited";
  }
  return "unknown";
}

struct ProcessManager::Process {
  enum class Phase { kSetup, kLoop, kTeardown, kFinalize };

  // Immutable after Start.
  Pid pid = 0;
  ProcessSpec spec;     // its callbacks are released at exit (ReleaseAtExit)
  Canceller canceller;  // guarded by mu_: reset at exit
  Clock::time_point started{};

  // Touched only by the worker running the process's current step (one at a time).
  ProcessContext context;
  Phase phase = Phase::kSetup;
  bool setup_ok = false;
  absl::Status exit_reason;
  FaultIntensity poll_intensity;
  FaultIntensity restart_intensity;

  // Guarded by the manager's mu_.
  ProcessState state = ProcessState::kStarting;
  std::deque<std::string> mailbox;
  bool parked = false;
  std::optional<TimerQueue::iterator> timer;  // set while parked with a wake-up pending
  std::uint64_t faults = 0;
  int restarts = 0;
  absl::Status exit;
};

std::optional<std::string> ProcessContext::Receive() {
  auto* process = static_cast<ProcessManager::Process*>(process_);
  std::lock_guard<std::mutex> lock(manager_->mu_);
  if (process->mailbox.empty()) return std::nullopt;
  std::string message = std::move(process->mailbox.front());
  process->mailbox.pop_front();
  return message;
}

ProcessManager::ProcessManager(const AppContext& app, ProcessManagerOptions options)
    : app_(app),
      options_(std::move(options)),
      monitor_(options_.monitor != nullptr ? options_.monitor : &DefaultFaultMonitor()),
      max_processes_(std::max<std::size_t>(options_.max_processes, 1)) {
  const int n = std::clamp(options_.workers, 1, kMaxWorkers);
  workers_.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ProcessManager::~ProcessManager() { Shutdown(); }

absl::Status ProcessManager::Validate(const ProcessManagerOptions& options) {
  if (options.workers < 1 || options.workers > kMaxWorkers) {
    return absl::InvalidArgumentError(absl::StrCat("process manager: workers must be in [1, ",
                                                   kMaxWorkers, "], is ", options.workers));
  }
  if (options.max_processes == 0) {
    return absl::InvalidArgumentError("process manager: max_processes must be > 0, is 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ProcessManager>> ProcessManager::Create(
    const AppContext& app, ProcessManagerOptions options) {
  if (absl::Status status = Validate(options); !status.ok()) return status;
  return std::make_unique<ProcessManager>(app, std::move(options));
}

std::size_t ProcessManager::process_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return processes_.size();
}

std::size_t ProcessManager::timer_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return timers_.size();
}

std::vector<std::string_view> ProcessManager::OwnOptionKeys(const ProcessManagerOptions& options) {
  std::vector<std::string_view> keys = {kCallerOption, kTraceIdOption};
  keys.insert(keys.end(), options.option_keys.begin(), options.option_keys.end());
  return keys;
}

std::shared_ptr<ProcessManager::Process> ProcessManager::Find(Pid pid) const {
  const auto it = processes_.find(pid);
  return it == processes_.end() ? nullptr : it->second;
}

absl::Status ProcessManager::NotFoundLocked(Pid pid) const {
  if (pid != 0 && pid < next_pid_) {
    return absl::NotFoundError(absl::StrCat("process ", pid,
                                            " exited and was reaped (the manager keeps the last ",
                                            options_.retain_exited, " exited processes)"));
  }
  return absl::NotFoundError(absl::StrCat("no process ", pid));
}

absl::Status ProcessManager::CheckParent(const Frame& parent, std::string_view name) {
  if (const std::optional<Deadline> deadline = parent.deadline();
      deadline.has_value() && *deadline <= Clock::now()) {
    return absl::DeadlineExceededError(
        absl::StrCat("process \"", absl::string_view(name.data(), name.size()),
                     "\" not started: the parent frame's deadline has passed"));
  }
  if (parent.cancelled()) {
    return absl::CancelledError(absl::StrCat("process \"",
                                             absl::string_view(name.data(), name.size()),
                                             "\" not started: the parent frame is cancelled"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Pid> ProcessManager::Start(const Frame& parent, ProcessSpec spec,
                                          const Options& options) {
  if (!IsValidName(spec.name)) {
    return absl::InvalidArgumentError(base_internal::InvalidNameMessage("process", spec.name));
  }
  if (!spec.poll) {
    return absl::InvalidArgumentError(absl::StrCat("process \"", spec.name, "\" has no poll"));
  }
  if (absl::Status status = ValidateSpecLimits(spec); !status.ok()) return status;
  if (absl::Status status = CheckParent(parent, spec.name); !status.ok()) return status;
  Frame frame = parent.Fork();
  {
    if (!options_.allow_undeclared_options) {
      FRAMEKIT_RETURN_IF_ERROR(
          framekit::CheckOptions(app_.frame_resolvers(), options, own_option_keys_));
    }
    dispatch_internal::CallIdentity identity;
    FRAMEKIT_RETURN_IF_ERROR(dispatch_internal::ReadCallIdentity(
        frame, options, options_.allow_caller_option, identity));
    PairList pairs;
    absl::Status status = framekit::Resolve(app_.frame_resolvers(), frame, options, pairs);
    if (status.ok()) status = dispatch_internal::AppendCallIdentity(identity, pairs);
    if (!status.ok()) return status;
    if (!pairs.empty()) frame = frame.With(pairs);
  }
  auto [process_frame, canceller] = frame.WithCancel();
  Call call{.kind = CallKind::kStart,
            .target = spec.name,
            .frame = std::move(process_frame),
            .options = &options,
            .payload = {}};
  absl::Status admitted =
      RunInterceptors(options_.interceptors.get(), call, [](Call&) { return absl::OkStatus(); });
  if (!admitted.ok()) return admitted;

  auto process = std::make_shared<Process>();
  process->spec = std::move(spec);
  process->canceller = canceller;
  process->started = Clock::now();
  process->poll_intensity = FaultIntensity(process->spec.poll_faults);
  process->restart_intensity = FaultIntensity({.max_faults = process->spec.max_restarts + 1,
                                               .window = process->spec.restart_window,
                                               .on_trip = FaultVerdict::kEvict});
  process->context.manager_ = this;
  process->context.process_ = process.get();
  process->context.frame_ = std::move(call.frame);

  std::lock_guard<std::mutex> lock(mu_);
  if (shutting_down_) {
    return absl::FailedPreconditionError("process manager is shutting down");
  }
  // `process` (and what its spec captured) is destroyed after the lock is released.
  if (static_cast<std::size_t>(live_) >= max_processes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("process \"", process->spec.name, "\" not started: ", live_,
                     " processes are alive (max_processes ", max_processes_, ")"));
  }
  process->pid = next_pid_++;
  process->context.pid_ = process->pid;
  processes_.emplace(process->pid, process);
  ++live_;
  run_queue_.push_back(process);
  work_cv_.notify_one();
  return process->pid;
}

absl::Status ProcessManager::Send(Pid pid, std::string message) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<Process> process = Find(pid);
  if (process == nullptr) return NotFoundLocked(pid);
  if (process->state == ProcessState::kStopping || process->state == ProcessState::kExited) {
    return absl::FailedPreconditionError(
        absl::StrCat("process ", pid, " is ", AsAbsl(ProcessStateName(process->state))));
  }
  if (process->mailbox.size() >= process->spec.mailbox_capacity) {
    return absl::ResourceExhaustedError(
        absl::StrCat("process ", pid, " mailbox is full (", process->spec.mailbox_capacity, ")"));
  }
  process->mailbox.push_back(std::move(message));
  WakeLocked(process);
  return absl::OkStatus();
}

void ProcessManager::WakeLocked(const std::shared_ptr<Process>& process) {
  if (!process->parked) return;
  process->parked = false;
  if (process->timer.has_value()) {
    timers_.erase(*process->timer);
    process->timer.reset();
  }
  run_queue_.push_back(process);
  work_cv_.notify_one();
}

absl::Status ProcessManager::Stop(Pid pid, Clock::duration grace) {
  std::shared_ptr<Process> process;
  Canceller canceller;
  {
    std::lock_guard<std::mutex> lock(mu_);
    process = Find(pid);
    if (process == nullptr) return NotFoundLocked(pid);
    if (process->state == ProcessState::kExited) return absl::OkStatus();
    process->state = ProcessState::kStopping;
    canceller = process->canceller;
  }
  canceller.Cancel();  // runs the process's stop callbacks: no lock held
  std::unique_lock<std::mutex> lock(mu_);
  WakeLocked(process);
  if (exit_cv_.wait_for(lock, grace, [&] { return process->state == ProcessState::kExited; })) {
    return absl::OkStatus();
  }
  return absl::DeadlineExceededError(
      absl::StrCat("process ", pid, " (\"", process->spec.name, "\") overran its stop grace of ",
                   std::chrono::duration_cast<std::chrono::milliseconds>(grace).count(),
                   " ms; it exits when its current step returns"));
}

absl::StatusOr<ProcessExit> ProcessManager::Wait(Pid pid, Clock::duration timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  std::shared_ptr<Process> process = Find(pid);
  if (process == nullptr) return NotFoundLocked(pid);
  if (!exit_cv_.wait_for(lock, timeout, [&] { return process->state == ProcessState::kExited; })) {
    return absl::DeadlineExceededError(
        absl::StrCat("process ", pid, " is still ", AsAbsl(ProcessStateName(process->state))));
  }
  return ProcessExit{.status = process->exit, .restarts = process->restarts};
}

std::vector<ProcessInfo> ProcessManager::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ProcessInfo> out;
  out.reserve(processes_.size());
  for (const auto& [pid, process] : processes_) {
    out.push_back({.pid = pid,
                   .name = process->spec.name,
                   .state = process->state,
                   .started = process->started,
                   .faults = process->faults,
                   .restarts = process->restarts,
                   .exit = process->exit});
  }
  return out;
}

void ProcessManager::Shutdown() {
  std::vector<std::shared_ptr<Process>> live;
  std::vector<Canceller> cancellers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (workers_stop_) return;
    shutting_down_ = true;
    for (const auto& [pid, process] : processes_) {
      if (process->state != ProcessState::kExited) {
        process->state = ProcessState::kStopping;
        live.push_back(process);
        cancellers.push_back(process->canceller);
      }
    }
  }
  for (const Canceller& canceller : cancellers) canceller.Cancel();
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (const auto& process : live) WakeLocked(process);
    // A lifecycle function cannot wait for its own process to exit: the processes are stopped,
    // and the destructor (or a Shutdown on another thread) waits and joins.
    if (tls_worker_of == this) return;
    exit_cv_.wait(lock, [&] { return live_ == 0; });
    workers_stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ProcessManager::WorkerLoop() {
  tls_worker_of = this;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const Clock::time_point now = Clock::now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      const std::shared_ptr<Process> process = timers_.begin()->second;
      WakeLocked(process);  // erases the timer: a parked process has exactly one
    }
    if (!run_queue_.empty()) {
      std::shared_ptr<Process> process = std::move(run_queue_.front());
      run_queue_.pop_front();
      lock.unlock();
      RunStep(process);
      process.reset();
      lock.lock();
      continue;
    }
    if (workers_stop_) return;
    if (timers_.empty()) {
      work_cv_.wait(lock);
    } else {
      // A copy: wait_until reads its deadline again after waking, by which time a push may have
      // reallocated the queue the reference pointed into.
      const Clock::time_point wake = timers_.begin()->first;
      work_cv_.wait_until(lock, wake);
    }
  }
}

void ProcessManager::ExitProcess(const std::shared_ptr<Process>& process, bool stopped) {
  Process& p = *process;
  // What the process captured is released now, not when the manager goes, and before the exit
  // is published: a Wait that returns finds it released. Destroyed with no lock held, since
  // their destructors are user code.
  {
    auto setup = std::exchange(p.spec.setup, nullptr);
    auto poll = std::exchange(p.spec.poll, nullptr);
    auto teardown = std::exchange(p.spec.teardown, nullptr);
    auto finalize = std::exchange(p.spec.finalize, nullptr);
    Frame frame = std::exchange(p.context.frame_, Frame());
  }
  Canceller canceller;
  std::deque<std::string> mailbox;
  std::vector<std::shared_ptr<Process>> reaped;
  std::lock_guard<std::mutex> lock(mu_);
  p.state = ProcessState::kExited;
  p.exit = stopped && p.exit_reason.ok() ? absl::OkStatus() : p.exit_reason;
  p.exit_reason = absl::OkStatus();
  mailbox.swap(p.mailbox);
  std::swap(canceller, p.canceller);
  --live_;
  exited_.push_back(p.pid);
  while (exited_.size() > options_.retain_exited) {
    const auto it = processes_.find(exited_.front());
    if (it != processes_.end()) {
      reaped.push_back(std::move(it->second));
      processes_.erase(it);
    }
    exited_.pop_front();
  }
  exit_cv_.notify_all();
  // `lock` is released before the locals above are destroyed (reverse declaration order).
}

// One step of `process`: the current phase's lifecycle call, then the process is requeued,
// parked, restarted or exited. Lifecycle calls run with no lock held.
void ProcessManager::RunStep(const std::shared_ptr<Process>& process) {
  Process& p = *process;
  const ExtRef ext(p.spec.name, *monitor_);
  const std::stop_token stop = p.context.stop_token();
  switch (p.phase) {
    case Process::Phase::kSetup:
      RunSetup(p, ext);
      Reschedule(process, StepNext::kRequeue, stop);
      return;
    case Process::Phase::kLoop:
      Reschedule(process, RunPoll(p, ext, stop), stop);
      return;
    case Process::Phase::kTeardown:
    case Process::Phase::kFinalize:
      RunExitPhases(process, ext, stop);
      return;
  }
}

void ProcessManager::RunSetup(Process& p, const ExtRef& ext) {
  absl::Status status =
      p.spec.setup ? CallSetup(ext, [&] { return p.spec.setup(p.context); }) : absl::OkStatus();
  if (status.ok()) {
    p.setup_ok = true;
    p.phase = Process::Phase::kLoop;
    std::lock_guard<std::mutex> lock(mu_);
    if (p.state == ProcessState::kStarting) p.state = ProcessState::kRunning;
  } else {
    p.setup_ok = false;
    p.exit_reason = std::move(status);
    p.phase = Process::Phase::kFinalize;
  }
}

ProcessManager::StepNext ProcessManager::RunPoll(Process& p, const ExtRef& ext,
                                                 const std::stop_token& stop) {
  if (stop.stop_requested()) {
    p.phase = Process::Phase::kTeardown;
    return StepNext::kRequeue;
  }
  std::optional<ExtensionPanic> fault;
  const Step step = Guard(
      ext, Phase::kPoll, [&] { return p.spec.poll(p.context); },
      [&](FaultReport&& report) {
        fault = std::move(report.panic);
        return Step::kIdle;
      });
  if (fault) {
    const FaultIntensity::Outcome outcome = CountPollFault(p);
    if (outcome.verdict != FaultVerdict::kContinue) {
      p.exit_reason = PollFaultsReason(p.spec, outcome, *fault);
      p.phase = Process::Phase::kTeardown;
      return StepNext::kRequeue;
    }
  }
  if (step == Step::kDone) {
    p.exit_reason = absl::OkStatus();
    p.phase = Process::Phase::kTeardown;
    return StepNext::kRequeue;
  }
  return step == Step::kBusy ? StepNext::kRequeue : StepNext::kPark;
}

FaultIntensity::Outcome ProcessManager::CountPollFault(Process& p) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++p.faults;
  }
  return p.poll_intensity.Record(monitor_->now());
}

void ProcessManager::RunExitPhases(const std::shared_ptr<Process>& process, const ExtRef& ext,
                                   const std::stop_token& stop) {
  Process& p = *process;
  if (p.phase == Process::Phase::kTeardown && p.setup_ok && p.spec.teardown) {
    CallTeardown(ext, [&] { p.spec.teardown(p.context); });
  }
  if (p.spec.finalize) CallFinalize(ext, p.pid, [&] { p.spec.finalize(p.context); });
  const bool stopped = stop.stop_requested();
  if (!stopped && !p.exit_reason.ok() && p.spec.restart == RestartPolicy::kOnFailure) {
    if (TryRestart(process)) return;
  }
  ExitProcess(process, stopped);
}

bool ProcessManager::TryRestart(const std::shared_ptr<Process>& process) {
  Process& p = *process;
  const FaultIntensity::Outcome outcome = p.restart_intensity.Record(Clock::now());
  if (outcome.verdict != FaultVerdict::kContinue) {
    p.exit_reason = RestartLimitReason(p.spec, p.exit_reason);
    return false;
  }
  p.poll_intensity.Reset();
  p.phase = Process::Phase::kSetup;
  p.setup_ok = false;
  ++p.context.restarts_;
  std::lock_guard<std::mutex> lock(mu_);
  ++p.restarts;
  p.state = ProcessState::kStarting;
  run_queue_.push_back(process);
  work_cv_.notify_one();
  return true;
}

void ProcessManager::Reschedule(const std::shared_ptr<Process>& process, StepNext next,
                                const std::stop_token& stop) {
  Process& p = *process;
  std::lock_guard<std::mutex> lock(mu_);
  if (next == StepNext::kPark && p.mailbox.empty() && !stop.stop_requested()) {
    p.parked = true;
    p.timer = timers_.emplace(DeadlineAfter(Clock::now(), p.spec.idle_interval), process);
    work_cv_.notify_one();  // a sleeping worker may need the earlier timer
    return;
  }
  run_queue_.push_back(process);
  work_cv_.notify_one();
}

}  // namespace framekit::dispatch
