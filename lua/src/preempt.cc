// Asynchronous preemption: the per-thread timer and the signal handler (see preempt.h).
#include "framekit/lua/internal/preempt.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <stop_token>

#include "framekit/lua/internal/sandbox.h"
#include "lua.h"

namespace framekit::lua_internal {
namespace {

constexpr int kSignal = SIGURG;  // ignored by default: a stray one harms nobody
// After the deadline the timer fires again at this interval until the call ends: a safety net,
// the first signal normally ends the call.
constexpr auto kRefire = std::chrono::milliseconds(1);

// The value our timer and our cancellation signals carry, telling them from anyone else's.
char kMarker;

std::int64_t NanosOf(Deadline deadline) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(deadline.time_since_epoch()).count();
}

// Everything the handler reads, per OS thread. Constant-initialised TLS, made ready by the
// thread before any of our signals can target it. The handler runs on the same thread, so the
// fields need atomicity against interruption only (relaxed atomics and signal fences).
struct ThreadCall {
  std::atomic<CallState*> call{nullptr};
  std::atomic<lua_State*> running{nullptr};
  std::atomic<std::int64_t> deadline{0};  // of the current call, steady-clock nanoseconds
  // When the timer fires next (0: disarmed). It may claim a later time than the timer's, never
  // an earlier one (see EnsureArmedBy).
  std::atomic<std::int64_t> armed{0};
  timer_t timer{};
  bool timer_ok = false;
};
thread_local ThreadCall tls_call;

struct sigaction previous_action;

void ArmAt(ThreadCall& t, std::int64_t when_ns) {
  t.armed.store(when_ns, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  struct itimerspec spec = {};
  spec.it_value.tv_sec = static_cast<time_t>(when_ns / 1'000'000'000);
  spec.it_value.tv_nsec = static_cast<long>(when_ns % 1'000'000'000);
  timer_settime(t.timer, TIMER_ABSTIME, &spec, nullptr);
}

bool IsOurs(const siginfo_t* info) {
  return info != nullptr && (info->si_code == SI_TIMER || info->si_code == SI_QUEUE) &&
         info->si_value.sival_ptr == &kMarker;
}

// Our signal: past the deadline (or cancelled) the running Lua thread gets the interrupt hook
// and the timer a safety-net refire; early (the timer was armed for an earlier call) the timer
// is armed again for this call's deadline.
void OnOurSignal(const siginfo_t* info) {
  ThreadCall& t = tls_call;
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (info->si_code == SI_TIMER) t.armed.store(0, std::memory_order_relaxed);
  CallState* cs = t.call.load(std::memory_order_relaxed);
  lua_State* L = t.running.load(std::memory_order_relaxed);
  if (cs == nullptr || L == nullptr) return;
  const std::int64_t now = NanosOf(Clock::now());
  const std::int64_t deadline = t.deadline.load(std::memory_order_relaxed);
  if (info->si_code == SI_QUEUE || now >= deadline) {
    InstallInterruptHook(L);
    if (info->si_code == SI_TIMER) ArmAt(t, now + std::chrono::nanoseconds(kRefire).count());
  } else if (t.armed.load(std::memory_order_relaxed) == 0) {
    ArmAt(t, deadline);
  }
}

void OnSignal(int signo, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  if (IsOurs(info)) {
    OnOurSignal(info);
  } else if ((previous_action.sa_flags & SA_SIGINFO) != 0) {
    if (previous_action.sa_sigaction != nullptr) previous_action.sa_sigaction(signo, info, context);
  } else if (previous_action.sa_handler != SIG_DFL && previous_action.sa_handler != SIG_IGN &&
             previous_action.sa_handler != nullptr) {
    previous_action.sa_handler(signo);
  }
  errno = saved_errno;
}

bool InstallHandler() {
  static const bool installed = [] {
    struct sigaction action = {};
    action.sa_sigaction = OnSignal;
    action.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(kSignal, &action, &previous_action) != 0) {
      std::fprintf(stderr, "framekit lua: cannot install the preemption signal handler\n");
      return false;
    }
    return true;
  }();
  return installed;
}

// Deletes this thread's timer when the thread ends.
struct TimerOwner {
  ~TimerOwner() {
    if (tls_call.timer_ok) timer_delete(tls_call.timer);
  }
};

// This thread's timer, made on its first watched call. It signals this thread only
// (SIGEV_THREAD_ID): the kernel delivers the signal at expiry, with no other thread to be
// scheduled first.
bool EnsureTimer() {
  thread_local TimerOwner owner;
  thread_local bool tried = false;
  if (tried) return tls_call.timer_ok;
  tried = true;
  if (!InstallHandler()) return false;
  struct sigevent event = {};
  event.sigev_notify = SIGEV_THREAD_ID;
  event.sigev_signo = kSignal;
  event.sigev_value.sival_ptr = &kMarker;
#ifdef sigev_notify_thread_id
  event.sigev_notify_thread_id = gettid();
#else
  event._sigev_un._tid = gettid();
#endif
  tls_call.timer_ok = timer_create(CLOCK_MONOTONIC, &event, &tls_call.timer) == 0;
  if (!tls_call.timer_ok) {
    std::fprintf(stderr, "framekit lua: timer_create failed (errno %d)\n", errno);
  }
  return tls_call.timer_ok;
}

// Arms the timer for `due` unless it is armed already for no later a time. Once: if our signal
// lands meanwhile, its handler has either re-armed the timer for this call's deadline or, past
// it, hooked the call (re-arming here in a loop would livelock when `due` is already past: each
// arming fires at once).
void EnsureArmedBy(ThreadCall& t, std::int64_t due) {
  const std::int64_t armed = t.armed.load(std::memory_order_relaxed);
  if (armed != 0 && armed <= due) return;
  ArmAt(t, due);
}

}  // namespace

void SetRunning(lua_State* L) {
  tls_call.running.store(L, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

lua_State* Running() { return tls_call.running.load(std::memory_order_relaxed); }

namespace {

// Whether our signal can reach this thread now: the thread does not block it (threads of
// runtimes that take signals on one dedicated thread block it) and our handler is still the
// installed one (an application or a runtime loaded later may have replaced it). Two system
// calls that change nothing; when either answer is no, the call falls back to a count hook.
bool SignalReachesThisThread() {
  sigset_t mask;
  if (pthread_sigmask(SIG_BLOCK, nullptr, &mask) != 0 || sigismember(&mask, kSignal) == 1) {
    return false;
  }
  struct sigaction current = {};
  if (sigaction(kSignal, nullptr, &current) != 0 || (current.sa_flags & SA_SIGINFO) == 0 ||
      current.sa_sigaction != OnSignal) {
    static std::once_flag warned;
    std::call_once(warned, [] {
      std::fprintf(stderr,
                   "framekit lua: the SIGURG handler was replaced; Lua calls fall back to a "
                   "count hook\n");
    });
    return false;
  }
  return true;
}

}  // namespace

Watch::Watch(CallState& cs, lua_State* L, Deadline deadline) : thread_(pthread_self()) {
  armed_ = EnsureTimer() && SignalReachesThisThread();
  if (!armed_) return;
  ThreadCall& t = tls_call;
  // A call nested in another on this thread (a script's host.invoke of a Lua function) hides
  // the outer one until it ends.
  previous_call_ = t.call.load(std::memory_order_relaxed);
  previous_running_ = t.running.load(std::memory_order_relaxed);
  previous_deadline_ = t.deadline.load(std::memory_order_relaxed);
  const std::int64_t due = NanosOf(deadline);
  t.call.store(nullptr, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t.running.store(L, std::memory_order_relaxed);
  t.deadline.store(due, std::memory_order_relaxed);
  t.call.store(&cs, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  // Within nested calls the timer stays armed for the earliest deadline (an early signal
  // re-arms it, see OnOurSignal); the outermost call disarms it when it ends.
  EnsureArmedBy(t, due);
}

Watch::~Watch() {
  if (!armed_) return;
  ThreadCall& t = tls_call;
  t.call.store(nullptr, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  t.running.store(previous_running_, std::memory_order_relaxed);
  t.deadline.store(previous_deadline_, std::memory_order_relaxed);
  t.call.store(previous_call_, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  if (previous_call_ != nullptr) {
    EnsureArmedBy(t, previous_deadline_);
  } else if (t.armed.load(std::memory_order_relaxed) != 0) {
    // Disarmed when the outermost call ends: a timer left armed would signal the thread later,
    // in the application's own code, where a blocking call (nanosleep, poll, epoll_wait, a read
    // with a timeout) then fails with EINTR whatever SA_RESTART says.
    ArmAt(t, 0);
  }
}

void Watch::Interrupt() const {
  if (!armed_) return;
  union sigval value;
  value.sival_ptr = &kMarker;
  pthread_sigqueue(thread_, kSignal, value);
}

class SignalUpgrade {
 public:
  explicit SignalUpgrade(lua_State* main) : main_(main) {}

  void Upgrade(lua_State* running, CallState& cs) {
    watch_.emplace(cs, running, cs.deadline);
    if (!watch_->armed()) {  // the signal cannot reach this thread: the count hook stays
      watch_.reset();
      return;
    }
    cs.interrupt_hook = true;
    // Off on the running thread and the call's main thread; a coroutine made meanwhile
    // inherited the hook and removes it at its next firing (Hook, cs.interrupt_hook).
    lua_sethook(running, nullptr, 0, 0);
    lua_sethook(main_, nullptr, 0, 0);
    on_stop_.emplace(cs.stop, Interrupter{&*watch_});
  }

 private:
  struct Interrupter {
    const Watch* watch;
    void operator()() const { watch->Interrupt(); }
  };
  lua_State* const main_;
  std::optional<Watch> watch_;
  std::optional<std::stop_callback<Interrupter>> on_stop_;  // destroyed before watch_
};

void UpgradeToSignal(lua_State* L, CallState& cs) {
  SignalUpgrade* upgrade = cs.upgrade;
  cs.upgrade = nullptr;
  upgrade->Upgrade(L, cs);
}

absl::Status RunPreempted(CallState& cs, lua_State* L, absl::FunctionRef<absl::Status()> body) {
  if (!cs.interrupt_hook) return body();
  // The Lua thread running is tracked from the start (the coroutine wrappers keep it), for the
  // signal handler after a hand-over; restored last, after the watch's own restore.
  // The call's preemption mode is restored too: a process's next step starts the same way.
  struct Restore {
    CallState& cs;
    lua_State* previous = Running();
    ~Restore() {
      SetRunning(previous);
      cs.upgrade = nullptr;
      cs.interrupt_hook = true;
      cs.hook_period = 0;
    }
  } restore{cs};
  SetRunning(L);
  // The first instructions under a count hook.
  cs.interrupt_hook = false;
  cs.hook_period = kFallbackHookPeriod;
  SignalUpgrade upgrade(L);  // ends before `restore`: its stop callback, then its watch
  cs.upgrade = &upgrade;
  InstallHook(L, cs.hook_period);
  absl::Status status = body();
  lua_sethook(L, nullptr, 0, 0);
  return status;
}

}  // namespace framekit::lua_internal
