#include "framekit/dispatch/function_executor.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <optional>
#include <stop_token>
#include <thread>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/internal/status_macros.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/internal/call_identity.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "framekit/resolvers/internal/echo.h"

namespace framekit::dispatch {
namespace {

inline constexpr std::size_t kListedInvocations = 100;

absl::string_view AbslView(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool ValidName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(name[0])) return false;
  return std::all_of(name.begin(), name.end(),
                     [&](char c) { return alnum(c) || c == '_' || c == '.' || c == '-'; });
}

int LatencyBucket(std::chrono::nanoseconds latency) {
  for (int i = 0; i < kLatencyBuckets - 1; ++i) {
    if (latency <= LatencyBucketBound(i)) return i;
  }
  return kLatencyBuckets - 1;
}

// Collects a plain Invoke's output.
// A status split into plain strings, so that the thread that made it and the thread that reads
// it share no absl::Status or absl::Cord representation: Debian's abseil updates their
// reference counts in code ThreadSanitizer does not instrument.
struct DetachedStatus {
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string message;
  std::vector<std::pair<std::string, std::string>> payloads;

  static DetachedStatus From(const absl::Status& status) {
    DetachedStatus out;
    out.code = status.code();
    if (status.ok()) return out;
    out.message = std::string(status.message());
    status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
      out.payloads.emplace_back(std::string(url), std::string(payload));
    });
    return out;
  }
  absl::Status Rebuild() const {
    absl::Status status(code, message);
    for (const auto& [url, payload] : payloads) status.SetPayload(url, absl::Cord(payload));
    return status;
  }
};

class StringSink final : public Sink {
 public:
  explicit StringSink(std::string& out) : out_(out) {}
  absl::Status Write(std::string_view chunk) override {
    out_.append(chunk);
    return absl::OkStatus();
  }

 private:
  std::string& out_;
};

// Counts the bytes that pass through to a caller's sink.
class CountingSink final : public Sink {
 public:
  CountingSink(Sink& inner, std::uint64_t& bytes) : inner_(inner), bytes_(bytes) {}
  absl::Status Write(std::string_view chunk) override {
    absl::Status status = inner_.Write(chunk);
    if (status.ok()) bytes_ += chunk.size();
    return status;
  }

 private:
  Sink& inner_;
  std::uint64_t& bytes_;
};

// Whether an interceptor of this call threw: the chain returned an interceptor's fault that the
// handler did not return (a handler may pass on a nested call's fault, which is not this
// call's). The handler's own throws are flagged by its guard.
bool InterceptorFaulted(const absl::Status& status, bool handler_ran,
                        const absl::Status& handler_status) {
  if (status.ok() || (handler_ran && status == handler_status)) return false;
  const std::optional<ExtensionPanic> panic = GetExtensionPanic(status);
  return panic && panic->phase == Phase::kInvoke && panic->extension.starts_with("interceptor ");
}

}  // namespace

std::vector<std::string_view> FunctionExecutor::OwnOptionKeys(
    const FunctionExecutorOptions& options) {
  std::vector<std::string_view> keys = {kTimeoutOption, kCallerOption, kTraceIdOption};
  keys.insert(keys.end(), options.option_keys.begin(), options.option_keys.end());
  return keys;
}

const Key<std::string>& TraceIdKey() {
  static const Key<std::string> key{"framekit.trace_id"};
  return key;
}

std::chrono::nanoseconds LatencyBucketBound(int bucket) {
  if (bucket >= kLatencyBuckets - 1) return std::chrono::nanoseconds::max();
  std::int64_t micros = 1;
  for (int i = 0; i < bucket; ++i) micros *= 4;
  return std::chrono::microseconds(micros);
}

struct FunctionExecutor::Version {
  int number = 0;
  Handler handler;
  Clock::time_point deployed{};
  std::string guard_name;  // "NAME@vN": a redeploy starts a fresh fault-policy history
  std::atomic<bool> disabled{false};
};

