#include "framekit/dispatch/function_executor.h"

#include <algorithm>
#include <bit>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <optional>
#include <stop_token>
#include <thread>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/base/internal/name.h"
#include "framekit/base/internal/strings.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/guard.h"
#include "framekit/dispatch/internal/call_clock.h"
#include "framekit/dispatch/internal/call_identity.h"
#include "framekit/dispatch/internal/function_names.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "worker_pool.h"

namespace framekit::dispatch {
namespace {

inline constexpr std::size_t kListedInvocations = 100;

using base_internal::AsAbsl;
using base_internal::IsValidName;

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

// Counts the bytes that pass through to a caller's sink. A throw of the caller's sink becomes
// the Write's status: it is the caller's fault, never the handler's (which the invoke guard
// would count, and the fault policy could evict the function for every other caller).
class CountingSink final : public Sink {
 public:
  CountingSink(Sink& inner, std::uint64_t& bytes) : inner_(inner), bytes_(bytes) {}
  absl::Status Write(std::string_view chunk) override {
    absl::Status status;
    try {
      status = inner_.Write(chunk);
    } catch (...) {
      RethrowIfForcedUnwind();  // a thread's cancellation must go on unwinding it
      const ExtensionPanic thrown = DescribeCurrentException("caller's sink", Phase::kInvoke);
      return absl::InternalError(
          absl::StrCat("the caller's sink threw ", thrown.type, ": ", thrown.message));
    }
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

// The lock of a function's record ring: held for a few stores per call, so a test-and-set
// (one atomic exchange to take it, a plain release store to give it back) costs half of a
// std::mutex, whose unlock is a second read-modify-write. A waiter yields its core after a few
// tries: the machine may have fewer cores than threads, and the holder may be preempted.
class ABSL_LOCKABLE RecordLock {
 public:
  void lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    for (int tries = 0; held_.exchange(true, std::memory_order_acquire); ++tries) {
      while (held_.load(std::memory_order_relaxed)) {
        if (++tries > 64) std::this_thread::yield();
      }
    }
  }
  void unlock() ABSL_UNLOCK_FUNCTION() { held_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> held_{false};
};

// Adds one to a counter that only holders of one lock write: a load and a store, no
// read-modify-write. Readers load it relaxed, as they do every counter.
void Bump(std::atomic<std::uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
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

int LatencyBucketOf(std::chrono::nanoseconds latency) {
  // The smallest i with latency <= 4^i us: with q = ceil(latency / 1 us), the smallest i with
  // q <= 4^i, i.e. ceil(ceil(log2 q) / 2). No loop and no division by a variable: this runs
  // on every call.
  if (latency <= std::chrono::microseconds(1)) return 0;
  const auto ns = static_cast<std::uint64_t>(latency.count());  // > 1000 here
  const std::uint64_t q = ns / 1000 + (ns % 1000 != 0 ? 1 : 0);
  const int bucket = (std::bit_width(q - 1) + 1) / 2;
  return std::min(bucket, kLatencyBuckets - 1);
}

std::chrono::nanoseconds LatencyBucketBound(int bucket) {
  if (bucket >= kLatencyBuckets - 1) return std::chrono::nanoseconds::max();
  std::int64_t micros = 1;
  for (int i = 0; i < bucket; ++i) micros *= 4;
  return std::chrono::microseconds(micros);
}

struct FunctionExecutor::Version {
  int number = 0;
  std::shared_ptr<Code> code;  // never null
  bool preemptive = false;     // code->preemptive(), read once (see Code::preemptive)
  Clock::time_point deployed{};
  std::string guard_name;  // "NAME@vN": a redeploy starts a fresh fault-policy history
  std::atomic<bool> disabled{false};

  static std::shared_ptr<Version> Make(std::string_view function, int number,
                                       std::shared_ptr<Code> code) {
    auto version = std::make_shared<Version>();
    version->number = number;
    version->code = std::move(code);
    version->preemptive = version->code->preemptive();
    version->deployed = Clock::now();
    version->guard_name = absl::StrCat(AsAbsl(function), "@v", number);
    return version;
  }

  struct Outcome {
    absl::Status status;
    bool faulted = false;    // the handler or an interceptor threw
    bool timed_out = false;  // the deadline passed before the handler could start
  };
  // Runs the interceptors, then the code under the invoke guard: the one place a call runs, on
  // the caller's thread or on a worker.
  Outcome Run(const Interceptors* interceptors, FaultMonitor& monitor, Call& call, Sink& sink,
              RunStats& stats) {
    Outcome out;
    const ExtRef ext(guard_name, monitor);
    auto guarded = [&](Call& c) {
      return Guard(
          ext, Phase::kInvoke,
          [&]() -> absl::Status { return code->Run(c.frame, c.payload, sink, stats); },
          [&](FaultReport&& report) -> absl::Status {
            out.faulted = true;
            if (report.verdict == FaultVerdict::kEvict) {
              disabled.store(true, std::memory_order_release);
            }
            return PanicStatus(report.panic);
          });
    };
    if (interceptors == nullptr) {
      // No chain to run: the guarded code alone, without the chain's type-erased terminal and
      // the copy of the handler's status it keeps to tell an interceptor's fault from its own.
      out.status = guarded(call);
      return out;
    }
    bool handler_ran = false;
    absl::Status handler_status;
    out.status = interceptors->Run(call, [&](Call& c) {
      handler_ran = true;
      handler_status = guarded(c);
      return handler_status;
    });
    out.faulted = out.faulted || InterceptorFaulted(out.status, handler_ran, handler_status);
    return out;
  }
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
    RunStats stats;
    std::string caller;
    std::string trace_id;
  };

  std::string name;
  Options defaults;
  // Guarded by the executor's mu_; calls read the active version from the published table.
  std::vector<std::shared_ptr<Version>> versions;
  std::shared_ptr<Version> active;

  // Written only by Record, under records_mu (see Bump); read relaxed by Counters.
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> faults{0};
  std::atomic<std::uint64_t> timeouts{0};
  std::array<std::atomic<std::uint64_t>, kLatencyBuckets> latency{};
  std::atomic<std::uint64_t> refusals{0};
  // Bulkhead budgets in use: written under Shared::mu, read relaxed by Counters.
  std::atomic<int> in_flight{0};
  std::atomic<int> quarantined{0};

  RecordLock records_mu;
  std::vector<Slot> ring ABSL_GUARDED_BY(records_mu);  // fixed size
  std::size_t next ABSL_GUARDED_BY(records_mu) = 0;
  std::size_t count ABSL_GUARDED_BY(records_mu) = 0;
};

// The functions as calls see them: immutable once published. Each entry holds its function and
// the version that was active when the table was built, so a call reads both with one lookup
// and no lock; a Deploy publishes a new table.
struct FunctionExecutor::Table {
  struct Entry {
    std::shared_ptr<Function> function;
    std::shared_ptr<Version> active;
  };
  // Keys view the functions' names, which the entries keep alive.
  absl::flat_hash_map<absl::string_view, Entry, dispatch_internal::NameHash,
                      dispatch_internal::NameEq>
      functions;
};

struct FunctionExecutor::RetiredTable {
  std::uint64_t epoch = 0;  // epoch_ when it was replaced
  std::unique_ptr<const Table> table;
};

// What deadline calls and their workers share: held by shared_ptr, so that a worker left running
// after the executor is gone touches nothing freed.
struct FunctionExecutor::Shared {
  enum class Admission { kAdmitted, kInline, kRefused };

  std::shared_ptr<dispatch_internal::WorkerPool> pool;
  std::shared_ptr<const Interceptors> interceptors;
  FaultMonitor* monitor = nullptr;
  int quarantine_cap = 1;           // executor-wide, >= 1
  int function_quarantine_cap = 1;  // per function, >= 1
  int in_flight_cap = 1;
  int function_in_flight_cap = 1;
  std::stop_source shutdown;  // stopped by Shutdown: wakes every waiting caller

  std::mutex mu;
  int admitted ABSL_GUARDED_BY(mu) = 0;  // deadline calls whose task has not ended
  std::atomic<int> quarantined{0};       // written under mu

  // Takes one in-flight slot of `function` and of the executor, or says why not. A nested call
  // (made on a worker) beyond the in-flight budgets runs inline rather than being refused.
  Admission Admit(Function& function, bool nested, std::string& refusal) {
    std::lock_guard<std::mutex> lock(mu);
    const int own_quarantined = function.quarantined.load(std::memory_order_relaxed);
    const int own_in_flight = function.in_flight.load(std::memory_order_relaxed);
    // A function with a worker quarantined has shown that it hangs: it is held to its
    // quarantine budget in flight, so that it cannot fill the executor's quarantine.
    if (own_quarantined >= function_quarantine_cap ||
        (own_quarantined > 0 && own_in_flight >= function_quarantine_cap)) {
      refusal = absl::StrCat("function \"", function.name, "\": ", own_quarantined,
                             " of its workers are quarantined in handlers that overran their "
                             "deadlines (its budget); not starting another deadline call");
      return Admission::kRefused;
    }
    if (quarantined.load(std::memory_order_relaxed) >= quarantine_cap) {
      refusal = absl::StrCat("function \"", function.name, "\": ", quarantine_cap,
                             " workers of the executor are quarantined in handlers that overran "
                             "their deadlines; not starting another deadline call");
      return Admission::kRefused;
    }
    if (own_in_flight >= function_in_flight_cap || admitted >= in_flight_cap) {
      if (nested) return Admission::kInline;
      refusal = absl::StrCat("function \"", function.name, "\": ", own_in_flight, " of its and ",
                             admitted,
                             " of the executor's deadline calls are in flight, the most "
                             "it admits");
      return Admission::kRefused;
    }
    ++admitted;
    function.in_flight.fetch_add(1, std::memory_order_relaxed);
    return Admission::kAdmitted;
  }
  void Quarantine(Function& function) {
    std::lock_guard<std::mutex> lock(mu);
    function.quarantined.fetch_add(1, std::memory_order_relaxed);
    quarantined.fetch_add(1, std::memory_order_relaxed);
  }
  // Gives back what Admit (and Quarantine, when `was_quarantined`) took.
  void Release(Function& function, bool was_quarantined) {
    std::lock_guard<std::mutex> lock(mu);
    --admitted;
    function.in_flight.fetch_sub(1, std::memory_order_relaxed);
    if (was_quarantined) {
      function.quarantined.fetch_sub(1, std::memory_order_relaxed);
      quarantined.fetch_sub(1, std::memory_order_relaxed);
    }
  }
};

// One call as it goes through Dispatch's steps.
struct FunctionExecutor::DispatchCall {
  DispatchCall(const Frame& parent, std::string_view name, std::string_view payload,
               const Options& options, CallKind kind, Sink* sink, std::string* output)
      : parent(parent),
        name(name),
        payload(payload),
        options(options),
        kind(kind),
        sink(sink),
        output(output) {}

  const Frame& parent;
  std::string_view name;
  std::string_view payload;
  const Options& options;
  CallKind kind;
  Sink* sink = nullptr;
  std::string* output = nullptr;  // Invoke's output; null for InvokeStream

  // From the published table, valid while the call is inside the executor.
  const Table::Entry* entry = nullptr;
  Function* function = nullptr;
  Version* version = nullptr;
  const Options* merged = nullptr;
  Options merged_storage;
  Frame frame;
  std::uint64_t output_bytes = 0;
  RunStats stats;  // what the code reported
  bool timed_out = false;
  bool faulted = false;
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
  bool faulted ABSL_GUARDED_BY(mu) = false;
  bool timed_out ABSL_GUARDED_BY(mu) = false;
  RunStats stats ABSL_GUARDED_BY(mu);
  int writers ABSL_GUARDED_BY(mu) = 0;
  DetachedStatus status ABSL_GUARDED_BY(mu);
  std::string output ABSL_GUARDED_BY(mu);

  // Immutable after submission.
  std::shared_ptr<Shared> shared;
  std::shared_ptr<Function> function;
  std::shared_ptr<Version> version;
  CallKind kind = CallKind::kInvoke;
  Frame frame;
  Deadline deadline{};
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

  // The worker's side: runs the call unless its caller gave up first. The call ends, and its
  // budgets are given back, however the worker leaves, a forced unwind (pthread_exit) included.
  static void Work(const std::shared_ptr<CallState>& state) {
    std::optional<Version::Outcome> outcome;
    RunStats stats;  // the worker's own until Finish copies it under mu
    struct End {
      CallState& state;
      std::optional<Version::Outcome>& outcome;
      const RunStats& stats;
      ~End() { state.Finish(outcome ? &*outcome : nullptr, stats); }
    } end{*state, outcome, stats};
    {
      std::lock_guard<std::mutex> lock(state->mu);
      if (state->stage == Stage::kAbandoned) return;
      state->stage = Stage::kRunning;
    }
    if (state->frame.cancelled()) {
      // The worker started late (past the deadline, or after the parent's cancellation): the
      // handler does not run. The caller may still be waiting, or may wake to find this call
      // done before it sees the deadline itself, so the call ends as the caller would end it
      // and never as a thread that ended inside its handler.
      outcome.emplace();
      if (Clock::now() >= state->deadline) {
        outcome->timed_out = true;
        outcome->status =
            absl::DeadlineExceededError(absl::StrCat("function \"", state->function->name,
                                                     "\": the deadline passed before a worker "
                                                     "could start the call"));
      } else {
        outcome->status = absl::CancelledError(absl::StrCat(
            "function \"", state->function->name, "\": the caller's frame was cancelled"));
      }
      return;
    }
    Call call{.kind = state->kind,
              .target = state->function->name,
              .frame = state->frame,
              .options = &state->options,
              .payload = state->payload};
    outcome = state->version->Run(state->shared->interceptors.get(), *state->shared->monitor, call,
                                  *state, stats);
  }

  void Finish(const Version::Outcome* outcome, const RunStats& run_stats) {
    std::lock_guard<std::mutex> lock(mu);
    stats = run_stats;
    if (outcome != nullptr) {
      faulted = outcome->faulted;
      timed_out = outcome->timed_out;
      status = DetachedStatus::From(outcome->status);
    } else {
      status = DetachedStatus::From(absl::InternalError(
          absl::StrCat("function \"", function->name, "\": the handler ended its worker thread")));
    }
    stage = Stage::kDone;
    shared->Release(*function, quarantined);
    cv.notify_all();
  }

  // The caller's side: waits for the worker until the deadline, the parent's cancellation or
  // the executor's shutdown; past those, abandons the call and cancels its frame.
  absl::Status Await(DispatchCall& call, const Canceller& canceller) {
    const std::stop_token parent_stop = call.frame.stop_token();
    const std::stop_token shutdown = shared->shutdown.get_token();
    auto wake = [this] {
      std::lock_guard<std::mutex> lock(mu);
      cv.notify_all();
    };
    std::stop_callback on_cancel(parent_stop, wake);
    std::stop_callback on_shutdown(shutdown, wake);
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_until(lock, deadline, [&] {
      return stage == Stage::kDone || parent_stop.stop_requested() || shutdown.stop_requested();
    });
    if (stage == Stage::kDone) {
      if (call.output != nullptr) *call.output = std::move(output);
      call.faulted = faulted;
      call.timed_out = timed_out;
      call.stats = stats;
      return status.Rebuild();
    }
    if (stage == Stage::kRunning) {
      quarantined = true;
      shared->Quarantine(*function);
    }
    stage = Stage::kAbandoned;
    closed = true;
    lock.unlock();
    canceller.Cancel();  // runs the handler's stop callbacks: no lock held
    lock.lock();
    cv.wait(lock, [&] { return writers == 0; });
    return Abandoned(call, parent_stop.stop_requested());
  }

  absl::Status Abandoned(DispatchCall& call, bool parent_cancelled) const {
    const bool past_deadline = Clock::now() >= deadline;
    if (!parent_cancelled && !past_deadline) {
      return absl::UnavailableError(absl::StrCat("function \"", function->name,
                                                 "\": the executor shut down during the call"));
    }
    if (!parent_cancelled || past_deadline) {
      call.timed_out = true;
      return absl::DeadlineExceededError(
          absl::StrCat("function \"", function->name, "\" did not finish by its deadline"));
    }
    return absl::CancelledError(
        absl::StrCat("function \"", function->name, "\": the caller's frame was cancelled"));
  }
};

namespace {

// Calls of an executor on the current thread's stack, so that Shutdown from a handler does not
// wait for itself. Not the frame (frames are passed explicitly): only who is calling.
struct ThreadCall {
  const void* executor;
  ThreadCall* outer;
  int depth;  // calls of any executor on this thread's stack, this one included
};
thread_local ThreadCall* tls_calls = nullptr;

// Each thread's block of invocation ids [next, end) of the executor with serial `executor`.
// Taking ids in blocks spares every call an atomic read-modify-write on a line all callers
// share. A thread that calls several executors in turn takes a new block at each switch (ids
// stay unique: a block is never handed out twice).
struct IdBlock {
  std::uint64_t executor = 0;
  std::uint64_t next = 0;
  std::uint64_t end = 0;
};
constexpr std::uint64_t kIdBlock = 1024;
thread_local IdBlock tls_ids;

std::atomic<std::uint64_t> executor_serials{1};

int CallsOnThisThread(const void* executor) {
  int n = 0;
  for (const ThreadCall* c = tls_calls; c != nullptr; c = c->outer) n += c->executor == executor;
  return n;
}

// A call nested `max_nesting` deep on its thread: refused before its thread's stack overflows.
absl::Status NestingRefusal(std::string_view function, int max_nesting) {
  return absl::ResourceExhaustedError(
      absl::StrCat("function \"", AsAbsl(function), "\" not called: ", max_nesting,
                   " calls are already nested on this thread (max_nesting)"));
}

absl::Status CheckHandler(std::string_view name, const Handler& handler) {
  if (handler) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("function \"", AsAbsl(name), "\" has no handler"));
}

absl::Status CheckCode(std::string_view name, const std::shared_ptr<Code>& code) {
  if (code != nullptr) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("function \"", AsAbsl(name), "\" has no code"));
}

absl::Status ValidateOptions(const FunctionExecutorOptions& o) {
  auto bad = [](std::string_view field, std::string_view want, std::int64_t got) {
    return absl::InvalidArgumentError(absl::StrCat("FunctionExecutorOptions.", AsAbsl(field),
                                                   " must be ", AsAbsl(want), ", got ", got));
  };
  if (o.deadline_workers <= 0) return bad("deadline_workers", "> 0", o.deadline_workers);
  if (o.max_quarantined < 0) return bad("max_quarantined", ">= 0", o.max_quarantined);
  if (o.max_quarantined_per_function < 0) {
    return bad("max_quarantined_per_function", ">= 0", o.max_quarantined_per_function);
  }
  if (o.max_in_flight <= 0) return bad("max_in_flight", "> 0", o.max_in_flight);
  if (o.max_in_flight_per_function <= 0) {
    return bad("max_in_flight_per_function", "> 0", o.max_in_flight_per_function);
  }
  if (o.records_per_function <= 0) {
    return bad("records_per_function", "> 0", o.records_per_function);
  }
  if (o.max_nesting <= 0) return bad("max_nesting", "> 0", o.max_nesting);
  if (o.versions_kept <= 0) return bad("versions_kept", "> 0", o.versions_kept);
  if (o.shutdown_grace.count() < 0) return bad("shutdown_grace", ">= 0", o.shutdown_grace.count());
  return absl::OkStatus();
}

FunctionExecutorOptions Clamp(FunctionExecutorOptions o) {
  o.deadline_workers = std::max(1, o.deadline_workers);
  o.max_quarantined = std::max(0, o.max_quarantined);
  o.max_quarantined_per_function = std::max(0, o.max_quarantined_per_function);
  o.max_in_flight = std::max(1, o.max_in_flight);
  o.max_in_flight_per_function = std::max(1, o.max_in_flight_per_function);
  o.records_per_function = std::max(1, o.records_per_function);
  o.max_nesting = std::max(1, o.max_nesting);
  o.versions_kept = std::max(1, o.versions_kept);
  o.shutdown_grace = std::max(o.shutdown_grace, std::chrono::milliseconds::zero());
  return o;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FunctionExecutor>> FunctionExecutor::Create(
    const AppContext& app, FunctionExecutorOptions options) {
  FRAMEKIT_RETURN_IF_ERROR(ValidateOptions(options));
  return std::make_unique<FunctionExecutor>(app, std::move(options));
}

FunctionExecutor::FunctionExecutor(const AppContext& app, FunctionExecutorOptions options)
    : app_(app),
      options_(Clamp(std::move(options))),
      shared_(std::make_shared<Shared>()),
      serial_(executor_serials.fetch_add(1, std::memory_order_relaxed)) {
  table_.store(new Table());
  shared_->pool = dispatch_internal::WorkerPool::Create(options_.deadline_workers);
  shared_->interceptors = options_.interceptors;
  shared_->monitor = options_.monitor != nullptr ? options_.monitor : &DefaultFaultMonitor();
  shared_->quarantine_cap = std::max(1, options_.max_quarantined);
  shared_->function_quarantine_cap =
      std::max(1, std::min(options_.max_quarantined, options_.max_quarantined_per_function));
  shared_->in_flight_cap = options_.max_in_flight;
  shared_->function_in_flight_cap =
      std::min(options_.max_in_flight, options_.max_in_flight_per_function);
}

FunctionExecutor::~FunctionExecutor() {
  (void)Shutdown(options_.shutdown_grace);
  // Callers still inside the executor use it: deadline calls return at once now; calls without
  // a deadline return when their handlers do.
  const int own = CallsOnThisThread(this);
  while (Callers() > own) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  delete table_.load();
}

void FunctionExecutor::PublishLocked(std::vector<RetiredTable>& freed) {
  auto table = std::make_unique<Table>();
  table->functions.reserve(functions_.size());
  for (const auto& [name, function] : functions_) {
    table->functions.emplace(AsAbsl(function->name), Table::Entry{function, function->active});
  }
  const Table* old = table_.exchange(table.release());
  // Retired in epoch E: a call that read epoch_ after it moved past E reads the new table, so
  // only calls that entered in E or before can hold the old one. Calls never wait for this: a
  // table not yet free is freed by a later write or the destructor, so at most the tables of
  // the writes made while calls were running stay behind.
  const std::uint64_t epoch = epoch_.load();
  epoch_.store(epoch + 1);
  retired_.push_back({epoch, std::unique_ptr<const Table>(old)});
  const std::uint64_t oldest = callers_.OldestEpoch();
  auto keep = std::partition(retired_.begin(), retired_.end(),
                             [oldest](const RetiredTable& r) { return r.epoch >= oldest; });
  for (auto it = keep; it != retired_.end(); ++it) freed.push_back(std::move(*it));
  retired_.erase(keep, retired_.end());
}

absl::Status FunctionExecutor::Shutdown(std::chrono::milliseconds grace) {
  const Deadline until = DeadlineAfter(Clock::now(), grace);
  shut_down_.store(true);
  shared_->shutdown.request_stop();
  const bool callers_done = WaitForCallers(until);
  const int workers = shared_->pool->Shutdown(until);
  if (callers_done && workers == 0) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrCat(
      "function executor shutdown: ", workers, " workers still running after the grace period",
      callers_done ? "" : ", and calls without a deadline still running on their callers' threads",
      "; workers are left detached"));
}

bool FunctionExecutor::WaitForCallers(Deadline until) {
  // Polls: a caller's last act is to leave the count, after which it must not touch the
  // executor (not even to notify), since the executor may be destroyed at once.
  const int own = CallsOnThisThread(this);
  while (Callers() > own) {
    if (Clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

absl::Status FunctionExecutor::Register(std::string name, Handler handler, Options defaults) {
  FRAMEKIT_RETURN_IF_ERROR(CheckHandler(name, handler));
  return Register(std::move(name), NativeCode(std::move(handler)), std::move(defaults));
}

absl::Status FunctionExecutor::Register(std::string name, std::shared_ptr<Code> code,
                                        Options defaults) {
  if (!IsValidName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid function name \"", name,
                     "\": want 1-128 of [A-Za-z0-9_.-], starting with a letter or digit"));
  }
  FRAMEKIT_RETURN_IF_ERROR(CheckCode(name, code));
  auto function = std::make_shared<Function>();
  function->name = name;
  function->defaults = std::move(defaults);
  {
    std::lock_guard<RecordLock> lock(function->records_mu);
    function->ring.resize(static_cast<std::size_t>(options_.records_per_function));
  }
  function->active = Version::Make(name, 1, std::move(code));
  function->versions.push_back(function->active);

  std::vector<RetiredTable> freed;  // destroyed after the lock
  std::lock_guard<std::mutex> lock(mu_);
  if (functions_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("function \"", name, "\" is registered already"));
  }
  functions_.emplace(std::move(name), std::move(function));
  PublishLocked(freed);
  return absl::OkStatus();
}

absl::StatusOr<int> FunctionExecutor::Deploy(std::string_view name, Handler handler) {
  FRAMEKIT_RETURN_IF_ERROR(CheckHandler(name, handler));
  return Deploy(name, NativeCode(std::move(handler)));
}

absl::StatusOr<int> FunctionExecutor::Deploy(std::string_view name, std::shared_ptr<Code> code) {
  FRAMEKIT_RETURN_IF_ERROR(CheckCode(name, code));
  std::vector<RetiredTable> freed;                // destroyed after the lock
  std::vector<std::shared_ptr<Version>> dropped;  // so is their code (user destructors)
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
  if (!found.ok()) return found.status();
  Function& function = **found;
  if (function.active->number == std::numeric_limits<int>::max()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("function \"", AsAbsl(name), "\": version numbers are exhausted"));
  }
  const int number = function.active->number + 1;
  function.active = Version::Make(name, number, std::move(code));
  function.versions.push_back(function.active);
  // The oldest versions past the bound go; a call still running one holds it.
  const std::size_t kept = static_cast<std::size_t>(options_.versions_kept);
  if (function.versions.size() > kept) {
    const auto end = function.versions.end() - static_cast<std::ptrdiff_t>(kept);
    dropped.assign(std::make_move_iterator(function.versions.begin()),
                   std::make_move_iterator(end));
    function.versions.erase(function.versions.begin(), end);
  }
  PublishLocked(freed);
  return number;
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
                   .disabled = version->disabled.load(std::memory_order_acquire),
                   .code = version->code});
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
  std::vector<RetiredTable> freed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    absl::StatusOr<std::shared_ptr<Function>> found = FindLocked(name);
    if (!found.ok()) return found.status();
    removed = *std::move(found);
    functions_.erase(AsAbsl(name));
    PublishLocked(freed);
  }
  // The fault monitor forgets the function and every version of it, so that a host that
  // registers, faults and removes functions keeps a bounded fault table.
  shared_->monitor->Forget(name);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<FunctionExecutor::Function>> FunctionExecutor::FindLocked(
    std::string_view name) const {
  const auto it = functions_.find(AsAbsl(name));
  if (it == functions_.end()) {
    return absl::NotFoundError(
        absl::StrCat("function \"", base_internal::Echo(name), "\" not found"));
  }
  return it->second;
}

