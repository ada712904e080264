// The worker executable of isolate_attack_test: handlers that attack the host through the wire
// (garbage, a closed or half-closed socket, a grandchild holding it open) or that ignore the
// stop request, and a healthy echo.
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/isolate/worker.h"
#include "tests/isolate/test_keys.h"

namespace {

using framekit::Frame;
using framekit::dispatch::Sink;

// The worker's sockets (its wire to the host), found the way a hostile handler would.
std::vector<int> Sockets() {
  std::vector<int> fds;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return fds;
  while (dirent* entry = readdir(dir)) {
    if (entry->d_name[0] == '.') continue;
    char target[256] = {};
    const std::string link = absl::StrCat("/proc/self/fd/", entry->d_name);
    if (readlink(link.c_str(), target, sizeof(target) - 1) > 0 &&
        std::string(target).rfind("socket:", 0) == 0) {
      fds.push_back(std::atoi(entry->d_name));
    }
  }
  closedir(dir);
  return fds;
}

[[noreturn]] void SleepForever() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

// Forks a grandchild that leaves the worker's session and sleeps forever; its pid (< 0: failed).
pid_t ForkDetachedSleeper() {
  const pid_t child = fork();
  if (child == 0) {
    setsid();
    SleepForever();
  }
  return child;
}

}  // namespace

// --crash-after-fork=N (after the pool's flags): every Nth process the zygote forks dies by
// SIGSEGV right after the fork, before its hello (the parent's count lives in the zygote).
int g_crash_every = 0;
int g_forks = 0;

void CrashSomeForks(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg(argv[i]);
    if (arg.starts_with("--crash-after-fork=")) g_crash_every = std::atoi(argv[i] + 19);
  }
  if (g_crash_every <= 0) return;
  pthread_atfork(
      nullptr, [] { ++g_forks; },
      [] {
        if ((g_forks + 1) % g_crash_every == 0) raise(SIGSEGV);
      });
}

int main(int argc, char** argv) {
  CrashSomeForks(argc, argv);
  framekit::isolate::WorkerRegistry r;
  r.set_portable_keys(framekit::isolate_test::TestKeys());
  std::vector<absl::Status> added = {
      r.Add("echo",
            [](const Frame&, std::string_view payload, Sink& out) { return out.Write(payload); }),
      r.Add("caller",
            [](const Frame& frame, std::string_view, Sink& out) {
              const framekit::CallerContext* caller = frame.Find(framekit::CallerKey());
              return out.Write(caller != nullptr ? caller->user_id : "-");
            }),
      // Every length prefix a parser might trip on, then a healthy-looking return.
      r.Add("garbage_wire",
            [](const Frame&, std::string_view payload, Sink& out) -> absl::Status {
              (void)out.Write("before");
              std::string junk(payload);
              if (junk.empty()) junk = std::string("\xff\xff\xff\xff\x00\x00\x00\x00\x01", 9);
              for (int fd : Sockets()) (void)!write(fd, junk.data(), junk.size());
              return absl::OkStatus();
            }),
      r.Add("close_wire",
            [](const Frame&, std::string_view, Sink&) -> absl::Status {
              for (int fd : Sockets()) close(fd);
              SleepForever();
            }),
      r.Add("shutdown_wire",
            [](const Frame&, std::string_view, Sink&) -> absl::Status {
              for (int fd : Sockets()) shutdown(fd, SHUT_WR);
              SleepForever();
            }),
      r.Add("ignore_stop",
            [](const Frame&, std::string_view, Sink&) -> absl::Status {
              sigset_t all;
              sigfillset(&all);
              sigprocmask(SIG_BLOCK, &all, nullptr);
              SleepForever();
            }),
      // Needs a pool without seccomp: a grandchild keeps the wire open after the worker dies.
      r.Add("grandchild_then_exit",
            [](const Frame&, std::string_view, Sink& out) -> absl::Status {
              const pid_t child = ForkDetachedSleeper();
              if (child < 0) return absl::InternalError("fork failed");
              (void)out.Write(absl::StrCat(child));
              std::this_thread::sleep_for(std::chrono::milliseconds(50));
              _exit(0);
            }),
      r.Add("grandchild_then_return",
            [](const Frame&, std::string_view, Sink& out) -> absl::Status {
              const pid_t child = ForkDetachedSleeper();
              if (child < 0) return absl::InternalError("fork failed");
              return out.Write(absl::StrCat(child));
            }),
      r.Add("segv",
            [](const Frame&, std::string_view, Sink&) -> absl::Status {
              raise(SIGSEGV);
              return absl::OkStatus();
            }),
  };
  for (const absl::Status& s : added) {
    if (!s.ok()) {
      std::fprintf(stderr, "attack worker: %s\n", std::string(s.message()).c_str());
      return 2;
    }
  }
  return framekit::isolate::WorkerMain(r, argc, argv);
}
