#include "framekit/ctx/panic.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <execinfo.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <typeinfo>

#include "absl/debugging/symbolize.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "framekit/base/internal/strings.h"

namespace framekit {

using base_internal::AsAbsl;
namespace {

constexpr int kMaxThrowFrames = 48;

std::atomic<bool> g_capture_throw_stack{false};

// The stack of the most recent throw on this thread, recorded by the __cxa_throw hook below,
// with the type thrown so that DescribeCurrentException never attributes it to another exception.
struct ThrowStack {
  void* pcs[kMaxThrowFrames];
  int depth = 0;
  const std::type_info* type = nullptr;
};
thread_local ThrowStack t_throw_stack;

std::string Demangle(const char* mangled) {
  if (mangled == nullptr) return "unknown";
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(mangled, nullptr, nullptr, &status), &std::free);
  return status == 0 && demangled != nullptr ? std::string(demangled.get()) : std::string(mangled);
}

std::string CurrentTypeName() {
  return Demangle(abi::__cxa_current_exception_type() == nullptr
                      ? nullptr
                      : abi::__cxa_current_exception_type()->name());
}

// The text of the exception `e`; called from a catch(...) handler with `e` current.
std::string MessageOf(const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return ex.what();
  } catch (const char* s) {
    return s == nullptr ? std::string("(null)") : std::string(s);
  } catch (const std::string& s) {
    return s;
  } catch (int v) {
    return std::to_string(v);
  } catch (long v) {
    return std::to_string(v);
  } catch (long long v) {
    return std::to_string(v);
  } catch (unsigned v) {
    return std::to_string(v);
  } catch (unsigned long v) {
    return std::to_string(v);
  } catch (double v) {
    return std::to_string(v);
  } catch (...) {
    return "thrown object of type " + CurrentTypeName();
  }
}

// "type: message" for each std::nested_exception level below `e`.
void CollectNested(const std::exception_ptr& e, std::vector<std::string>& out, int depth) {
  if (depth >= 16) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::nested_exception& nested) {
    const std::exception_ptr inner = nested.nested_ptr();
    if (inner == nullptr) return;
    try {
      std::rethrow_exception(inner);
    } catch (...) {
      out.push_back(CurrentTypeName() + ": " + MessageOf(inner));
    }
    CollectNested(inner, out, depth + 1);
  } catch (...) {
  }
}

std::string SymbolizeStack(const ThrowStack& stack) {
  std::string out;
  char symbol[1024];
  for (int i = 0; i < stack.depth; ++i) {
    const char* name = "??";
    if (absl::Symbolize(stack.pcs[i], symbol, sizeof(symbol))) name = symbol;
    absl::StrAppendFormat(&out, "#%d %p %s\n", i, stack.pcs[i], name);
  }
  return out;
}

// Payload encoding: each field as "<length>:<bytes>", nested prefixed by its count.
void PutField(std::string& out, std::string_view field) {
  absl::StrAppend(&out, field.size(), ":", AsAbsl(field));
}

bool GetField(std::string_view& in, std::string& field) {
  const std::size_t colon = in.find(':');
  if (colon == std::string_view::npos) return false;
  std::uint64_t length = 0;
  if (!absl::SimpleAtoi(AsAbsl(in.substr(0, colon)), &length)) return false;
  in.remove_prefix(colon + 1);
  if (length > in.size()) return false;
  field.assign(in.substr(0, length));
  in.remove_prefix(length);
  return true;
}

// `value` with control, DEL and non-ASCII bytes as \xNN (and `"`, `\` escaped when quoting), so a
// log record stays one printable line.
std::string EscapeText(std::string_view value, bool quoting) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f) {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 0xf];
    } else if (quoting && (c == '"' || c == '\\')) {
      out += '\\';
      out += c;
    } else {
      out += c;
    }
  }
  return out;
}

std::string QuoteField(std::string_view value) {
  return absl::StrCat("\"", EscapeText(value, true), "\"");
}

// extension="E" phase="P" type="T" message="M" nested=["..."] stack_frames=N: one line, every
// byte outside printable ASCII escaped. The stack is counted, not printed: a status is a
// summary; the fault record carries the stack.
std::string DescribePanicFields(const ExtensionPanic& panic) {
  std::string out = absl::StrCat(
      "extension=", QuoteField(panic.extension), " phase=", QuoteField(PhaseName(panic.phase)),
      " type=", QuoteField(panic.type), " message=", QuoteField(panic.message), " nested=[");
  for (std::size_t i = 0; i < panic.nested.size(); ++i) {
    absl::StrAppend(&out, i == 0 ? "" : ", ", QuoteField(panic.nested[i]));
  }
  const std::size_t frames =
      static_cast<std::size_t>(std::count(panic.stack.begin(), panic.stack.end(), '\n') +
                               (!panic.stack.empty() && panic.stack.back() != '\n' ? 1 : 0));
  absl::StrAppend(&out, "] stack_frames=", frames);
  return out;
}

}  // namespace

__attribute__((no_sanitize("null"))) void RethrowIfForcedUnwind() {
  try {
    throw;
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
  }
}

std::string_view PhaseName(Phase phase) {
  switch (phase) {
    case Phase::kSetup:
      return "setup";
    case Phase::kPoll:
      return "poll";
    case Phase::kTeardown:
      return "teardown";
    case Phase::kFinalize:
      return "finalize";
    case Phase::kHost:
      return "host";
    case Phase::kResolve:
      return "resolve";
    case Phase::kInvoke:
      return "invoke";
  }
  return "unknown";
}