absl::StatusOr<std::shared_ptr<FunctionExecutor::Function>> FunctionExecutor::Find(
    std::string_view name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return FindLocked(name);
}

absl::Status FunctionExecutor::Lookup(DispatchCall& call) const {
  const Table& table = *table_.load();
  const auto it = table.functions.find(AsAbsl(call.name));
  if (it == table.functions.end()) [[unlikely]] {
    return absl::NotFoundError(
        absl::StrCat("function \"", base_internal::Echo(call.name), "\" not found"));
  }
  call.entry = &it->second;
  call.function = it->second.function.get();
  call.version = it->second.active.get();
  if (call.version->disabled.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(
        absl::StrCat("function \"", AsAbsl(call.name), "\" version ", call.version->number,
                     " is disabled by the fault policy; deploy a new version"));
  }
  return absl::OkStatus();
}

bool FunctionExecutor::Preemptive(std::string_view name) {
  // Counted as a caller while it reads the table, so that the table is not freed under it.
  dispatch_internal::CallerSlots::Slot* slot = Enter();
  const Table& table = *table_.load();
  const auto it = table.functions.find(AsAbsl(name));
  const bool preemptive = it != table.functions.end() && it->second.active->preemptive;
  dispatch_internal::CallerSlots::Leave(slot);
  return preemptive;
}

