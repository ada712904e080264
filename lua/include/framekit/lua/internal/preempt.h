// Internal: asynchronous preemption of Lua calls. A hook makes Lua 5.4 send every VM instruction
// through its trace path (about 2x on a CPU-bound script, whatever the count), so by default a
// call that runs past its first thousand instructions runs with no hook at all (a shorter one
// runs under a count hook: the signal's set-up costs system calls, the hook costs little over
// a thousand instructions). Each OS thread that runs calls owns a POSIX timer that signals
// that thread only (SIGEV_THREAD_ID, SIGURG). A call arms it for its deadline unless it is
// armed already for no later a time (an outer call on the thread), and the outermost call
// disarms it when it ends: a timer left armed would interrupt the application's own blocking
// calls on that thread later (EINTR). A signal that comes before the current call's deadline
// (armed for an earlier call) re-arms the timer for it. A call on a thread that blocks SIGURG,
// or after someone replaced our handler, cannot be signalled: it runs under a count hook instead.
// The handler, running on that thread, installs a count hook on the Lua thread running there (the
// lua.c interrupt pattern: lua_sethook is safe to call from a signal handler), and the hook ends
// the call. Cancellation sends the same signal with pthread_sigqueue from the stop callback. Past
// the deadline the handler re-arms the timer one millisecond ahead, a safety net for a signal that
// lands at an unlucky moment. Our signals carry a marker value; any other SIGURG goes to the
// handler installed before ours. A host function running when the signal lands may see EINTR from a
// call SA_RESTART does not restart (poll, sleeps): it is past its deadline then.
#ifndef FRAMEKIT_LUA_INTERNAL_PREEMPT_H_
#define FRAMEKIT_LUA_INTERNAL_PREEMPT_H_

#include <pthread.h>

#include <atomic>
#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "framekit/ctx/frame.h"

struct lua_State;

namespace framekit::lua_internal {

struct CallState;

// Whether this build preempts by signal. ThreadSanitizer defers asynchronous signals until the
// thread enters its runtime, which a pure Lua loop never does: that build keeps a count hook.
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kSignalPreemption = false;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kSignalPreemption = false;
#else
inline constexpr bool kSignalPreemption = true;
#endif
#else
inline constexpr bool kSignalPreemption = true;
#endif

// The count hook's period where signal preemption is unavailable.
inline constexpr int kFallbackHookPeriod = 1000;

// Runs `body` (one call or step on L, whose allocator's userdata is `cs`) preemptible. With
// cs.interrupt_hook: the call starts under a count hook every kFallbackHookPeriod instructions
// (a short call, most calls, ends before it fires and costs no system call at all); the hook's
// first firing hands the call over to the signal (UpgradeToSignal): the timer armed for
// cs.deadline, cs.stop interrupting, and the count hook removed, so a long script runs with no
// hook. Where the signal cannot reach the thread the count hook stays. Without
// cs.interrupt_hook (a count hook is installed), just `body`.
absl::Status RunPreempted(CallState& cs, lua_State* L, absl::FunctionRef<absl::Status()> body);

// What RunPreempted keeps for the hand-over (cs.upgrade while it is pending).
class SignalUpgrade;

// Called by the count hook on L (the Lua thread running) when cs.upgrade is set: watches the
// call by signal from now on (clears cs.upgrade either way).
void UpgradeToSignal(lua_State* L, CallState& cs);

// The Lua thread running on this OS thread for the current call: what the signal handler hooks.
// Set by the call and by the coroutine wrappers; read by the handler on the same thread.
void SetRunning(lua_State* L);
lua_State* Running();

// Watches one call on the calling thread from construction to destruction: the call's state is
// what the signal handler finds, and this thread's timer signals it at `deadline`.
// Thread-compatible: made and destroyed on the call's thread.
class Watch {
 public:
  Watch(CallState& cs, lua_State* L, Deadline deadline);
  ~Watch();
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // False when this thread has no timer (timer_create failed): the caller then needs a count
  // hook.
  bool armed() const { return armed_; }

  // Interrupts the watched thread (the signal). Thread-safe; used by the stop callback.
  void Interrupt() const;

 private:
  pthread_t thread_;
  bool armed_ = false;
  // The call this one is nested in on this thread, if any: watched again when this one ends.
  CallState* previous_call_ = nullptr;
  lua_State* previous_running_ = nullptr;
  std::int64_t previous_deadline_ = 0;
};

}  // namespace framekit::lua_internal

#endif  // FRAMEKIT_LUA_INTERNAL_PREEMPT_H_
