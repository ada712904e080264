// The worker executable the isolate tests and benchmarks run: handlers for every way a native
// handler can fail, and healthy ones. With --as-host it is instead a small host that starts a
// pool of itself, prints its workers' pids and its zygote's and waits to be killed (the
// parent-death test).
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/isolate/pool.h"
#include "framekit/isolate/worker.h"
#include "tests/isolate/test_keys.h"

namespace {

using framekit::Frame;
using framekit::dispatch::Sink;

// A store to an unmapped page near null: a real SIGSEGV. Not a null pointer, which the compiler
// may treat as unreachable and UBSan (in the ASan build) reports and exits on before the store.
[[gnu::noinline]] void NullStore(int value) {
  static volatile std::uintptr_t address = 16;  // opaque to the optimiser and its warnings
  volatile int* p = reinterpret_cast<volatile int*>(address);
  *p = value;
}

[[gnu::noinline]] void Throw() { throw std::runtime_error("thrown out of noexcept"); }
void ThrowingNoexcept() noexcept { Throw(); }

// Recurses until the stack runs out; the bound is never reached (8 MiB of stack at most).
[[gnu::noinline]] int Recurse(int depth) {
  volatile char pad[1024];
  pad[0] = static_cast<char>(depth);
  if (depth > (1 << 30)) return pad[0];
  return Recurse(depth + 1) + pad[0];
}

absl::Status Add(framekit::isolate::WorkerRegistry& r, std::string name,
                 framekit::dispatch::Handler h) {
  return r.Add(std::move(name), std::move(h));
}

int RunAsHost() {
  framekit::isolate::WorkerPoolOptions options;
  options.executable = "/proc/self/exe";
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  options.executable = self;
  options.spare_workers = 2;
  auto pool = framekit::isolate::WorkerPool::Create(options);
  if (!pool.ok()) return 1;
  for (int i = 0; i < 500 && (*pool)->worker_pids().size() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (std::int64_t pid : (*pool)->worker_pids())
    std::printf("%lld\n", static_cast<long long>(pid));
  // Then the zygote that forked them (its line is last).
  std::printf("%lld\n", static_cast<long long>((*pool)->stats().zygote_pid));
  std::fflush(stdout);
  for (;;) pause();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--as-host") == 0) return RunAsHost();
  framekit::isolate::WorkerRegistry r;
  r.set_portable_keys(framekit::isolate_test::TestKeys());
  static int counter = 0;
  std::vector<absl::Status> added = {
      Add(r, "echo",
          [](const Frame&, std::string_view payload, Sink& out) { return out.Write(payload); }),
      Add(r, "frame",
          [](const Frame& frame, std::string_view, Sink& out) {
            const std::string* tenant = frame.Find(framekit::isolate_test::kTenant);
            const framekit::CallerContext* caller = frame.Find(framekit::CallerKey());
            const std::string* trace = frame.Find(framekit::dispatch::TraceIdKey());
            const bool inherited =
                frame.Origin(framekit::isolate_test::kTenant) == framekit::ValueOrigin::kInherited;
            std::string deadline = "none";
            if (frame.deadline()) {
              deadline = absl::StrCat(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          *frame.deadline() - framekit::Clock::now())
                                          .count());
            }
            return out.Write(absl::StrCat(
                "tenant=", tenant ? *tenant : "-", " inherited=", inherited ? "yes" : "no",
                " caller=", caller ? caller->user_id : "-", " trace=", trace ? *trace : "-",
                " remaining_ms=", deadline));
          }),
      Add(r, "chunks",
          [](const Frame&, std::string_view payload, Sink& out) {
            int n = 0;
            if (!absl::SimpleAtoi(absl::string_view(payload.data(), payload.size()), &n)) n = 3;
            for (int i = 0; i < n; ++i) {
              if (absl::Status s = out.Write(absl::StrCat(i, ";")); !s.ok()) return s;
            }
            return absl::OkStatus();
          }),
      Add(r, "big",
          [](const Frame&, std::string_view payload, Sink& out) {
            std::size_t n = 0;
            if (!absl::SimpleAtoi(absl::string_view(payload.data(), payload.size()), &n)) n = 1;
            const std::string block(64 * 1024, 'x');
            for (std::size_t sent = 0; sent < n; sent += block.size()) {
              if (absl::Status s = out.Write(std::string_view(block).substr(0, n - sent));
                  !s.ok()) {
                return s;
              }
            }
            return absl::OkStatus();
          }),
      Add(r, "segv",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            NullStore(42);
            return absl::OkStatus();
          }),
      Add(r, "abort", [](const Frame&, std::string_view, Sink&) -> absl::Status { std::abort(); }),
      Add(r, "exit", [](const Frame&, std::string_view, Sink&) -> absl::Status { std::exit(7); }),
      Add(r, "noexcept_throw",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            ThrowingNoexcept();
            return absl::OkStatus();
          }),
      Add(r, "stack_overflow",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            return absl::InternalError(absl::StrCat(Recurse(0)));
          }),
      Add(r, "throw",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            throw std::runtime_error("boom");
          }),
      Add(r, "spin",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            volatile bool forever = true;
            while (forever) {
            }
            return absl::OkStatus();
          }),
      Add(r, "cooperative",
          [](const Frame& frame, std::string_view, Sink&) -> absl::Status {
            while (!frame.stop_token().stop_requested()) {
              std::this_thread::sleep_for(std::chrono::milliseconds(1));
            }
            return absl::CancelledError("stopped as asked");
          }),
      Add(r, "sleep",
          [](const Frame&, std::string_view payload, Sink& out) -> absl::Status {
            int ms = 0;
            if (!absl::SimpleAtoi(absl::string_view(payload.data(), payload.size()), &ms)) ms = 10;
            std::this_thread::sleep_for(std::chrono::milliseconds(ms));
            return out.Write("slept");
          }),
      Add(r, "memory_bomb",
          [](const Frame&, std::string_view, Sink& out) -> absl::Status {
            std::vector<std::unique_ptr<char[]>> blocks;
            for (int i = 0; i < 1024; ++i) {  // up to 64 GiB
              blocks.emplace_back(new char[64 << 20]);
              std::memset(blocks.back().get(), 1, 64 << 20);
            }
            return out.Write("allocated 64 GiB");
          }),
      Add(r, "fd_exhaust",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            // Opens files until the worker's cap stops it, then closes them again: a sanitizer
            // runtime needs a free descriptor of its own to report anything.
            std::vector<int> fds;
            int error = 0;
            while (fds.size() < 100000) {
              const int fd = open("/dev/null", O_RDONLY);
              if (fd < 0) {
                error = errno;
                break;
              }
              fds.push_back(fd);
            }
            for (int fd : fds) close(fd);
            if (error == 0) return absl::OkStatus();
            return absl::ResourceExhaustedError(
                absl::StrCat("opened ", fds.size(), " files, then: ", std::strerror(error)));
          }),
      Add(r, "exec",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            execl("/bin/sh", "sh", "-c", "true", static_cast<char*>(nullptr));
            return absl::InternalError(absl::StrCat("execl returned: ", std::strerror(errno)));
          }),
      Add(r, "fork",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            const pid_t pid = fork();
            if (pid == 0) _exit(0);
            return absl::InternalError("fork returned");
          }),
      Add(r, "counter",
          [](const Frame&, std::string_view, Sink& out) {
            return out.Write(absl::StrCat(++counter));
          }),
      Add(r, "pid",
          [](const Frame&, std::string_view, Sink& out) {
            return out.Write(absl::StrCat(getpid()));
          }),
      Add(r, "garbage",
          [](const Frame&, std::string_view, Sink&) -> absl::Status {
            const char junk[] = "\xff\xff\xff\x7f garbage from a compromised worker";
            ssize_t ignored = write(3, junk, sizeof(junk));
            (void)ignored;
            std::this_thread::sleep_for(std::chrono::seconds(30));
            return absl::OkStatus();
          }),
      Add(r, "status",
          [](const Frame&, std::string_view payload, Sink&) -> absl::Status {
            return absl::PermissionDeniedError(std::string(payload));
          }),
  };
  for (const absl::Status& s : added) {
    if (!s.ok()) {
      std::fprintf(stderr, "test worker: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  return framekit::isolate::WorkerMain(r, argc, argv);
}