absl::StatusOr<std::string> FunctionExecutor::Invoke(const Frame& parent, std::string_view name,
                                                     std::string_view payload,
                                                     const Options& options) {
  // The output is written into the result itself: moving a string into a StatusOr on return
  // cost as much as a short handler.
  absl::StatusOr<std::string> result(absl::in_place);
  std::string& output = *result;
  StringSink sink(output);
  DispatchCall call(parent, name, payload, options, CallKind::kInvoke, &sink, &output);
  if (absl::Status status = Dispatch(call); !status.ok()) [[unlikely]] {
    result = std::move(status);
  }
  return result;
}

absl::Status FunctionExecutor::InvokeStream(const Frame& parent, std::string_view name,
                                            std::string_view payload, const Options& options,
                                            Sink& sink) {
  DispatchCall call(parent, name, payload, options, CallKind::kInvokeStream, nullptr, nullptr);
  CountingSink counting(sink, call.output_bytes);
  call.sink = &counting;
  return Dispatch(call);
}

absl::Status FunctionExecutor::Dispatch(DispatchCall& call) {
  // Leaving the count is the call's last touch of the executor (see WaitForCallers).
  // While counted, the call may read the published table without a lock (see PublishLocked).
  struct Entered {
    dispatch_internal::CallerSlots::Slot* slot;
    ThreadCall self;
    ~Entered() {
      tls_calls = self.outer;
      dispatch_internal::CallerSlots::Leave(slot);
    }
  } entered{Enter(), {this, tls_calls, tls_calls != nullptr ? tls_calls->depth + 1 : 1}};
  tls_calls = &entered.self;
  if (shut_down_.load()) {
    return absl::UnavailableError(
        absl::StrCat("function \"", AsAbsl(call.name), "\": the function executor is shut down"));
  }
  FRAMEKIT_RETURN_IF_ERROR(Lookup(call));
  // Records and latencies read the call clock (the counter where it is invariant): two steady
  // clock reads were a third of a short call's overhead.
  const Clock::time_point start = dispatch_internal::CallClock::Now();
  absl::Status status = entered.self.depth <= options_.max_nesting
                            ? PrepareFrame(call)
                            : NestingRefusal(call.function->name, options_.max_nesting);
  if (status.ok()) {
    if (call.version->preemptive) {
      status = RunPreemptive(call);
    } else {
      status = call.frame.deadline() ? RunWithDeadline(call) : RunInline(call);
    }
  }
  if (call.output != nullptr) call.output_bytes = call.output->size();
  Record(call, status, start);
  return status;
}

