// Guarded entry points: run an extension's code so that whatever it throws stays a fault of
// that extension and never takes down the host.
//
// One guard per lifecycle phase, each with the fallback that phase needs:
//   CallSetup     the extension's own error, or a status carrying an ExtensionPanic: the unit
//                 failed to start, the process goes on.
//   CallPoll      "no event" (an empty optional, a null pointer, ...): the step loop goes on.
//   CallTeardown, CallFinalize
//                 log and swallow: the host is shutting the unit down already.
//   HostFunc      wraps a host function of any signature into one of the same signature whose
//                 fault yields the zero value, or an error status when it returns a status.
//   Guard         the raw building block for any other error convention.
// Every fault is described (ctx's DescribeCurrentException: demangled type, message, nested
// levels, throw-site stack when SetThrowStackCapture is on) and reported to a FaultMonitor,
// which logs it (rate-limited), counts it and applies the fault policy.
//
// What is caught: everything — std::exception and subclasses, int, const char*, user types,
// std::nested_exception chains, std::bad_alloc. What is not:
//   - thread cancellation (abi::__forced_unwind) is rethrown, so pthread_cancel still unwinds
//     and ends the thread (swallowing it would abort the process);
//   - an exception thrown out of a `noexcept` function calls std::terminate at that function's
//     boundary, before any guard up the stack sees it. No guard can catch it; don't mark
//     extension entry points noexcept.
//
// Cost: on the no-fault path a guard is the direct call (zero-cost exception tables); all
// fault handling is out of line and marked cold.
//
// Example:
//   namespace fd = framekit::dispatch;
//   absl::Status started = fd::CallSetup("billing", [&] { return ext.Setup(config); });
//   while (running) {
//     std::optional<Event> event = fd::CallPoll("billing", [&] { return ext.Poll(); });
//     if (event) Handle(*event);
//   }
//   fd::CallTeardown("billing", [&] { ext.Teardown(); });
//   auto lookup = fd::HostFunc("billing", "kv.get",
//                              [&](std::string_view key) -> absl::StatusOr<std::string> {
//                                return store.Get(key);
//                              });
#ifndef FRAMEKIT_DISPATCH_GUARD_H_
#define FRAMEKIT_DISPATCH_GUARD_H_

#include <cxxabi.h>

#include <concepts>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/fault_monitor.h"

namespace framekit::dispatch {

// Names the extension a guarded call belongs to and the monitor its faults go to.
// Implicitly built from a name (then DefaultFaultMonitor() is used) or from {name, monitor}.
// Thread-compatible value type, cheap to copy (a view and a pointer).
// NOTE: holds a view of the name: the name must outlive the guarded call (always true for the
// guards' by-value parameter; HostFunc copies it).
class ExtRef {
 public:
  ExtRef(const char* name) : name_(name) {}         // NOLINT(google-explicit-constructor)
  ExtRef(std::string_view name) : name_(name) {}    // NOLINT(google-explicit-constructor)
  ExtRef(const std::string& name) : name_(name) {}  // NOLINT(google-explicit-constructor)
  ExtRef(std::string_view name, FaultMonitor& monitor) : name_(name), monitor_(&monitor) {}

  std::string_view name() const { return name_; }
  FaultMonitor& monitor() const { return monitor_ != nullptr ? *monitor_ : DefaultFaultMonitor(); }

 private:
  std::string_view name_;
  FaultMonitor* monitor_ = nullptr;
};

}  // namespace framekit::dispatch

