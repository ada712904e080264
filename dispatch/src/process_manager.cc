#include "framekit/dispatch/process_manager.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/ctx/internal/status_macros.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/internal/call_identity.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "framekit/resolvers/internal/echo.h"

namespace framekit::dispatch {
namespace {

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
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

namespace {
absl::string_view StateView(ProcessState state) {
  const std::string_view name = ProcessStateName(state);
  return absl::string_view(name.data(), name.size());
}
}  // namespace

struct ProcessManager::Process {
  enum class Phase { kSetup, kLoop, kTeardown, kFinalize };

  // Immutable after Start.
  Pid pid = 0;
  ProcessSpec spec;
  Canceller canceller;
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
  std::uint64_t park_generation = 0;
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
      monitor_(options_.monitor != nullptr ? options_.monitor : &DefaultFaultMonitor()) {
  const int n = std::max(1, options_.workers);
  workers_.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ProcessManager::~ProcessManager() { Shutdown(); }

std::vector<std::string_view> ProcessManager::OwnOptionKeys(const ProcessManagerOptions& options) {
  std::vector<std::string_view> keys = {kCallerOption, kTraceIdOption};
  keys.insert(keys.end(), options.option_keys.begin(), options.option_keys.end());
  return keys;
}

std::shared_ptr<ProcessManager::Process> ProcessManager::Find(Pid pid) const {
  const auto it = processes_.find(pid);
  return it == processes_.end() ? nullptr : it->second;
}

absl::StatusOr<Pid> ProcessManager::Start(const Frame& parent, ProcessSpec spec,
                                          const Options& options) {
  if (!ValidName(spec.name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid process name \"", resolvers_internal::Echo(spec.name), "\""));
  }
  if (!spec.poll) {
    return absl::InvalidArgumentError(absl::StrCat("process \"", spec.name, "\" has no poll"));
  }
  if (spec.mailbox_capacity == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("process \"", spec.name, "\": mailbox_capacity is 0"));
  }
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
  if (process == nullptr) return absl::NotFoundError(absl::StrCat("no process ", pid));
  if (process->state == ProcessState::kStopping || process->state == ProcessState::kExited) {
    return absl::FailedPreconditionError(
        absl::StrCat("process ", pid, " is ", StateView(process->state)));
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
  ++process->park_generation;
  run_queue_.push_back(process);
  work_cv_.notify_one();
}

absl::Status ProcessManager::Stop(Pid pid, Clock::duration grace) {
  std::shared_ptr<Process> process;
  {
    std::lock_guard<std::mutex> lock(mu_);
    process = Find(pid);
    if (process == nullptr) return absl::NotFoundError(absl::StrCat("no process ", pid));
    if (process->state == ProcessState::kExited) return absl::OkStatus();
    process->state = ProcessState::kStopping;
  }
  process->canceller.Cancel();  // runs the process's stop callbacks: no lock held
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
  if (process == nullptr) return absl::NotFoundError(absl::StrCat("no process ", pid));
  if (!exit_cv_.wait_for(lock, timeout, [&] { return process->state == ProcessState::kExited; })) {
    return absl::DeadlineExceededError(
        absl::StrCat("process ", pid, " is still ", StateView(process->state)));
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (workers_stop_) return;
    shutting_down_ = true;
    for (const auto& [pid, process] : processes_) {
      if (process->state != ProcessState::kExited) {
        process->state = ProcessState::kStopping;
        live.push_back(process);
      }
    }
  }
  for (const auto& process : live) process->canceller.Cancel();
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (const auto& process : live) WakeLocked(process);
    exit_cv_.wait(lock, [&] { return live_ == 0; });
    workers_stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ProcessManager::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const Clock::time_point now = Clock::now();
    while (!timers_.empty() && timers_.top().at <= now) {
      Timer timer = timers_.top();
      timers_.pop();
      if (timer.process->parked && timer.process->park_generation == timer.generation) {
        WakeLocked(timer.process);
      }
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
      const Clock::time_point wake = timers_.top().at;
      work_cv_.wait_until(lock, wake);
    }
  }
}

void ProcessManager::RunStep(const std::shared_ptr<Process>& process) {
  Process& p = *process;
  const ExtRef ext(p.spec.name, *monitor_);
  const std::stop_token stop = p.context.stop_token();
  bool requeue = false;
  bool park = false;

  switch (p.phase) {
    case Process::Phase::kSetup: {
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
      requeue = true;
      break;
    }
    case Process::Phase::kLoop: {
      if (stop.stop_requested()) {
        p.phase = Process::Phase::kTeardown;
        requeue = true;
        break;
      }
      std::optional<ExtensionPanic> fault;
      const Step step = Guard(
          ext, Phase::kPoll, [&] { return p.spec.poll(p.context); },
          [&](FaultReport&& report) {
            fault = std::move(report.panic);
            return Step::kIdle;
          });
      if (fault) {
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++p.faults;
        }
        const FaultIntensity::Outcome outcome = p.poll_intensity.Record(monitor_->now());
        if (outcome.verdict != FaultVerdict::kContinue) {
          absl::Status reason = absl::AbortedError(absl::StrCat(
              "process \"", p.spec.name, "\" stopped: ", outcome.faults_in_window,
              " poll faults within ",
              std::chrono::duration_cast<std::chrono::milliseconds>(p.spec.poll_faults.window)
                  .count(),
              " ms; last: ", fault->type, ": ", fault->message));
          const absl::Status panic_status = PanicStatus(*fault);
          const absl::string_view url(kExtensionPanicUrl.data(), kExtensionPanicUrl.size());
          if (auto payload = panic_status.GetPayload(url)) reason.SetPayload(url, *payload);
          p.exit_reason = std::move(reason);
          p.phase = Process::Phase::kTeardown;
          requeue = true;
          break;
        }
      }
      if (step == Step::kDone) {
        p.exit_reason = absl::OkStatus();
        p.phase = Process::Phase::kTeardown;
        requeue = true;
      } else if (step == Step::kBusy) {
        requeue = true;
      } else {
        park = true;
      }
      break;
    }
    case Process::Phase::kTeardown:
    case Process::Phase::kFinalize: {
      if (p.phase == Process::Phase::kTeardown && p.setup_ok && p.spec.teardown) {
        CallTeardown(ext, [&] { p.spec.teardown(p.context); });
      }
      if (p.spec.finalize) CallFinalize(ext, p.pid, [&] { p.spec.finalize(p.context); });
      const bool stopped = stop.stop_requested();
      if (!stopped && !p.exit_reason.ok() && p.spec.restart == RestartPolicy::kOnFailure) {
        const FaultIntensity::Outcome outcome = p.restart_intensity.Record(Clock::now());
        if (outcome.verdict == FaultVerdict::kContinue) {
          p.poll_intensity.Reset();
          p.phase = Process::Phase::kSetup;
          p.setup_ok = false;
          ++p.context.restarts_;
          std::lock_guard<std::mutex> lock(mu_);
          ++p.restarts;
          p.state = ProcessState::kStarting;
          run_queue_.push_back(process);
          work_cv_.notify_one();
          return;
        }
        p.exit_reason = absl::Status(
            p.exit_reason.code(),
            absl::StrCat(
                p.exit_reason.message(), " [stays down: restart intensity of ", p.spec.max_restarts,
                " restarts within ",
                std::chrono::duration_cast<std::chrono::milliseconds>(p.spec.restart_window)
                    .count(),
                " ms reached]"));
      }
      std::lock_guard<std::mutex> lock(mu_);
      p.state = ProcessState::kExited;
      p.exit = stopped && p.exit_reason.ok() ? absl::OkStatus() : p.exit_reason;
      p.mailbox.clear();
      --live_;
      exit_cv_.notify_all();
      return;
    }
  }

  std::lock_guard<std::mutex> lock(mu_);
  if (park && p.mailbox.empty() && !stop.stop_requested()) {
    p.parked = true;
    ++p.park_generation;
    timers_.push({Clock::now() + p.spec.idle_interval, p.park_generation, process});
    work_cv_.notify_one();  // a sleeping worker may need the earlier timer
    return;
  }
  if (requeue || park) {
    run_queue_.push_back(process);
    work_cv_.notify_one();
  }
}

}  // namespace framekit::dispatch