// Steps 1-3: the merged options and the call's frame. Stops the call when the frame is over
// already: its handler must not run.
absl::Status FunctionExecutor::PrepareFrame(DispatchCall& call) {
  call.merged = &call.options;
  const Options& defaults = call.function->defaults;
  if (!defaults.empty()) {
    if (call.options.empty()) {
      call.merged = &defaults;
    } else {
      call.merged_storage = Options::Merge(defaults, call.options);
      call.merged = &call.merged_storage;
    }
  }
  // Strict options: an option no resolver, interceptor or the executor reads is a wiring bug
  // (a misspelt or unbooted "network" would otherwise run with no route).
  if (!options_.allow_undeclared_options) {
    FRAMEKIT_RETURN_IF_ERROR(
        framekit::CheckOptions(app_.frame_resolvers(), *call.merged, own_option_keys_));
  }
  call.frame = call.parent.Fork();
  dispatch_internal::CallIdentity identity;
  if (!call.merged->empty()) {
    FRAMEKIT_RETURN_IF_ERROR(dispatch_internal::ReadCallIdentity(
        call.frame, *call.merged, options_.allow_caller_option, identity));
  }
  PairList pairs;
  FRAMEKIT_RETURN_IF_ERROR(
      framekit::Resolve(app_.frame_resolvers(), call.frame, *call.merged, pairs));
  if (identity.caller.has_value() || identity.trace_id.has_value()) {
    FRAMEKIT_RETURN_IF_ERROR(dispatch_internal::AppendCallIdentity(identity, pairs));
  }
  if (!pairs.empty()) call.frame = call.frame.With(std::move(pairs));
  const OptionValue* timeout = call.merged->empty() ? nullptr : call.merged->Get(kTimeoutOption);
  if (timeout != nullptr) {
    const std::int64_t* ms = std::get_if<std::int64_t>(timeout);
    if (ms == nullptr || *ms <= 0) {
      return absl::InvalidArgumentError("option \"timeout_ms\" must be a positive integer");
    }
    const Deadline deadline = DeadlineAfter(Clock::now(), std::chrono::milliseconds(*ms));
    if (deadline != Deadline::max()) call.frame = call.frame.WithDeadline(deadline);
  }
  if (!call.frame.cancelled()) return absl::OkStatus();
  if (call.frame.stop_token().stop_requested()) {
    return absl::CancelledError(
        absl::StrCat("function \"", call.function->name,
                     "\": the caller's frame was cancelled before the call"));
  }
  call.timed_out = true;
  return absl::DeadlineExceededError(
      absl::StrCat("function \"", call.function->name, "\": the deadline passed before the call"));
}

