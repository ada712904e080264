// FunctionExecutor: a registry of named, versioned handlers and the dispatcher that invokes them.
//
// Every Invoke forks the caller's frame and applies the AppContext's FrameResolvers
// generically: the executor knows nothing of networks, tenants or any other frame option; a
// new option is one resolver, and the handler finds its pair on the frame it receives. In order,
// a call
//   1. merges the function's default options with the call's (the call wins);
//   2. checks the options strictly: a key that no registered resolver declares and the executor
//      does not read itself fails the call with InvalidArgument (IsUndeclaredOption), unless
//      the executor was built with allow_undeclared_options;
//   3. checks the identity options: "caller" and "trace_id" (see kCallerOption);
//   4. forks the parent frame and applies the registry (a failure stops the call: the handler
//      never runs and the error names the resolver);
//   5. attaches the caller, trace id and deadline ("timeout_ms", or the parent frame's
//      deadline, whichever is earlier), and stops with Cancelled or DeadlineExceeded, the
//      handler unrun, when the frame is already over;
//   6. runs the interceptors;
//   7. runs the version's Code (code.h) under the invoke guard: a throw becomes an Internal
//      status carrying an ExtensionPanic with phase "invoke", reported to the fault monitor,
//      whose policy may disable the version until the next Deploy.
// A call without a deadline runs on the caller's thread. A call with one runs on a worker and
// returns DeadlineExceeded at the deadline even if the handler never returns: the call frame's
// stop token is triggered and the worker is quarantined until the handler gives up.
// Preemptive code (Code::preemptive(), e.g. a Lua function) always runs on the caller's thread,
// deadline or not: it returns by the deadline itself, so there is no worker handoff, no
// quarantine, and its calls take no in-flight budget (which exists to bound workers). Every
// other step above applies to it alike, and its RunStats reach the invocation records.
// A Handler is registered as native, non-preemptive Code (NativeCode).
//
// Bulkheads: deadline calls are admitted against per-function budgets (calls in flight, workers
// quarantined) under executor-wide hard caps, so a function whose handlers hang exhausts its own
// budget and nobody else's. An admitted call gets a thread at once (an idle worker or a new
// one): it never waits behind another call, so a handler may make nested deadline calls at any
// depth. A nested call made on a worker when the in-flight budgets are spent runs inline on that
// worker instead of being refused (see Invoke's NOTE).
//
// Example:
//   FRAMEKIT_ASSIGN_OR_RETURN(std::unique_ptr<framekit::dispatch::FunctionExecutor> executor,
//                             framekit::dispatch::FunctionExecutor::Create(app, {}));
//   FRAMEKIT_RETURN_IF_ERROR(executor->Register(
//       "greet",
//       [](const framekit::Frame& frame, std::string_view payload,
//          framekit::dispatch::Sink& out) -> absl::Status {
//         return out.Write("hello " + std::string(payload));
//       },
//       framekit::Options{{"timeout_ms", 500}}));
//   absl::StatusOr<std::string> reply =
//       executor->Invoke(parent, "greet", "world", framekit::Options{{"network", "tor"}});
//   FRAMEKIT_RETURN_IF_ERROR(executor->Shutdown(std::chrono::seconds(1)));
#ifndef FRAMEKIT_DISPATCH_FUNCTION_EXECUTOR_H_
#define FRAMEKIT_DISPATCH_FUNCTION_EXECUTOR_H_

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/key.h"
#include "framekit/ctx/options.h"
#include "framekit/dispatch/code.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/interceptors.h"
#include "framekit/dispatch/internal/caller_slots.h"