ExtensionPanic DescribeCurrentException(std::string_view extension, Phase phase) {
  ExtensionPanic panic;
  panic.extension = std::string(extension);
  panic.phase = phase;
  if (t_throw_stack.depth > 0) {
    // Only the stack of the exception being handled: a rethrow through std::rethrow_exception
    // (or an exception_ptr carried from another thread) never passed through the hook.
    const std::type_info* current = abi::__cxa_current_exception_type();
    if (current != nullptr && t_throw_stack.type != nullptr && *current == *t_throw_stack.type) {
      panic.stack = SymbolizeStack(t_throw_stack);
    }
    t_throw_stack.depth = 0;
  }
  panic.type = CurrentTypeName();
  const std::exception_ptr current = std::current_exception();
  if (current == nullptr) {
    panic.message = "no exception is being handled";
    return panic;
  }
  panic.message = MessageOf(current);
  CollectNested(current, panic.nested, 0);
  return panic;
}

absl::Status PanicStatus(const ExtensionPanic& panic) {
  const std::string_view phase = PhaseName(panic.phase);
  absl::Status status(absl::StatusCode::kInternal,
                      absl::StrCat("extension \"", panic.extension, "\" threw in ", AsAbsl(phase),
                                   ": ", panic.type, ": ", panic.message));
  std::string payload;
  PutField(payload, panic.extension);
  PutField(payload, phase);
  PutField(payload, panic.type);
  PutField(payload, panic.message);
  PutField(payload, std::to_string(panic.nested.size()));
  for (const std::string& level : panic.nested) PutField(payload, level);
  PutField(payload, panic.stack);
  status.SetPayload(AsAbsl(kExtensionPanicUrl), absl::Cord(payload));
  return status;
}

std::string StatusToString(const absl::Status& status) {
  if (status.ok()) return "OK";
  std::string out = absl::StrCat(
      absl::StatusCodeToString(status.code()), ": ",
      EscapeText(std::string_view(status.message().data(), status.message().size()), false));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
    if (url == absl::string_view(kExtensionPanicUrl.data(), kExtensionPanicUrl.size())) {
      absl::Status one(absl::StatusCode::kInternal, "");
      one.SetPayload(url, payload);
      if (const std::optional<ExtensionPanic> panic = GetExtensionPanic(one)) {
        absl::StrAppend(&out, " [ExtensionPanic ", DescribePanicFields(*panic), "]");
        return;
      }
    }
    absl::StrAppend(&out, " [", EscapeText(std::string_view(url.data(), url.size()), false), "='",
                    EscapeText(std::string(payload), false), "']");
  });
  return out;
}

bool IsExtensionPanic(const absl::Status& status) {
  return status.GetPayload(AsAbsl(kExtensionPanicUrl)).has_value();
}

std::optional<ExtensionPanic> GetExtensionPanic(const absl::Status& status) {
  const auto payload = status.GetPayload(AsAbsl(kExtensionPanicUrl));
  if (!payload.has_value()) return std::nullopt;
  const std::string flat(*payload);
  std::string_view in = flat;
  ExtensionPanic panic;
  std::string phase, count;
  if (!GetField(in, panic.extension) || !GetField(in, phase) || !GetField(in, panic.type) ||
      !GetField(in, panic.message) || !GetField(in, count)) {
    return std::nullopt;
  }
  bool known_phase = false;
  for (std::size_t i = 0; i < kPhaseCount; ++i) {
    const Phase p = static_cast<Phase>(i);
    if (PhaseName(p) == phase) {
      panic.phase = p;
      known_phase = true;
    }
  }
  std::size_t levels = 0;
  if (!known_phase || !absl::SimpleAtoi(count, &levels) || levels > in.size()) return std::nullopt;
  panic.nested.resize(levels);
  for (std::string& level : panic.nested) {
    if (!GetField(in, level)) return std::nullopt;
  }
  if (!GetField(in, panic.stack) || !in.empty()) return std::nullopt;
  return panic;
}

bool SetThrowStackCapture(bool enabled) {
  return g_capture_throw_stack.exchange(enabled, std::memory_order_relaxed);
}

bool ThrowStackCaptureEnabled() { return g_capture_throw_stack.load(std::memory_order_relaxed); }

}  // namespace framekit

// Throw-site stack capture. By the time a catch handler runs, the throwing frames are gone;
// the only place their stack exists is the throw itself. This definition interposes the C++
// runtime's __cxa_throw for code linked with framekit, records the stack when capture is on,
// and forwards to the runtime's own __cxa_throw.
namespace __cxxabiv1 {
extern "C" {
__attribute__((__noreturn__)) void __cxa_throw(void* object, std::type_info* type,
                                               void (*destroy)(void*)) {
  using ThrowFn = void (*)(void*, std::type_info*, void (*)(void*));
  static const ThrowFn next = reinterpret_cast<ThrowFn>(dlsym(RTLD_NEXT, "__cxa_throw"));
  framekit::ThrowStack& stack = framekit::t_throw_stack;
  if (framekit::g_capture_throw_stack.load(std::memory_order_relaxed)) {
    // glibc's backtrace() walks the unwind tables, so it works in code built without frame
    // pointers (absl::GetStackTrace on this platform follows frame pointers and finds nothing
    // in an -O2 build). Frame 0 is this hook; drop it.
    void* pcs[framekit::kMaxThrowFrames + 1];
    const int depth = backtrace(pcs, framekit::kMaxThrowFrames + 1);
    stack.depth = depth > 1 ? depth - 1 : 0;
    for (int i = 0; i < stack.depth; ++i) stack.pcs[i] = pcs[i + 1];
    stack.type = type;
  } else if (stack.depth != 0) {
    stack.depth = 0;  // a stack recorded earlier must not be attributed to this exception
  }
  if (next == nullptr) std::abort();  // no C++ runtime to forward to: cannot happen when linked
  next(object, type, destroy);
  __builtin_unreachable();
}
}
}  // namespace __cxxabiv1