struct FunctionExecutor::Function {
  struct Slot {
    std::uint64_t id = 0;
    int version = 0;
    Clock::time_point start{};
    Clock::time_point end{};
    // Code and message, not the absl::Status: a status shares its payload storage with the
    // caller's copy through a reference count that Debian's (uninstrumented) abseil updates,
    // which ThreadSanitizer cannot see. Payloads are therefore not kept in records.
    absl::StatusCode error_code = absl::StatusCode::kOk;
    std::string error_message;
    std::uint64_t output_bytes = 0;
    std::string caller;
    std::string trace_id;
  };

  std::string name;
  Options defaults;
  // Guarded by the executor's mu_.
  std::vector<std::shared_ptr<Version>> versions;
  std::shared_ptr<Version> active;

  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> faults{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::array<std::atomic<std::uint64_t>, kLatencyBuckets> latency{};

  std::mutex records_mu;
  std::vector<Slot> ring ABSL_GUARDED_BY(records_mu);  // fixed size
  std::size_t next ABSL_GUARDED_BY(records_mu) = 0;
  std::size_t count ABSL_GUARDED_BY(records_mu) = 0;
};

// The state a deadline call shares between its caller and the worker running it; whichever
// finishes last frees it.
struct FunctionExecutor::CallState final : public Sink {
  enum class Stage { kQueued, kRunning, kDone, kAbandoned };

  std::mutex mu;
  std::condition_variable cv;
  Stage stage ABSL_GUARDED_BY(mu) = Stage::kQueued;
  bool quarantined ABSL_GUARDED_BY(mu) = false;
  bool closed ABSL_GUARDED_BY(mu) = false;
  bool faulted ABSL_GUARDED_BY(mu) = false;  // the handler or an interceptor threw
  int writers ABSL_GUARDED_BY(mu) = 0;
  DetachedStatus status ABSL_GUARDED_BY(mu);
  std::string output ABSL_GUARDED_BY(mu);

  // Immutable after submission.
  FunctionExecutor* executor = nullptr;
  std::shared_ptr<Function> function;
  std::shared_ptr<Version> version;
  CallKind kind = CallKind::kInvoke;
  Frame frame;
  Options options;
  std::string payload;
  Sink* user_sink = nullptr;  // InvokeStream's sink; null for Invoke

  // The worker-side sink: appends to `output`, or forwards to the caller's sink while the
  // caller is still waiting. The caller's sink is called with no lock held.
  absl::Status Write(std::string_view chunk) override {
    std::unique_lock<std::mutex> lock(mu);
    if (closed) return absl::CancelledError("the call is over: its caller stopped waiting");
    if (user_sink == nullptr) {
      output.append(chunk);
      return absl::OkStatus();
    }
    ++writers;
    lock.unlock();
    absl::Status result = user_sink->Write(chunk);
    lock.lock();
    if (--writers == 0) cv.notify_all();
    return result;
  }
};

// Threads for deadline calls. Up to `workers` run calls; up to `max_quarantined` more may be
// stuck in handlers past their deadlines.
class FunctionExecutor::Workers {
 public:
  Workers(int workers, int max_quarantined)
      : max_threads_(static_cast<std::size_t>(std::max(1, workers) + std::max(0, max_quarantined))),
        max_quarantined_(std::max(0, max_quarantined)) {}

  ~Workers() { Shutdown(); }

  // Runs what is queued, then joins every thread. Idempotent. The executor calls it while it is
  // still whole: tasks use it.
  void Shutdown() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      threads.swap(threads_);
    }
    cv_.notify_all();
    for (std::thread& thread : threads) thread.join();
  }

  // False when the quarantine is full.
  bool Submit(std::function<void()> task) {
    if (quarantined_.load(std::memory_order_acquire) >= max_quarantined_) return false;
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return false;
    queue_.push_back(std::move(task));
    if (static_cast<std::size_t>(idle_) < queue_.size() && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { Loop(); });
    } else {
      cv_.notify_one();
    }
    return true;
  }

  void Quarantine() { quarantined_.fetch_add(1, std::memory_order_acq_rel); }
  void Release() { quarantined_.fetch_sub(1, std::memory_order_acq_rel); }
  int quarantined() const { return quarantined_.load(std::memory_order_acquire); }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      ++idle_;
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      --idle_;
      if (queue_.empty()) return;  // stopping, and nothing left to run
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      task = nullptr;
      lock.lock();
    }
  }

  const std::size_t max_threads_;
  const int max_quarantined_;
  std::atomic<int> quarantined_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