namespace framekit::dispatch {

// Option keys the executor itself reads (every option also reaches the resolvers).
// "timeout_ms": int64 > 0, the call's timeout. Zero or negative (or not an int64) is
// InvalidArgument; a huge value (up to INT64_MAX) saturates to "no deadline" (see DeadlineAfter
// in framekit/ctx/frame.h).
inline constexpr std::string_view kTimeoutOption = "timeout_ms";
// string, 1-128 of [A-Za-z0-9._:@+-]: the caller's user id, for a call whose frame has no
// caller, and only where the dispatcher allows it (allow_caller_option). A caller set on the
// frame always wins: a "caller" option on such a call fails with PermissionDenied (the request
// tried to claim an identity; refusing is the fail-closed choice), as it does where the
// dispatcher does not allow it. Not a string, or out of bounds: InvalidArgument.
inline constexpr std::string_view kCallerOption = "caller";
// string, 1-128 of [A-Za-z0-9._:-] (W3C trace ids are hex): the call's trace id; anything
// else is InvalidArgument echoing at most an escaped prefix.
inline constexpr std::string_view kTraceIdOption = "trace_id";

// The trace id a call carries (inherited by nested calls).
const Key<std::string>& TraceIdKey();

// One version of a function.
struct FunctionVersion {
  int version = 0;  // 1, 2, ... in Deploy order
  Clock::time_point deployed{};
  bool active = false;
  bool disabled = false;  // disabled by the fault policy (only ever the active version)
  // The code of this version, as registered: e.g. a lua::LuaFunction, whose source() is the
  // script it was compiled from (std::dynamic_pointer_cast to reach it). Never null.
  std::shared_ptr<const Code> code = nullptr;
};

// What Get returns.
struct FunctionInfo {
  std::string name;
  int active_version = 0;
  bool disabled = false;
  Options defaults;
};

// One finished call.
struct InvocationRecord {
  // Unique per executor; increasing in the order the calls of one thread finish. Calls of
  // different threads are numbered from different blocks of ids, so their ids need not follow
  // the order in which they finished.
  std::uint64_t id = 0;
  std::string function;
  int version = 0;
  Clock::time_point start{};  // steady clock, as deadlines are
  Clock::time_point end{};
  bool ok = false;
  absl::Status error;  // OK when ok; code and message only (payloads are not recorded)
  std::chrono::nanoseconds duration{};
  std::uint64_t output_bytes = 0;  // what reached the caller (counted by the executor)
  RunStats stats;                  // what the code reported (zeros where its runtime cannot tell)
  std::string caller;              // the caller's user id, or empty
  std::string trace_id;
};

// The latency histogram's bucket upper bounds: 1 µs, 4 µs, ..., 4^12 µs (about 16.8 s), +Inf.
inline constexpr int kLatencyBuckets = 14;
std::chrono::nanoseconds LatencyBucketBound(int bucket);
// The bucket a call of `latency` is counted in: the first whose bound is at least `latency`.
int LatencyBucketOf(std::chrono::nanoseconds latency);

// Per-function counters, a consistent-enough snapshot of relaxed atomics.
struct FunctionCounters {
  std::uint64_t calls = 0;     // every Invoke that reached the function (found and enabled)
  std::uint64_t errors = 0;    // calls that did not end OK (faults and timeouts included)
  std::uint64_t faults = 0;    // throws of this call's handler or interceptors (not a resolver's,
                               // nor a nested call's fault that a handler passes on)
  std::uint64_t timeouts = 0;  // calls that hit their deadline (or whose parent's had passed)
  std::uint64_t refusals = 0;  // deadline calls refused with ResourceExhausted (bulkheads)
  int in_flight = 0;    // deadline calls of this function admitted and not ended (a snapshot)
  int quarantined = 0;  // this function's workers stuck past a deadline (a snapshot)
  std::array<std::uint64_t, kLatencyBuckets> latency{};  // calls per latency bucket
};

struct FunctionExecutorOptions {
  // Run around every call; nullptr for none.
  std::shared_ptr<const Interceptors> interceptors = nullptr;
  // Receives handler faults and decides the fault policy: a kEvict verdict disables the
  // version that faulted until the next Deploy; kAlarm only raises the alarm. nullptr:
  // DefaultFaultMonitor(). Must outlive the executor.
  FaultMonitor* monitor = nullptr;
  // Idle worker threads kept for deadline calls (> 0). Busy workers are not bounded by it: an
  // admitted call always gets a thread, and max_in_flight bounds them.
  int deadline_workers = 4;
  // Executor-wide hard cap on workers stuck in a handler past its deadline (>= 0): while
  // max(1, max_quarantined) are quarantined, new deadline calls fail fast with
  // ResourceExhausted. 0 tolerates none beyond the one a timeout necessarily leaves behind.
  int max_quarantined = 4;
  // The same bound per function (>= 0, capped by max_quarantined): a function with
  // max(1, min(this, max_quarantined)) workers quarantined has its deadline calls refused.
  int max_quarantined_per_function = 2;
  // Executor-wide hard cap on admitted deadline calls (> 0): queued, running or quarantined.
  int max_in_flight = 64;
  // The same bound per function (> 0, capped by max_in_flight).
  int max_in_flight_per_function = 16;
  // Invocation records kept per function (> 0; ListInvocations returns the newest 100).
  int records_per_function = 128;
  // Calls of any FunctionExecutor nested on one thread's stack (> 0): a handler that invokes a
  // function that invokes a function ... past this depth gets ResourceExhausted instead of
  // overflowing its thread's stack and taking the host down with it. Each level costs about
  // 1.5 KiB of stack in framekit, plus the handler's own frames.
  int max_nesting = 128;
  // Versions kept per function (> 0), the active one included: Deploy drops the oldest past
  // this, and its code is freed once no call still runs it. Without a bound a host that
  // deploys on every change would keep every version's code (a Lua state each) forever.
  int versions_kept = 16;
  // How long the destructor's Shutdown waits for calls in flight (>= 0).
  std::chrono::milliseconds shutdown_grace{1000};
  // Whether a "caller" option may name the caller of a call whose frame has none. Off: options
  // usually come from requests, and the caller is who the host authenticated.
  bool allow_caller_option = false;
  // Opt-out of strict options: when true, an option no one declares is ignored, as before.
  // NOTE: then `network=tor` on an application without the overlay runs with no route.
  bool allow_undeclared_options = false;
  // Option keys the interceptors read (besides the executor's own and the resolvers'), so that
  // strict options accept them. Each is compared as is.
  std::vector<std::string> option_keys = {};
};

// The function registry and its dispatcher.
//
// Thread-safety: thread-safe. Configuration (Register, Deploy, Remove) may run concurrently
// with calls; a call uses the version that was active when it started.
// Lifecycle: Shutdown refuses new calls, cancels the ones in flight and waits for them with a
// bound; the destructor calls Shutdown(options.shutdown_grace). Workers still stuck after the
// bound are detached: they hold what they use (the function, its version, the interceptors, the
// call's state) by shared_ptr, so nothing they touch later is freed memory.
// NOTE: a handler still running detached after destruction must not use the executor itself
// (e.g. a captured reference to it), and the FaultMonitor must outlive such handlers.
// NOTE: calls without a deadline run on their callers' threads and cannot be cancelled; the
// destructor waits for them to return, however long that takes.
class FunctionExecutor {
 public:
  // Validates `options`: InvalidArgument naming the field for deadline_workers <= 0,
  // max_quarantined < 0, max_quarantined_per_function < 0, max_in_flight <= 0,
  // max_in_flight_per_function <= 0, records_per_function <= 0, max_nesting <= 0,
  // versions_kept <= 0 or shutdown_grace < 0.
  // `app` supplies the FrameResolvers (read at each call) and must outlive the executor.
  static absl::StatusOr<std::unique_ptr<FunctionExecutor>> Create(
      const AppContext& app, FunctionExecutorOptions options = {});
  // For existing callers: never fails, clamps each invalid field of `options` to its nearest
  // valid value. Prefer Create, which reports them.
  explicit FunctionExecutor(const AppContext& app, FunctionExecutorOptions options = {});
  // Shutdown(options.shutdown_grace), then waits for callers still inside the executor.
  ~FunctionExecutor();
  FunctionExecutor(const FunctionExecutor&) = delete;
  FunctionExecutor& operator=(const FunctionExecutor&) = delete;

