// ExtensionPanic: the record of a fault (an exception) thrown by user code, and the one
// primitive that turns "whatever was thrown" into it.
//
// framekit never lets an exception cross its public API. Where it runs user code (resolvers,
// handlers, extension lifecycles) it catches everything, describes the exception as an
// ExtensionPanic and returns it as the payload of a non-OK absl::Status. The richer guards
// (logging, rate limits, fault policy) live in framekit/dispatch/guard.h and build on this.
//
// Example:
//   absl::Status status = framekit::IsolateStatus("billing", framekit::Phase::kSetup,
//                                                 [&] { return ext.Setup(); });
//   if (std::optional<framekit::ExtensionPanic> panic = framekit::GetExtensionPanic(status)) {
//     std::cerr << panic->type << ": " << panic->message << "\n";
//   }
#ifndef FRAMEKIT_CTX_PANIC_H_
#define FRAMEKIT_CTX_PANIC_H_

#include <cxxabi.h>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace framekit {

// The lifecycle phase a fault happened in.
enum class Phase { kSetup, kPoll, kTeardown, kFinalize, kHost, kResolve, kInvoke };

// The number of phases, for tables indexed by phase.
// NOTE: kInvoke must stay the last enumerator; a new phase goes before it.
inline constexpr std::size_t kPhaseCount = static_cast<std::size_t>(Phase::kInvoke) + 1;

// "setup", "poll", "teardown", "finalize", "host", "resolve", "invoke".
std::string_view PhaseName(Phase phase);

// A fault thrown by user code.
struct ExtensionPanic {
  std::string extension;  // the extension, handler or resolver that threw
  Phase phase = Phase::kInvoke;
  std::string type;     // demangled type of the thrown object, e.g. "std::runtime_error"
  std::string message;  // what(), or the thrown int / string rendered as text
  std::vector<std::string> nested;  // "type: message" of each std::nested_exception level
  std::string stack;                // symbolized stack at the throw site, when capture is on

  friend bool operator==(const ExtensionPanic&, const ExtensionPanic&) = default;
};

// The payload type URL under which an ExtensionPanic travels in an absl::Status.
inline constexpr std::string_view kExtensionPanicUrl = "type.framekit/ExtensionPanic";

// Describes the exception being handled. Precondition: called inside a catch block.
// The stack is the one captured when the exception was thrown, if capture was enabled
// (see SetThrowStackCapture); empty otherwise.
ExtensionPanic DescribeCurrentException(std::string_view extension, Phase phase);

// Internal-code status "extension \"E\" threw in phase P: TYPE: MESSAGE" carrying `panic`.
absl::Status PanicStatus(const ExtensionPanic& panic);

// `status` as one readable line for logs: "CODE: message" as Status::ToString has it, but an
// ExtensionPanic payload is rendered field by field ([ExtensionPanic extension="E" phase="P"
// type="T" message="M" nested=[...] stack_frames=N]) instead of as its raw length-prefixed
// bytes, and any other payload, and the message, with non-printable bytes escaped. framekit
// logs every status through it.
std::string StatusToString(const absl::Status& status);

// Whether `status` carries an ExtensionPanic.
bool IsExtensionPanic(const absl::Status& status);
// The ExtensionPanic `status` carries, or nullopt.
std::optional<ExtensionPanic> GetExtensionPanic(const absl::Status& status);

// Precondition: called inside a catch block. Rethrows the current exception when it is thread
// cancellation (abi::__forced_unwind), which must unwind the thread; returns otherwise. Every
// catch-all in framekit calls it first.
// Out of line and in one place because the handler `catch (abi::__forced_unwind&)` binds a
// reference to an exception with no C++ object, which UBSan's null check reports; this function
// opts out of that one check (the attribute is not honoured on templates).
[[gnu::cold, gnu::noinline]] void RethrowIfForcedUnwind();

// Runs `fn` (returning absl::Status) and returns its status; if it throws, returns
// PanicStatus(DescribeCurrentException(extension, phase)). Thread cancellation
// (abi::__forced_unwind) is rethrown: it must unwind the thread.
// NOTE: an exception thrown out of a `noexcept` function calls std::terminate before any
// handler runs; no guard can catch it.
template <class Fn>
absl::Status IsolateStatus(std::string_view extension, Phase phase, Fn&& fn) {
  try {
    return fn();
  } catch (...) {
    RethrowIfForcedUnwind();
    return PanicStatus(DescribeCurrentException(extension, phase));
  }
}

// Throw-site stack capture: when on, every C++ throw in the process records its stack (glibc
// backtrace(), which follows the unwind tables and so works without frame pointers) together
// with the thrown type in a thread-local slot; DescribeCurrentException symbolizes it (abseil
// symbolizer) when the exception being handled has that type. Off by default; when off, a throw
// costs one relaxed atomic load and one thread-local read more, and the no-fault path nothing.
// Returns the previous setting.
// NOTE: an exception rethrown with std::rethrow_exception, or carried to another thread in an
// exception_ptr, does not pass through the hook: its stack is empty rather than wrong.
// Memory ordering: the setting is one relaxed atomic flag; a throw racing with a change on
// another thread may or may not capture, and nothing else is published through it.
bool SetThrowStackCapture(bool enabled);
bool ThrowStackCaptureEnabled();

}  // namespace framekit

#endif  // FRAMEKIT_CTX_PANIC_H_
