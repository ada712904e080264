// Asynchronous preemption: the per-thread timer and the signal handler (see preempt.h).
#include "framekit/lua/internal/preempt.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <mutex>

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

struct ThreadCall {
  std::atomic<CallState*> call{nullptr};
  std::atomic<lua_State*> running{nullptr};
};
// Constant-initialised TLS, touched by the thread before any of our signals can target it.
thread_local ThreadCall tls_call;

struct sigaction previous_action;

bool IsOurs(const siginfo_t* info) {
  return info != nullptr && (info->si_code == SI_TIMER || info->si_code == SI_QUEUE) &&
         info->si_value.sival_ptr == &kMarker;
}

void OnSignal(int signo, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  if (IsOurs(info)) {
    std::atomic_signal_fence(std::memory_order_acquire);
    lua_State* L = tls_call.running.load(std::memory_order_relaxed);
    if (tls_call.call.load(std::memory_order_relaxed) != nullptr && L != nullptr) {
      InstallInterruptHook(L);
    }
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

// This thread's timer, made on its first watched call and deleted when the thread ends. It
// signals this thread only (SIGEV_THREAD_ID): the kernel delivers the signal at expiry, with
// no other thread to be scheduled first.
class ThreadTimer {
 public:
  ThreadTimer() {
    if (!InstallHandler()) return;
    struct sigevent event = {};
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = kSignal;
    event.sigev_value.sival_ptr = &kMarker;
#ifdef sigev_notify_thread_id
    event.sigev_notify_thread_id = gettid();
#else
    event._sigev_un._tid = gettid();
#endif
    ok_ = timer_create(CLOCK_MONOTONIC, &event, &timer_) == 0;
    if (!ok_) std::fprintf(stderr, "framekit lua: timer_create failed (errno %d)\n", errno);
  }
  ~ThreadTimer() {
    if (ok_) timer_delete(timer_);
  }
  ThreadTimer(const ThreadTimer&) = delete;
  ThreadTimer& operator=(const ThreadTimer&) = delete;

  bool ok() const { return ok_; }

  void Arm(Deadline deadline) {
    const auto since = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::max(deadline, Deadline(Clock::duration(1))).time_since_epoch());
    struct itimerspec spec = {};
    spec.it_value.tv_sec = static_cast<time_t>(since.count() / 1'000'000'000);
    spec.it_value.tv_nsec = static_cast<long>(since.count() % 1'000'000'000);
    spec.it_interval.tv_nsec = std::chrono::nanoseconds(kRefire).count();
    timer_settime(timer_, TIMER_ABSTIME, &spec, nullptr);
  }

  void Disarm() {
    const struct itimerspec spec = {};
    timer_settime(timer_, 0, &spec, nullptr);
  }

 private:
  bool ok_ = false;
  timer_t timer_{};
};

ThreadTimer& Timer() {
  thread_local ThreadTimer timer;
  return timer;
}

}  // namespace

void SetRunning(lua_State* L) {
  tls_call.running.store(L, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

lua_State* Running() { return tls_call.running.load(std::memory_order_relaxed); }

Watch::Watch(CallState& cs, lua_State* L, Deadline deadline) : thread_(pthread_self()) {
  ThreadTimer& timer = Timer();
  armed_ = timer.ok();
  if (!armed_) return;
  tls_call.running.store(L, std::memory_order_relaxed);
  tls_call.call.store(&cs, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  timer.Arm(deadline);
}

Watch::~Watch() {
  if (!armed_) return;
  Timer().Disarm();
  tls_call.call.store(nullptr, std::memory_order_relaxed);
  tls_call.running.store(nullptr, std::memory_order_relaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

void Watch::Interrupt() const {
  if (!armed_) return;
  union sigval value;
  value.sival_ptr = &kMarker;
  pthread_sigqueue(thread_, kSignal, value);
}

}  // namespace framekit::lua_internal