// Steps 4-5 on the caller's thread.
absl::Status FunctionExecutor::RunInline(DispatchCall& call) {
  Call c{.kind = call.kind,
         .target = call.function->name,
         .frame = call.frame,
         .options = call.merged,
         .payload = call.payload};
  Version::Outcome outcome =
      call.version->Run(shared_->interceptors.get(), *shared_->monitor, c, *call.sink, call.stats);
  call.faulted = outcome.faulted;
  return std::move(outcome.status);
}

// Steps 4-5 of preemptive code, on the caller's thread whether or not the call has a deadline:
// the code returns by the deadline itself, so no worker is handed the call and none can be
// quarantined. Shutdown cancels the call's frame, which such code also honours promptly.
absl::Status FunctionExecutor::RunPreemptive(DispatchCall& call) {
  std::pair<Frame, Canceller> cancellable = call.frame.WithCancel();
  call.frame = std::move(cancellable.first);
  Canceller& canceller = cancellable.second;
  std::stop_callback on_shutdown(shared_->shutdown.get_token(),
                                 [&canceller] { canceller.Cancel(); });
  absl::Status status = RunInline(call);
  // The runtime reports its own deadline (the frame's, or an earlier limit of its own).
  call.timed_out = status.code() == absl::StatusCode::kDeadlineExceeded && !call.faulted;
  return status;
}

