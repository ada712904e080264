#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/isolate/internal/sandbox.h"
#include "framekit/isolate/internal/wire.h"
#include "framekit/isolate/internal/zygote.h"
#include "framekit/isolate/worker.h"

namespace framekit::isolate {
namespace {

using isolate_internal::kFaultFd;
using isolate_internal::kWireFd;
using isolate_internal::MessageType;

bool ValidHandlerName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// Output chunks to the host, split to the message bound.
class WireSink final : public dispatch::Sink {
 public:
  explicit WireSink(std::size_t max_chunk) : max_chunk_(max_chunk) {}
  absl::Status Write(std::string_view chunk) override {
    std::lock_guard<std::mutex> lock(mu_);
    do {
      const std::string_view part = chunk.substr(0, max_chunk_);
      chunk.remove_prefix(part.size());
      if (absl::Status s = isolate_internal::SendAll(kWireFd, isolate_internal::EncodeChunk(part));
          !s.ok()) {
        return s;
      }
    } while (!chunk.empty());
    return absl::OkStatus();
  }

 private:
  const std::size_t max_chunk_;
  std::mutex mu_;
};

// The wire's read side, shared by the serving (main) thread and the watcher thread.
//
// Between calls the serving thread reads the socket itself, so that a call message wakes the
// thread that runs it and no other (one scheduling hop, not two). While a call runs
// (`running`), the serving thread does not read and the watcher owns the reads: the host sends
// nothing then but a cancel (it never pipelines calls), or closes the socket; either cancels the
// running call. The watcher reads only under `mu` with `running` set, and the serving thread
// clears `running` under `mu` before it sends the call's done message, so the watcher never
// reads a byte of the next call.
struct Wire {
  explicit Wire(isolate_internal::WireLimits limits) : buffer(limits) {}
  std::mutex mu;
  std::condition_variable cv;              // `running` became true
  bool running = false;                    // a call is being served
  bool closed = false;                     // end of stream or a malformed stream
  std::optional<Canceller> current;        // the running call's canceller
  isolate_internal::MessageBuffer buffer;  // read and not yet handled, by either thread
};

// Handles what is buffered while a call runs: a cancel stops it; anything else (a malformed
// stream, a second call) breaks the protocol and ends the wire. Caller holds wire.mu.
void HandleWhileRunningLocked(Wire& wire) {
  for (;;) {
    absl::StatusOr<std::optional<isolate_internal::Message>> next = wire.buffer.Next();
    if (next.ok() && !next->has_value()) return;
    if (!next.ok() || (**next).type != MessageType::kCancel) wire.closed = true;
    if (wire.current) wire.current->Cancel();
    if (wire.closed) return;
  }
}

// The watcher thread: while a call runs, waits for the socket and handles what arrives.
void Watch(Wire& wire) {
  char chunk[4096];
  std::unique_lock<std::mutex> lock(wire.mu);
  for (;;) {
    wire.cv.wait(lock, [&] { return wire.running && !wire.closed; });
    HandleWhileRunningLocked(wire);  // a cancel read along with the call
    if (wire.closed) continue;
    lock.unlock();
    pollfd p{kWireFd, POLLIN, 0};
    const int r = poll(&p, 1, -1);
    lock.lock();
    if (r <= 0 || !wire.running) continue;  // the call ended: the serving thread reads again
    const ssize_t n = recv(kWireFd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) {
      wire.closed = true;
      if (wire.current) wire.current->Cancel();
      continue;
    }
    wire.buffer.Append(std::string_view(chunk, static_cast<std::size_t>(n)));
    HandleWhileRunningLocked(wire);
  }
}

// The serving thread, between calls: the next call's body; nullopt when the host closed the
// wire or broke the protocol. A stale cancel (sent as the last call ended) is dropped.
std::optional<std::string> NextCall(Wire& wire) {
  char chunk[64 * 1024];
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(wire.mu);
      if (wire.closed) return std::nullopt;
      for (;;) {
        absl::StatusOr<std::optional<isolate_internal::Message>> next = wire.buffer.Next();
        if (!next.ok()) return std::nullopt;
        if (!next->has_value()) break;
        if ((**next).type == MessageType::kCall) return std::move((**next).body);
        if ((**next).type != MessageType::kCancel) return std::nullopt;
      }
    }
    const ssize_t n = read(kWireFd, chunk, sizeof(chunk));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    std::lock_guard<std::mutex> lock(wire.mu);
    wire.buffer.Append(std::string_view(chunk, static_cast<std::size_t>(n)));
  }
}

std::uint64_t PeakRss() {
  rusage usage{};
  if (getrusage(RUSAGE_SELF, &usage) != 0) return 0;
  return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
}