namespace framekit::dispatch_internal {

using dispatch::ExtRef;
using dispatch::FaultReport;

template <class T>
inline constexpr bool kIsStatusOr = false;
template <class T>
inline constexpr bool kIsStatusOr<absl::StatusOr<T>> = true;

// Whether a guard returns a status for this result type.
template <class R>
inline constexpr bool kIsStatusLike = std::is_same_v<R, absl::Status> || kIsStatusOr<R>;

inline const absl::Status& StatusOf(const absl::Status& status) { return status; }
template <class T>
const absl::Status& StatusOf(const absl::StatusOr<T>& result) {
  return result.status();
}

// The fault path, out of line. Precondition: called inside a catch block. Describes the current
// exception, reports it to ext.monitor() and returns the report. `detail` is added to the log
// record. Never throws: if describing fails (out of memory) a minimal report is returned.
[[gnu::cold, gnu::noinline]] FaultReport CatchFault(ExtRef ext, Phase phase,
                                                    std::string_view detail) noexcept;

// CatchFault, then the report as a status (PanicStatus); `detail`, when non-empty, prefixes the
// message ("host function \"kv.get\": ...").
[[gnu::cold, gnu::noinline]] absl::Status CatchFaultStatus(ExtRef ext, Phase phase,
                                                           std::string_view detail) noexcept;

// CatchFault, dropping the report.
[[gnu::cold, gnu::noinline]] void CatchFaultSwallow(ExtRef ext, Phase phase,
                                                    std::string_view detail) noexcept;

// Logs a non-OK status returned (not thrown) by a teardown/finalize function at warning level.
[[gnu::cold, gnu::noinline]] void LogSwallowedStatus(ExtRef ext, Phase phase,
                                                     std::string_view detail,
                                                     const absl::Status& status) noexcept;

template <class F>
struct CallableTraits : CallableTraits<decltype(&std::remove_cvref_t<F>::operator())> {};
template <class R, class... A>
struct CallableTraits<R (*)(A...)> {
  using Signature = R(A...);
};
template <class R, class... A>
struct CallableTraits<R (*)(A...) noexcept> {
  using Signature = R(A...);
};
template <class R, class... A>
struct CallableTraits<R(A...)> {
  using Signature = R(A...);
};
#define FRAMEKIT_DISPATCH_MEMBER_TRAITS_(quals) \
  template <class C, class R, class... A>       \
  struct CallableTraits<R (C::*)(A...) quals> { \
    using Signature = R(A...);                  \
  };
FRAMEKIT_DISPATCH_MEMBER_TRAITS_()
FRAMEKIT_DISPATCH_MEMBER_TRAITS_(const)
FRAMEKIT_DISPATCH_MEMBER_TRAITS_(noexcept)
FRAMEKIT_DISPATCH_MEMBER_TRAITS_(const noexcept)
#undef FRAMEKIT_DISPATCH_MEMBER_TRAITS_

}  // namespace framekit::dispatch_internal

namespace framekit::dispatch {

// The raw building block: runs `fn()`; if it throws, reports the fault and returns
// `on_fault(FaultReport&&)`, whose result converts to fn's result type. Use it for an error
// convention the phase guards don't cover, or when the verdict matters to the caller (a process
// stops on kEvict). `detail` is added to the fault's log record.
// Thread cancellation is rethrown. `on_fault` runs inside the catch block with no framekit lock
// held; an exception it throws propagates to the caller.
// `ext` is taken by reference: a copy built beside the call would be read back as one 16-byte
// load of two narrower stores still in the store buffer, a stall on every guarded call.
template <class Fn, class OnFault>
std::invoke_result_t<Fn&> Guard(const ExtRef& ext, Phase phase, Fn&& fn, OnFault&& on_fault,
                                std::string_view detail = {}) {
  try {
    return fn();
  } catch (...) {
    ::framekit::RethrowIfForcedUnwind();
    return std::forward<OnFault>(on_fault)(dispatch_internal::CatchFault(ext, phase, detail));
  }
}

// Runs a function returning absl::Status, absl::StatusOr<T> or void under `phase` and returns
// its status (OK for void); a fault becomes an Internal status carrying the ExtensionPanic
// (IsExtensionPanic / GetExtensionPanic read it back).
template <class Fn>
auto CallStatus(ExtRef ext, Phase phase, Fn&& fn) {
  using R = std::invoke_result_t<Fn&>;
  static_assert(std::is_void_v<R> || dispatch_internal::kIsStatusLike<R>,
                "CallStatus/CallSetup: fn must return void, absl::Status or absl::StatusOr<T>");
  using Result = std::conditional_t<std::is_void_v<R>, absl::Status, R>;
  try {
    if constexpr (std::is_void_v<R>) {
      fn();
      return absl::OkStatus();
    } else {
      return Result(fn());
    }
  } catch (...) {
    ::framekit::RethrowIfForcedUnwind();
    return Result(dispatch_internal::CatchFaultStatus(ext, phase, {}));
  }
}

// Guards an extension's setup. Returns the extension's own result (absl::Status or
// absl::StatusOr<T>; OK when fn returns void); if it throws, an Internal status carrying the
// ExtensionPanic. A setup fault is a failed start, never the end of the process.
template <class Fn>
auto CallSetup(ExtRef ext, Fn&& fn) {
  return CallStatus(ext, Phase::kSetup, std::forward<Fn>(fn));
}

// Guards one poll of an extension's step loop. Returns fn's result; if it throws, the "no event"
// value R{} (an empty std::optional, a null pointer, an empty container) so the loop goes on.
// The overload with `verdict` also reports the fault policy's verdict (kContinue when no fault)
// so a step loop can stop the extension when it reaches its fault intensity.
template <class Fn>
requires std::default_initializable<std::invoke_result_t<Fn&>> std::invoke_result_t<Fn&> CallPoll(
    ExtRef ext, Fn&& fn, FaultVerdict* verdict = nullptr) {
  if (verdict != nullptr) *verdict = FaultVerdict::kContinue;
  try {
    return fn();
  } catch (...) {
    ::framekit::RethrowIfForcedUnwind();
    const FaultReport report = dispatch_internal::CatchFault(ext, Phase::kPoll, {});
    if (verdict != nullptr) *verdict = report.verdict;
    return std::invoke_result_t<Fn&>{};
  }
}

// Guards an extension's teardown: a fault is logged (and counted) and swallowed, as is a
// non-OK status the function returns (logged at warning level, not counted as a fault).
template <class Fn>
void CallTeardown(ExtRef ext, Fn&& fn) {
  using R = std::invoke_result_t<Fn&>;
  try {
    if constexpr (dispatch_internal::kIsStatusLike<R>) {
      const R result = fn();
      if (!result.ok()) {
        dispatch_internal::LogSwallowedStatus(ext, Phase::kTeardown, {},
                                              dispatch_internal::StatusOf(result));
      }
    } else {
      fn();
    }
  } catch (...) {
    ::framekit::RethrowIfForcedUnwind();
    dispatch_internal::CatchFaultSwallow(ext, Phase::kTeardown, {});
  }
}

// Guards the finalizer of one instance `id` (a pid, a handle: anything absl::StrCat formats) of
// an extension: like CallTeardown, and the id is added to the log record.
template <class Id, class Fn>
void CallFinalize(ExtRef ext, const Id& id, Fn&& fn) {
  using R = std::invoke_result_t<Fn&>;
  try {
    if constexpr (dispatch_internal::kIsStatusLike<R>) {
      const R result = fn();
      if (!result.ok()) {
        dispatch_internal::LogSwallowedStatus(ext, Phase::kFinalize, absl::StrCat("id=", id),
                                              dispatch_internal::StatusOf(result));
      }
    } else {
      fn();
    }
  } catch (...) {
    ::framekit::RethrowIfForcedUnwind();
    dispatch_internal::CatchFaultSwallow(ext, Phase::kFinalize, absl::StrCat("id=", id));
  }
}

// A host function guarded for one extension: same signature as the wrapped `F`. See HostFunc.
// Thread-safety: as the wrapped callable (calls are const when F's call operator is const).
template <class F, class Sig>
class HostFunction;

template <class F, class R, class... Args>
class HostFunction<F, R(Args...)> {
  static_assert(std::is_void_v<R> || dispatch_internal::kIsStatusLike<R> ||
                    std::is_default_constructible_v<R>,
                "HostFunc: the result must be void, a status or default-constructible (the "
                "value returned on a fault)");