// Steps 4-5 on a worker, the caller waiting until the deadline at most.
absl::Status FunctionExecutor::RunWithDeadline(DispatchCall& call) {
  std::string refusal;
  switch (shared_->Admit(*call.function, shared_->pool->OnWorkerThread(), refusal)) {
    case Shared::Admission::kAdmitted:
      break;
    case Shared::Admission::kInline:
      return RunInline(call);
    case Shared::Admission::kRefused:
      call.function->refusals.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(refusal);
  }
  auto [call_frame, canceller] = call.frame.WithCancel();
  auto state = std::make_shared<CallState>();
  state->shared = shared_;
  state->function = call.entry->function;
  state->version = call.entry->active;
  state->kind = call.kind;
  state->frame = std::move(call_frame);
  state->deadline = *call.frame.deadline();
  state->options = *call.merged;
  state->payload = std::string(call.payload);
  state->user_sink = call.output != nullptr ? nullptr : call.sink;
  if (!shared_->pool->Run([state] { CallState::Work(state); })) {
    shared_->Release(*call.function, /*was_quarantined=*/false);
    return absl::UnavailableError(
        absl::StrCat("function \"", call.function->name,
                     "\": no worker thread (shut down, or none could start)"));
  }
  return state->Await(call, canceller);
}

// Inline: only Record calls it, once per call.
inline std::uint64_t FunctionExecutor::NextId() {
  IdBlock& block = tls_ids;
  if (block.executor != serial_ || block.next == block.end) [[unlikely]] {
    block.next = next_id_.fetch_add(kIdBlock, std::memory_order_relaxed);
    block.end = block.next + kIdBlock;
    block.executor = serial_;
  }
  return block.next++;
}