  // Refuses every later call with Unavailable, cancels the calls in flight (their frames' stop
  // tokens) and waits up to `grace` for them and for the workers. OK when everything ended in
  // time; DeadlineExceeded saying how many are still running otherwise (workers left running
  // are detached safely). Idempotent: a second call waits again for what is still running.
  // May be called from a handler: the calls on the calling thread are not waited for.
  absl::Status Shutdown(std::chrono::milliseconds grace);

  // Registers `name` with `code` as version 1 and `defaults` as its default options.
  // InvalidArgument for an invalid name (1-128 of [A-Za-z0-9_.-], starting with a letter or
  // digit) or null code; AlreadyExists when `name` is registered.
  // NOTE: the executor reads code->preemptive() once, here (and in Deploy); it must not change.
  absl::Status Register(std::string name, std::shared_ptr<Code> code, Options defaults = {});
  // Register(name, NativeCode(handler), defaults); InvalidArgument for an empty handler.
  absl::Status Register(std::string name, Handler handler, Options defaults = {});
  // Records `code` as the next version of `name` and makes it active (re-enabling the
  // function if the fault policy had disabled it). Returns the new version number; the oldest
  // version is dropped past options.versions_kept. NotFound for an unknown name;
  // InvalidArgument for null code; ResourceExhausted once version numbers run out (INT_MAX).
  absl::StatusOr<int> Deploy(std::string_view name, std::shared_ptr<Code> code);
  // Deploy(name, NativeCode(handler)); InvalidArgument for an empty handler.
  absl::StatusOr<int> Deploy(std::string_view name, Handler handler);
  // The versions of `name` kept (at most options.versions_kept, the newest), oldest first.
  // NotFound for an unknown name.
  absl::StatusOr<std::vector<FunctionVersion>> ListVersions(std::string_view name) const;
  absl::StatusOr<FunctionInfo> Get(std::string_view name) const;
  // Registered names, sorted.
  std::vector<std::string> List() const;
  // Whether the active version of `name` is preemptive Code (so that Invoke runs it on the
  // calling thread, deadline or not); false for an unknown name. No lock: it reads the table
  // calls read. A Deploy may change the answer before a later Invoke.
  bool Preemptive(std::string_view name);
  // Removes `name`; calls already running finish. NotFound for an unknown name.
  absl::Status Remove(std::string_view name);