FunctionExecutor::FunctionExecutor(const AppContext& app, FunctionExecutorOptions options)
    : app_(app),
      options_(std::move(options)),
      monitor_(options_.monitor != nullptr ? options_.monitor : &DefaultFaultMonitor()),
      workers_(std::make_unique<Workers>(options_.deadline_workers, options_.max_quarantined)) {}

FunctionExecutor::~FunctionExecutor() { workers_->Shutdown(); }

absl::Status FunctionExecutor::Register(std::string name, Handler handler, Options defaults) {
  if (!ValidName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid function name \"", name,
                     "\": want 1-128 of [A-Za-z0-9_.-], starting with a letter or digit"));
  }
  if (!handler) {
    return absl::InvalidArgumentError(absl::StrCat("function \"", name, "\" has no handler"));
  }
  auto function = std::make_shared<Function>();
  function->name = name;
  function->defaults = std::move(defaults);
  {
    std::lock_guard<std::mutex> lock(function->records_mu);
    function->ring.resize(static_cast<std::size_t>(std::max(1, options_.records_per_function)));
  }
  auto version = std::make_shared<Version>();
  version->number = 1;
  version->handler = std::move(handler);
  version->deployed = Clock::now();
  version->guard_name = absl::StrCat(name, "@v1");
  function->versions.push_back(version);
  function->active = std::move(version);

  std::lock_guard<std::mutex> lock(mu_);
  if (functions_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("function \"", name, "\" is registered already"));
  }
  functions_.emplace(std::move(name), std::move(function));
  return absl::OkStatus();
}