void FunctionExecutor::Record(const DispatchCall& call, const absl::Status& status,
                              Clock::time_point start) {
  Function& function = *call.function;
  const Clock::time_point end = std::max(start, dispatch_internal::CallClock::Now());
  const int bucket = LatencyBucketOf(end - start);
  const std::uint64_t id = NextId();
  const CallerContext* caller = call.frame.Find(caller_key_);
  const std::string* trace = call.frame.Find(trace_key_);
  std::lock_guard<RecordLock> lock(function.records_mu);
  Bump(function.calls);
  Bump(function.latency[bucket]);
  if (!status.ok()) {
    Bump(function.errors);
    if (call.timed_out) Bump(function.timeouts);
    if (call.faulted) Bump(function.faults);
  }
  Function::Slot& slot = function.ring[function.next];
  if (++function.next == function.ring.size()) function.next = 0;  // no division per call
  function.count = std::min(function.count + 1, function.ring.size());
  slot.id = id;
  slot.version = call.version->number;
  slot.start = start;
  slot.end = end;
  slot.error_code = status.ok() ? absl::StatusCode::kOk : status.code();  // code() is a call
  if (status.ok()) {
    slot.error_message.clear();
  } else {
    const absl::string_view message = status.message();
    slot.error_message.assign(message.data(), message.size());
  }
  slot.output_bytes = call.output_bytes;
  slot.stats = call.stats;
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

absl::StatusOr<std::vector<InvocationRecord>> FunctionExecutor::ListInvocations(
    std::string_view name) const {
  FRAMEKIT_ASSIGN_OR_RETURN(std::shared_ptr<Function> function, Find(name));
  std::vector<InvocationRecord> out;
  std::lock_guard<RecordLock> lock(function->records_mu);
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
                   .stats = slot.stats,
                   .caller = slot.caller,
                   .trace_id = slot.trace_id});
  }
  return out;
}

absl::StatusOr<FunctionCounters> FunctionExecutor::Counters(std::string_view name) const {
  FRAMEKIT_ASSIGN_OR_RETURN(std::shared_ptr<Function> function, Find(name));
  FunctionCounters out;
  out.calls = function->calls.load(std::memory_order_relaxed);
  out.errors = function->errors.load(std::memory_order_relaxed);
  out.faults = function->faults.load(std::memory_order_relaxed);
  out.timeouts = function->timeouts.load(std::memory_order_relaxed);
  out.refusals = function->refusals.load(std::memory_order_relaxed);
  out.in_flight = function->in_flight.load(std::memory_order_relaxed);
  out.quarantined = function->quarantined.load(std::memory_order_relaxed);
  for (int i = 0; i < kLatencyBuckets; ++i) {
    out.latency[i] = function->latency[i].load(std::memory_order_relaxed);
  }
  return out;
}

int FunctionExecutor::quarantined() const {
  return shared_->quarantined.load(std::memory_order_relaxed);
}

}  // namespace framekit::dispatch