  // Invokes `name` and returns everything its handler wrote. Fails with
  //   Unavailable         the executor is shut down;
  //   NotFound            unknown function;
  //   FailedPrecondition  the active version was disabled by the fault policy;
  //   InvalidArgument     an option (the call's or the function's default) that no registered
  //                       resolver declares and the executor does not read (IsUndeclaredOption;
  //                       checked at call time, so defaults are checked against the registry
  //                       the call sees), or a bad "caller", "trace_id" or "timeout_ms";
  //   PermissionDenied    a "caller" option (see kCallerOption);
  //   the resolver's error (message `frame resolver "NAME": ...`): the handler did not run;
  //   an interceptor's status: the handler did not run;
  //   InvalidArgument     "timeout_ms" is not a positive integer;
  //   DeadlineExceeded    the deadline passed (returned at the deadline, handler or not), or
  //                       had passed before the call: then the handler did not run;
  //   Cancelled           the parent frame's scope was cancelled (before the call: the handler
  //                       did not run; during a deadline call: returned at once);
  //   ResourceExhausted   a deadline call beyond a bulkhead: this function's or the executor's
  //                       quarantined workers or calls in flight (the message says which);
  //                       or max_nesting calls already nested on this thread;
  //   Internal            the handler ended its worker thread (pthread_exit);
  //   Internal + ExtensionPanic (phase "invoke")   the handler or an interceptor threw;
  //   the handler's own status.
  // NOTE: a nested deadline call (made by a handler on a worker) that finds the in-flight
  // budgets spent runs inline on the calling worker: its handler sees the deadline and the stop
  // token of the enclosing call, but the nested caller waits for it to return.
  absl::StatusOr<std::string> Invoke(const Frame& parent, std::string_view name,
                                     std::string_view payload, const Options& options = {});
  // As Invoke, but chunks go to `sink` as the handler writes them. Returns the call's status.
  // NOTE: on a deadline call `sink` is written from a worker thread, one write at a time; after
  // InvokeStream returns, `sink` is never written again (a late write gets Cancelled).
  // NOTE: `sink` should not throw. If it does, the handler's Write returns Internal naming the
  // exception, and the throw is not counted as the function's fault: the caller's sink is not
  // the function's code.
  absl::Status InvokeStream(const Frame& parent, std::string_view name, std::string_view payload,
                            const Options& options, Sink& sink);