absl::StatusOr<int> FunctionExecutor::Deploy(std::string_view name, Handler handler) {
  if (!handler) {
    return absl::InvalidArgumentError(
        absl::StrCat("function \"", AbslView(name), "\": Deploy without a handler"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
  if (!found.ok()) return found.status();
  Function& function = **found;
  auto version = std::make_shared<Version>();
  version->number = static_cast<int>(function.versions.size()) + 1;
  version->handler = std::move(handler);
  version->deployed = Clock::now();
  version->guard_name = absl::StrCat(AbslView(name), "@v", version->number);
  function.versions.push_back(version);
  function.active = std::move(version);
  return function.active->number;
}

absl::StatusOr<std::vector<FunctionVersion>> FunctionExecutor::ListVersions(
    std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
  if (!found.ok()) return found.status();
  std::vector<FunctionVersion> out;
  for (const auto& version : (*found)->versions) {
    out.push_back({.version = version->number,
                   .deployed = version->deployed,
                   .active = version == (*found)->active,
                   .disabled = version->disabled.load(std::memory_order_acquire)});
  }
  return out;
}

absl::StatusOr<FunctionInfo> FunctionExecutor::Get(std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
  if (!found.ok()) return found.status();
  const Function& function = **found;
  return FunctionInfo{.name = function.name,
                      .active_version = function.active->number,
                      .disabled = function.active->disabled.load(std::memory_order_acquire),
                      .defaults = function.defaults};
}

std::vector<std::string> FunctionExecutor::List() const {
  std::vector<std::string> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    out.reserve(functions_.size());
    for (const auto& [name, function] : functions_) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status FunctionExecutor::Remove(std::string_view name) {
  std::shared_ptr<Function> removed;  // destroyed outside the lock
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
  if (!found.ok()) return found.status();
  removed = *std::move(found);
  functions_.erase(AbslView(name));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<FunctionExecutor::Function>> FunctionExecutor::FindLocked(
    std::string_view name) const {
  const auto it = functions_.find(AbslView(name));
  if (it == functions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("function \"", resolvers_internal::Echo(name), "\" not found"));
  }
  return it->second;
}

absl::Status FunctionExecutor::Lookup(std::string_view name, std::shared_ptr<Function>& function,
                                      std::shared_ptr<Version>& version) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
    if (!found.ok()) return found.status();
    function = *std::move(found);
    version = function->active;
  }
  if (version->disabled.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        absl::StrCat("function \"", AbslView(name), "\" version ", version->number,
                     " is disabled by the fault policy; deploy a new version"));
  }
  return absl::OkStatus();
}

absl::Status FunctionExecutor::RunHandler(Version& version, Call& call, Sink& sink, bool& faulted) {
  return Guard(
      ExtRef(version.guard_name, *monitor_), Phase::kInvoke,
      [&]() -> absl::Status { return version.handler(call.frame, call.payload, sink); },
      [&](FaultReport&& report) -> absl::Status {
        faulted = true;
        if (report.verdict == FaultVerdict::kEvict) {
          version.disabled.store(true, std::memory_order_release);
        }
        return PanicStatus(report.panic);
      });
}

absl::StatusOr<std::string> FunctionExecutor::Invoke(const Frame& parent, std::string_view name,
                                                     std::string_view payload,
                                                     const Options& options) {
  std::string output;
  StringSink sink(output);
  std::uint64_t bytes = 0;
  FRAMEKIT_RETURN_IF_ERROR(
      Dispatch(parent, name, payload, options, CallKind::kInvoke, sink, &output, &bytes));
  return output;
}

absl::Status FunctionExecutor::InvokeStream(const Frame& parent, std::string_view name,
                                            std::string_view payload, const Options& options,
                                            Sink& sink) {
  std::uint64_t bytes = 0;
  CountingSink counting(sink, bytes);
  return Dispatch(parent, name, payload, options, CallKind::kInvokeStream, counting, nullptr,
                  &bytes);
}

absl::Status FunctionExecutor::Dispatch(const Frame& parent, std::string_view name,
                                        std::string_view payload, const Options& options,
                                        CallKind kind, Sink& sink, std::string* output,
                                        std::uint64_t* output_bytes) {
  std::shared_ptr<Function> function;
  std::shared_ptr<Version> version;
  FRAMEKIT_RETURN_IF_ERROR(Lookup(name, function, version));
  const Clock::time_point start = Clock::now();
  function->calls.fetch_add(1, std::memory_order_relaxed);

  // 1. Options: the call wins over the function's defaults.
  const Options* merged = &options;
  Options merged_storage;
  if (!function->defaults.empty()) {
    if (options.empty()) {
      merged = &function->defaults;
    } else {
      merged_storage = Options::Merge(function->defaults, options);
      merged = &merged_storage;
    }
  }

  // 2-5. Strict options, identity, the call's frame.
  Frame frame = parent.Fork();
  absl::Status status;
  if (!options_.allow_undeclared_options) {
    status = framekit::CheckOptions(app_.frame_resolvers(), *merged, own_option_keys_);
  }
  dispatch_internal::CallIdentity identity;
  if (status.ok() && !merged->empty()) {
    status = dispatch_internal::ReadCallIdentity(frame, *merged, options_.allow_caller_option,
                                                 identity);
  }
  if (status.ok()) {
    PairList pairs;
    status = framekit::Resolve(app_.frame_resolvers(), frame, *merged, pairs);
    if (status.ok()) status = dispatch_internal::AppendCallIdentity(identity, pairs);
    if (status.ok()) {
      if (!pairs.empty()) frame = frame.With(pairs);
      if (const OptionValue* timeout = merged->Get(kTimeoutOption)) {
        const std::int64_t* ms = std::get_if<std::int64_t>(timeout);
        if (ms == nullptr || *ms <= 0 || *ms > kMaxTimeoutMs) {
          status = absl::InvalidArgumentError(absl::StrCat(
              "option \"timeout_ms\" must be an integer in 1..", kMaxTimeoutMs, " (30 days)"));
        } else {
          frame = frame.WithTimeout(std::chrono::milliseconds(*ms));
        }
      }
    }
  }

  // 4-5. Interceptors and the handler: here, or on a worker when there is a deadline.
  bool timed_out = false;
  bool faulted = false;
  if (status.ok()) {
    if (!frame.deadline()) {
      Call call{.kind = kind,
                .target = function->name,
                .frame = frame,
                .options = merged,
                .payload = payload};
      bool handler_ran = false;
      absl::Status handler_status;
      status = RunInterceptors(options_.interceptors.get(), call, [&](Call& c) {
        handler_ran = true;
        handler_status = RunHandler(*version, c, sink, faulted);
        return handler_status;
      });
      faulted = faulted || InterceptorFaulted(status, handler_ran, handler_status);
      if (output != nullptr) *output_bytes = output->size();
    } else {
      status = RunWithDeadline(function, version, kind, frame, *merged, payload,
                               output != nullptr ? nullptr : &sink, output, timed_out, faulted);
      if (output != nullptr) *output_bytes = output->size();
    }
  }

  const Clock::time_point end = Clock::now();
  const std::chrono::nanoseconds duration = end - start;
  function->latency[LatencyBucket(duration)].fetch_add(1, std::memory_order_relaxed);
  if (!status.ok()) {
    function->errors.fetch_add(1, std::memory_order_relaxed);
    if (timed_out) function->timeouts.fetch_add(1, std::memory_order_relaxed);
    if (faulted) function->faults.fetch_add(1, std::memory_order_relaxed);
  }
  const std::uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  {
    const CallerContext* caller = CallerOf(frame);
    const std::string* trace = frame.Find(TraceIdKey());
    std::lock_guard<std::mutex> lock(function->records_mu);
    Function::Slot& slot = function->ring[function->next];
    function->next = (function->next + 1) % function->ring.size();
    function->count = std::min(function->count + 1, function->ring.size());
    slot.id = id;
    slot.version = version->number;
    slot.start = start;
    slot.end = end;
    slot.error_code = status.code();
    if (status.ok()) {
      slot.error_message.clear();
    } else {
      const absl::string_view message = status.message();
      slot.error_message.assign(message.data(), message.size());
    }
    slot.output_bytes = *output_bytes;
    if (caller != nullptr) {
      slot.caller = caller->user_id;
    } else {
      slot.caller.clear();
    }
    if (trace != nullptr) {
      slot.trace_id = *trace;
    } else {
      slot.trace_id.clear();
    }
  }
  return status;
}

absl::Status FunctionExecutor::RunWithDeadline(const std::shared_ptr<Function>& function,
                                               const std::shared_ptr<Version>& version,
                                               CallKind kind, const Frame& frame,
                                               const Options& options, std::string_view payload,
                                               Sink* user_sink, std::string* output,
                                               bool& timed_out, bool& faulted) {
  const Deadline deadline = *frame.deadline();
  auto [call_frame, canceller] = frame.WithCancel();
  auto state = std::make_shared<CallState>();
  state->executor = this;
  state->function = function;
  state->version = version;
  state->kind = kind;
  state->frame = call_frame;
  state->options = options;
  state->payload = std::string(payload);
  state->user_sink = user_sink;

  const bool submitted = workers_->Submit([state] {
    {
      std::lock_guard<std::mutex> lock(state->mu);
      if (state->stage == CallState::Stage::kAbandoned) return;
      state->stage = CallState::Stage::kRunning;
    }
    FunctionExecutor& executor = *state->executor;
    Call call{.kind = state->kind,
              .target = state->function->name,
              .frame = state->frame,
              .options = &state->options,
              .payload = state->payload};
    bool faulted = false;
    absl::Status status;
    {
      bool handler_ran = false;
      absl::Status handler_status;  // dropped here: the status handed over has no other owner
      status = RunInterceptors(executor.options_.interceptors.get(), call, [&](Call& c) {
        handler_ran = true;
        handler_status = executor.RunHandler(*state->version, c, *state, faulted);
        return handler_status;
      });
      faulted = faulted || InterceptorFaulted(status, handler_ran, handler_status);
    }
    std::lock_guard<std::mutex> lock(state->mu);
    state->faulted = faulted;
    if (state->quarantined) executor.workers_->Release();
    state->status = DetachedStatus::From(status);
    state->stage = CallState::Stage::kDone;
    state->cv.notify_all();
  });
  if (!submitted) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "function \"", function->name, "\": ", workers_->quarantined(),
        " workers are quarantined in handlers that overran their deadlines; not starting "
        "another deadline call"));
  }

  // Wake up early when the parent's scope is cancelled.
  std::stop_callback on_cancel(frame.stop_token(), [&state] {
    std::lock_guard<std::mutex> lock(state->mu);
    state->cv.notify_all();
  });
  const std::stop_token parent_stop = frame.stop_token();

  std::unique_lock<std::mutex> lock(state->mu);
  const bool finished = state->cv.wait_until(lock, deadline, [&] {
    return state->stage == CallState::Stage::kDone || parent_stop.stop_requested();
  });
  if (finished && state->stage == CallState::Stage::kDone) {
    if (output != nullptr) *output = std::move(state->output);
    faulted = state->faulted;
    return state->status.Rebuild();
  }
  if (state->stage == CallState::Stage::kRunning) {
    state->quarantined = true;
    workers_->Quarantine();
  }
  state->stage = CallState::Stage::kAbandoned;
  state->closed = true;
  lock.unlock();
  canceller.Cancel();  // runs the handler's stop callbacks: no lock held
  lock.lock();
  state->cv.wait(lock, [&] { return state->writers == 0; });
  if (!parent_stop.stop_requested() || Clock::now() >= deadline) {
    timed_out = true;
    return absl::DeadlineExceededError(
        absl::StrCat("function \"", function->name, "\" did not finish by its deadline"));
  }
  return absl::CancelledError(
      absl::StrCat("function \"", function->name, "\": the caller's frame was cancelled"));
}