// Runs one call and returns what to report.
isolate_internal::DoneMessage Serve(const WorkerRegistry& registry, Wire& wire,
                                    const std::string& body,
                                    const isolate_internal::WireLimits& limits) {
  isolate_internal::DoneMessage done;
  absl::Status status;
  absl::StatusOr<isolate_internal::CallMessage> call = isolate_internal::DecodeCall(body, limits);
  const dispatch::Handler* handler = call.ok() ? registry.Find(call->handler) : nullptr;
  if (!call.ok()) {
    status = call.status();
  } else if (handler == nullptr) {
    status = absl::NotFoundError(
        absl::StrCat("isolate: no handler \"", call->handler, "\" in this worker"));
  } else if (absl::StatusOr<DecodedFrame> decoded = registry.portable_keys().Decode(call->frame);
             !decoded.ok()) {
    status = decoded.status();
  } else {
    auto [frame, canceller] = decoded->frame.WithCancel();
    {
      std::lock_guard<std::mutex> lock(wire.mu);
      wire.current = canceller;
      wire.running = true;
      if (wire.closed) canceller.Cancel();
    }
    wire.cv.notify_one();
    WireSink sink(limits.max_message_bytes - 1);
    try {
      status = (*handler)(frame, call->payload, sink);
    } catch (...) {
      RethrowIfForcedUnwind();
      const ExtensionPanic panic = DescribeCurrentException(call->handler, Phase::kInvoke);
      done.threw = true;
      done.panic_type = panic.type;
      done.panic_message = panic.message;
      status = PanicStatus(panic);
    }
    std::lock_guard<std::mutex> lock(wire.mu);
    wire.current.reset();
    wire.running = false;
  }
  done.code = status.code();
  done.message = std::string(status.message());
  done.peak_rss_bytes = PeakRss();
  return done;
}

// exit() from a handler ends the worker at once with its status: registered after the static
// initialisers' and the sanitizer runtimes' exit hooks, this runs before them, so neither exit-time
// destructors nor a leak checker (which would ptrace, denied by the seccomp profile) run in a
// worker that is being torn down anyway.
void ExitNow(int status, void*) { _exit(status); }

[[noreturn]] void Fail(std::string_view what, const absl::Status& status) {
  const std::string line = absl::StrCat("detail ", absl::string_view(what.data(), what.size()),
                                        ": ", status.message(), "\n");
  ssize_t ignored = write(kFaultFd, line.data(), line.size());
  (void)ignored;
  std::fprintf(stderr, "framekit worker: %s\n", line.c_str() + 7);
  _exit(3);
}

}  // namespace

absl::Status AddCallKeys(PortableKeys& keys) {
  if (absl::Status s = keys.Add(CallerKey()); !s.ok()) return s;
  return keys.Add(dispatch::TraceIdKey());
}

WorkerRegistry::WorkerRegistry() {
  auto keys = std::make_shared<PortableKeys>();
  absl::Status added = AddCallKeys(*keys);
  assert(added.ok());
  (void)added;
  keys_ = std::move(keys);
}

absl::Status WorkerRegistry::Add(std::string name, dispatch::Handler handler) {
  if (!ValidHandlerName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("isolate: handler name \"", name, "\" is not 1-128 of [A-Za-z0-9_.-]"));
  }
  if (!handler) return absl::InvalidArgumentError("isolate: empty handler");
  if (handlers_.contains(name)) {
    return absl::AlreadyExistsError(absl::StrCat("isolate: handler \"", name, "\" exists"));
  }
  handlers_.emplace(std::move(name), std::move(handler));
  return absl::OkStatus();
}

const dispatch::Handler* WorkerRegistry::Find(std::string_view name) const {
  auto it = handlers_.find(absl::string_view(name.data(), name.size()));
  return it == handlers_.end() ? nullptr : &it->second;
}

int WorkerMain(const WorkerRegistry& registry, int argc, char** argv) {
  absl::StatusOr<isolate_internal::WorkerArgs> args = isolate_internal::ParseWorkerArgs(argc, argv);
  if (!args.ok()) {
    std::fprintf(stderr, "%s: %s\n", argc > 0 ? argv[0] : "worker",
                 std::string(args.status().message()).c_str());
    return 2;
  }
  // Compiled before a zygote forks, so that each worker only loads it.
  absl::StatusOr<std::string> seccomp_program;
  if (args->limits.seccomp) {
    seccomp_program = isolate_internal::CompileSeccompProfile();
    if (!seccomp_program.ok()) Fail("seccomp", seccomp_program.status());
  }
  // A zygote serves fork requests and never returns; in each worker it forks, RunZygote returns
  // the zygote's pid, the worker's parent, and the worker goes on as if it had been spawned.
  const pid_t parent =
      args->zygote ? isolate_internal::RunZygote(*args) : static_cast<pid_t>(args->parent);
  // Die with the parent: the host (its long-lived spawner thread, to which the signal is tied)
  // or the zygote, which dies with the host. The getppid check closes the race with a parent
  // that died before prctl ran.
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
  dup2(STDERR_FILENO, STDOUT_FILENO);  // stdout belongs to the host; a handler's prints go to logs
  isolate_internal::InstallCrashHandler(kFaultFd);
  on_exit(ExitNow, nullptr);
  if (absl::Status s = isolate_internal::ApplyLimits(args->limits); !s.ok()) Fail("limits", s);
  if (args->limits.seccomp) {
    if (absl::Status s = isolate_internal::LoadSeccompProgram(*seccomp_program); !s.ok()) {
      Fail("seccomp", s);
    }
  }
  isolate_internal::WireLimits limits;
  limits.max_message_bytes = args->max_message_bytes;
  if (absl::Status s = isolate_internal::SendAll(kWireFd, isolate_internal::EncodeHello(getpid()));
      !s.ok()) {
    _exit(0);  // the host is gone already
  }
  Wire wire(limits);
  std::thread watcher(Watch, std::ref(wire));
  watcher.detach();
  for (;;) {
    const std::optional<std::string> body = NextCall(wire);
    if (!body) _exit(0);
    const isolate_internal::DoneMessage done = Serve(registry, wire, *body, limits);
    if (!isolate_internal::SendAll(kWireFd, isolate_internal::EncodeDone(done, limits)).ok()) {
      _exit(0);
    }
  }
}

}  // namespace framekit::isolate