 public:
  HostFunction(std::string extension, FaultMonitor* monitor, std::string fname, F fn)
      : extension_(std::move(extension)),
        monitor_(monitor),
        fname_(std::move(fname)),
        fn_(std::move(fn)) {}

  R operator()(Args... args) const requires std::invocable<const F&, Args...> {
    return Call(fn_, std::forward<Args>(args)...);
  }
  R operator()(Args... args) requires(!std::invocable<const F&, Args...>) {
    return Call(fn_, std::forward<Args>(args)...);
  }

  std::string_view extension() const { return extension_; }
  std::string_view name() const { return fname_; }

 private:
  template <class G>
  R Call(G& fn, Args&&... args) const {
    try {
      return fn(std::forward<Args>(args)...);
    } catch (...) {
      ::framekit::RethrowIfForcedUnwind();
      if constexpr (std::is_void_v<R>) {
        dispatch_internal::CatchFaultSwallow(ref(), Phase::kHost, fname_);
      } else if constexpr (dispatch_internal::kIsStatusLike<R>) {
        return R(dispatch_internal::CatchFaultStatus(ref(), Phase::kHost, fname_));
      } else {
        dispatch_internal::CatchFaultSwallow(ref(), Phase::kHost, fname_);
        return R{};
      }
    }
  }
  ExtRef ref() const {
    return monitor_ != nullptr ? ExtRef(extension_, *monitor_) : ExtRef(extension_);
  }

  std::string extension_;
  FaultMonitor* monitor_;
  std::string fname_;
  F fn_;
};

// Wraps host function `fn` (any callable with one non-template call operator, or a function
// pointer) for extension `ext`, reported under the name `fname`. The result has fn's signature;
// on a fault it returns the zero value R{} (nothing for void), or, when R is absl::Status or
// absl::StatusOr<T>, an Internal status carrying the ExtensionPanic whose message starts with
// `host function "FNAME":`. For a generic lambda, name the signature: HostFunc<int(int)>(...).
// NOTE: the monitor named in `ext` must outlive the returned function; the names are copied.
template <class F>
auto HostFunc(ExtRef ext, std::string_view fname, F fn) {
  using Sig = typename dispatch_internal::CallableTraits<F>::Signature;
  return HostFunction<F, Sig>(std::string(ext.name()), &ext.monitor(), std::string(fname),
                              std::move(fn));
}
template <class Sig, class F>
auto HostFunc(ExtRef ext, std::string_view fname, F fn) {
  return HostFunction<F, Sig>(std::string(ext.name()), &ext.monitor(), std::string(fname),
                              std::move(fn));
}

}  // namespace framekit::dispatch

#endif  // FRAMEKIT_DISPATCH_GUARD_H_