  // The newest min(100, records_per_function) records of `name`, newest first. NotFound for an
  // unknown name.
  absl::StatusOr<std::vector<InvocationRecord>> ListInvocations(std::string_view name) const;
  absl::StatusOr<FunctionCounters> Counters(std::string_view name) const;
  // Workers currently stuck in a handler past its deadline, all functions together.
  int quarantined() const;

 private:
  struct Version;
  struct Function;
  struct CallState;
  struct Shared;
  struct DispatchCall;
  struct Table;
  struct RetiredTable;

  absl::Status Dispatch(DispatchCall& call);
  absl::Status PrepareFrame(DispatchCall& call);
  absl::Status RunInline(DispatchCall& call);
  absl::Status RunPreemptive(DispatchCall& call);
  absl::Status RunWithDeadline(DispatchCall& call);
  void Record(const DispatchCall& call, const absl::Status& status, Clock::time_point start);
  // A new invocation id: from the calling thread's block of ids of this executor, taking the
  // next block from next_id_ (one atomic read-modify-write per kIdBlock calls, not per call).
  std::uint64_t NextId();
  // The function registered as `name`, or NotFound. The caller holds mu_.
  absl::StatusOr<std::shared_ptr<Function>> FindLocked(std::string_view name) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // FindLocked under mu_.
  absl::StatusOr<std::shared_ptr<Function>> Find(std::string_view name) const;
  // The call's function and active version, from the published table (no lock, no reference
  // count: the call's entry into the executor keeps the table alive, see Enter).
  absl::Status Lookup(DispatchCall& call) const;
  // Publishes a table built from functions_ and retires the previous one; frees the retired
  // tables no call can still read, appending them to `freed` (destroyed by the caller after it
  // releases mu_: destroying a function may run user code, its handler's destructor).
  void PublishLocked(std::vector<RetiredTable>& freed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A call entering the executor: counts it in the calling thread's slot (see CallerSlots),
  // which it returns for CallerSlots::Leave.
  dispatch_internal::CallerSlots::Slot* Enter() { return callers_.Enter(epoch_); }
  // Calls inside Dispatch, on every thread.
  int Callers() const { return callers_.Count(); }
  // Waits until no call but the calling thread's own is inside the executor, or `until`.
  bool WaitForCallers(Deadline until);

  const AppContext& app_;
  const FunctionExecutorOptions options_;
  const std::shared_ptr<Shared> shared_;
  // The next block of invocation ids (see NextId).
  std::atomic<std::uint64_t> next_id_{1};
  // Distinguishes this executor from any other, one at the same address included: the key of
  // each thread's block of ids.
  const std::uint64_t serial_;
  // Calls inside Dispatch (on callers' threads), each thread's in its own slot with the epoch
  // its outermost call entered in: for Shutdown, the destructor and the reclamation of
  // retired tables. A call enters (its slot), then reads shut_down_ and table_; a writer sets
  // shut_down_ or publishes a table and advances epoch_, then reads the slots: CallerSlots
  // orders the two so that they cannot both miss each other.
  dispatch_internal::CallerSlots callers_;
  std::atomic<std::uint64_t> epoch_{0};
  std::atomic<bool> shut_down_{false};

  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Function>> functions_ ABSL_GUARDED_BY(mu_);
  // The immutable table calls read: one load, no lock. Replaced (copy on write) under mu_.
  std::atomic<const Table*> table_;
  // Tables replaced while calls may still read them, each with the epoch it was retired in.
  std::vector<RetiredTable> retired_ ABSL_GUARDED_BY(mu_);
  // The keys strict options accept besides the resolvers': the executor's and options_'s.
  const std::vector<std::string_view> own_option_keys_ = OwnOptionKeys(options_);
  // The keys every call's record reads, looked up once (each accessor checks its static's
  // guard on every call).
  const Key<CallerContext>& caller_key_ = CallerKey();
  const Key<std::string>& trace_key_ = TraceIdKey();
  static std::vector<std::string_view> OwnOptionKeys(const FunctionExecutorOptions& options);
};

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_FUNCTION_EXECUTOR_H_