absl::StatusOr<std::vector<InvocationRecord>> FunctionExecutor::ListInvocations(
    std::string_view name) const {
  std::shared_ptr<Function> function;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
    if (!found.ok()) return found.status();
    function = *std::move(found);
  }
  std::vector<InvocationRecord> out;
  std::lock_guard<std::mutex> lock(function->records_mu);
  const std::size_t n = std::min(function->count, kListedInvocations);
  const std::size_t size = function->ring.size();
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const Function::Slot& slot = function->ring[(function->next + size - 1 - i) % size];
    out.push_back({.id = slot.id,
                   .function = function->name,
                   .version = slot.version,
                   .start = slot.start,
                   .end = slot.end,
                   .ok = slot.error_code == absl::StatusCode::kOk,
                   .error = absl::Status(slot.error_code, slot.error_message),
                   .duration = slot.end - slot.start,
                   .output_bytes = slot.output_bytes,
                   .caller = slot.caller,
                   .trace_id = slot.trace_id});
  }
  return out;
}

absl::StatusOr<FunctionCounters> FunctionExecutor::Counters(std::string_view name) const {
  std::shared_ptr<Function> function;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
    if (!found.ok()) return found.status();
    function = *std::move(found);
  }
  FunctionCounters out;
  out.calls = function->calls.load(std::memory_order_relaxed);
  out.errors = function->errors.load(std::memory_order_relaxed);
  out.faults = function->faults.load(std::memory_order_relaxed);
  out.timeouts = function->timeouts.load(std::memory_order_relaxed);
  for (int i = 0; i < kLatencyBuckets; ++i) {
    out.latency[i] = function->latency[i].load(std::memory_order_relaxed);
  }
  return out;
}

int FunctionExecutor::quarantined() const { return workers_->quarantined(); }

}  // namespace framekit::dispatch
