#include "framekit/isolate/pool.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "framekit/isolate/internal/sandbox.h"
#include "framekit/isolate/internal/wire.h"
#include "framekit/isolate/internal/zygote.h"
#include "framekit/isolate/worker.h"

extern char** environ;

namespace framekit::isolate {

// The worker's stack, as the nested level of a WorkerFault (see WorkerFault).
class WorkerStack : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace {

using isolate_internal::MessageType;
using SteadyTime = Clock::time_point;

// How often an idle spawner looks whether the zygote still runs.
constexpr std::chrono::milliseconds kZygoteCheckInterval{200};

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  const char* descr = sigdescr_np(sig);
  return abbrev != nullptr ? absl::StrCat("SIG", abbrev, " (", descr != nullptr ? descr : "?", ")")
                           : absl::StrCat("signal ", sig);
}

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// One worker process and the host's ends of its wire and fault pipe, and a pidfd (to signal it
// without a pid race, and to see whether it ended). A worker forked by the zygote is not the
// host's child: it also has the read end of its status pipe, where the zygote writes its wait
// status.
struct Worker {
  pid_t pid = -1;
  int sock = -1;
  int fault = -1;
  int pidfd = -1;   // -1 only when pidfd_open failed for a spawned worker
  int status = -1;  // zygote workers only
  isolate_internal::MessageBuffer buffer;
  explicit Worker(isolate_internal::WireLimits limits) : buffer(limits) {}
  ~Worker() {
    CloseFd(sock);
    CloseFd(fault);
    CloseFd(pidfd);
    CloseFd(status);
  }
};

// Signals a worker: through its pidfd when it has one (a zygote worker's pid is reaped by the
// zygote and may be recycled), else by pid (only the host's own child has none, and its pid
// stays ours until the host reaps it).
void Signal(pid_t pid, int pidfd, int sig) {
  if (pidfd >= 0) {
    syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0);
  } else {
    kill(pid, sig);
  }
}

// True when the worker has ended (its pidfd is readable); false when it has no pidfd.
bool Ended(const Worker& worker) {
  if (worker.pidfd < 0) return false;
  pollfd p{worker.pidfd, POLLIN, 0};
  return poll(&p, 1, 0) > 0;
}

// Waits for `pid` to end for up to `wait`, then kills it; reaps it and returns its wait status.
int Reap(pid_t pid, std::chrono::milliseconds wait) {
  int status = 0;
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd >= 0) {
    pollfd p{pidfd, POLLIN, 0};
    while (poll(&p, 1, static_cast<int>(wait.count())) < 0 && errno == EINTR) {
    }
    close(pidfd);
  }
  if (waitpid(pid, &status, WNOHANG) == pid) return status;
  kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// What the crash handler wrote, bounded. The pipe's write end closed with the process.
std::string DrainFaultPipe(int fd) {
  std::string text;
  char buf[4096];
  while (text.size() < (64 << 10)) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  return text;
}

// Reaps a worker like Reap (waits up to `wait`, then kills). A zygote worker's wait status comes
// from the zygote through the status pipe; nullopt when the zygote ended without writing it.
std::optional<int> ReapWorker(Worker& worker, std::chrono::milliseconds wait) {
  if (worker.status < 0) return Reap(worker.pid, wait);
  pollfd p{worker.status, POLLIN, 0};
  int r;
  while ((r = poll(&p, 1, static_cast<int>(wait.count()))) < 0 && errno == EINTR) {
  }
  if (r == 0) {
    Signal(worker.pid, worker.pidfd, SIGKILL);
    // The zygote reaps it on SIGCHLD at once; the bound only guards against a stopped zygote.
    while (poll(&p, 1, 10000) < 0 && errno == EINTR) {
    }
  }
  int status = 0;
  ssize_t n;
  while ((n = read(worker.status, &status, sizeof(status))) < 0 && errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(sizeof(status))) return std::nullopt;
  return status;
}

}  // namespace

std::string_view DeathKindName(DeathKind kind) {
  switch (kind) {
    case DeathKind::kSignal:
      return "signal";
    case DeathKind::kExit:
      return "exit";
    case DeathKind::kSeccomp:
      return "seccomp";
    case DeathKind::kHandlerThrew:
      return "handler threw";
    case DeathKind::kProtocol:
      return "protocol";
  }
  return "unknown";
}

std::string WorkerDeath::Summary() const {
  std::string out = absl::StrCat("worker ", pid, " ");
  switch (kind) {
    case DeathKind::kSignal:
      absl::StrAppend(&out, "killed by ", SignalName(signal));
      break;
    case DeathKind::kExit:
      absl::StrAppend(&out, "exited with status ", exit_code, " during the call");
      break;
    case DeathKind::kSeccomp:
      absl::StrAppend(&out, "violated its seccomp profile: ", syscall, " (", SignalName(signal),
                      ")");
      break;
    case DeathKind::kHandlerThrew:
      absl::StrAppend(&out, "handler threw");
      break;
    case DeathKind::kProtocol:
      absl::StrAppend(&out, "broke the wire protocol; killed");
      break;
  }
  if (!detail.empty()) absl::StrAppend(&out, ": ", detail);
  return out;
}

WorkerFault::WorkerFault(WorkerDeath death)
    : std::runtime_error(death.Summary()), death_(std::move(death)) {}

struct WorkerPool::State {
  struct Backoff {
    int consecutive = 0;
    SteadyTime not_before{};
  };

  WorkerPoolOptions options;
  isolate_internal::WireLimits limits;
  std::shared_ptr<const PortableKeys> keys;
  std::vector<std::string> argv;

  mutable std::mutex mu;
  std::condition_variable workers_cv;  // a worker became available, or capacity freed
  std::condition_variable spawner_cv;  // work for the spawner
  bool shut_down ABSL_GUARDED_BY(mu) = false;
  std::deque<std::unique_ptr<Worker>> spares ABSL_GUARDED_BY(mu);
  // Reuse workers, per handler; each serves only its handler.
  absl::flat_hash_map<std::string, std::vector<std::unique_ptr<Worker>>> idle ABSL_GUARDED_BY(mu);
  // Busy workers: pid -> pidfd (-1 when it has none), for Shutdown to kill them.
  absl::flat_hash_map<pid_t, int> busy ABSL_GUARDED_BY(mu);
  std::vector<std::unique_ptr<Worker>> retired ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<std::string, Backoff> backoff ABSL_GUARDED_BY(mu);
  int live ABSL_GUARDED_BY(mu) = 0;  // processes started and not reaped
  int spawning ABSL_GUARDED_BY(mu) = 0;
  int waiting ABSL_GUARDED_BY(mu) = 0;
  int reaping ABSL_GUARDED_BY(mu) = 0;        // dead or dying workers a call is reaping itself
  int spawn_failing ABSL_GUARDED_BY(mu) = 0;  // consecutive start failures
  absl::Status spawn_error ABSL_GUARDED_BY(mu);
  PoolStats stats ABSL_GUARDED_BY(mu);
  std::chrono::nanoseconds startup_total ABSL_GUARDED_BY(mu){};
  pid_t zygote_pid ABSL_GUARDED_BY(mu) = -1;  // a copy for stats(); the spawner owns `zygote`
  std::thread spawner;

  // The zygote (zygote.h), used by the spawner thread only. Started on the first spawn; when it
  // ends or misbehaves it is reaped and started again after a backoff, workers being spawned
  // directly meanwhile. Off for good when it reports more than one thread.
  struct Zygote {
    std::unique_ptr<Worker> process;  // pid and control socket; null when not running
    bool disabled = false;
    int failures = 0;  // consecutive
    SteadyTime retry_at{};
    std::chrono::nanoseconds startup{};  // of the zygote started by the last Spawn, if any
  } zygote;
  std::vector<std::string> zygote_argv;

  void SpawnerLoop();
  bool NeedSpawnLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    const int want = options.spare_workers + waiting;
    return !shut_down && static_cast<int>(spares.size()) + spawning < want &&
           live < options.max_workers;
  }
  absl::StatusOr<std::unique_ptr<Worker>> Spawn();
  absl::StatusOr<std::unique_ptr<Worker>> SpawnExecutable(std::vector<std::string>& args);
  absl::StatusOr<std::unique_ptr<Worker>> SpawnFromZygote();
  void StopZygote(std::string_view why);
  void CheckZygote();
  absl::Status AwaitHello(Worker& worker, SteadyTime until);
  absl::StatusOr<std::unique_ptr<Worker>> Acquire(const std::string& handler, bool reuse,
                                                  std::optional<Deadline> deadline);
  void Release(std::unique_ptr<Worker> worker, const std::string& handler, bool keep);
  // Kills the worker now, so that its teardown runs while the spawner starts the next one; the
  // spawner reaps it later (a spare to start comes first).
  void RetireLocked(std::unique_ptr<Worker> worker) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (worker == nullptr) return;
    busy.erase(worker->pid);
    Signal(worker->pid, worker->pidfd, SIGKILL);
    retired.push_back(std::move(worker));
    spawner_cv.notify_all();
  }
  // A call that saw its worker die (or must kill it) reaps it itself, on its own thread, so
  // that the death is classified from the real wait status. Between the two calls the pid is
  // out of `busy` (Shutdown will not signal a pid that may be recycled) and counted in
  // `reaping` (the spawner waits for it).
  void BeginReap(const Worker& worker) {
    std::lock_guard<std::mutex> lock(mu);
    busy.erase(worker.pid);
    ++reaping;
  }
  void EndReap(std::unique_ptr<Worker> worker) {
    worker.reset();  // closes the fds
    std::lock_guard<std::mutex> lock(mu);
    --reaping;
    --live;
    ++stats.reaped;
    workers_cv.notify_all();
    spawner_cv.notify_all();
  }
  // nullopt when the worker's wait status is lost (its zygote ended first).
  std::optional<WorkerDeath> Classify(Worker& worker, std::chrono::milliseconds wait);
  void NoteDeath(const std::string& handler);
};

void WorkerPool::State::SpawnerLoop() {
  std::unique_lock<std::mutex> lock(mu);
  for (;;) {
    const auto has_work = [&] {
      return !retired.empty() || NeedSpawnLocked() ||
             (shut_down && busy.empty() && reaping == 0 && spawning == 0);
    };
    if (zygote.process == nullptr) {
      spawner_cv.wait(lock, has_work);
    } else if (!spawner_cv.wait_for(lock, kZygoteCheckInterval, has_work)) {
      // Idle with a zygote: if it ended, reap it now and replace the spares that died with it,
      // rather than leaving a zombie and dead spares until the next call.
      lock.unlock();
      CheckZygote();
      lock.lock();
      continue;
    }
    // A spare to start comes before the dead to reap: a call may be waiting for it, and the
    // retired workers were killed when they were retired (RetireLocked).
    if (!retired.empty() && !NeedSpawnLocked()) {
      std::vector<std::unique_ptr<Worker>> batch = std::move(retired);
      retired.clear();
      lock.unlock();
      for (auto& worker : batch) {
        Signal(worker->pid, worker->pidfd, SIGKILL);
        ReapWorker(*worker, std::chrono::milliseconds(0));
      }
      const int n = static_cast<int>(batch.size());
      batch.clear();  // closes the fds
      lock.lock();
      live -= n;
      stats.reaped += n;
      workers_cv.notify_all();
      continue;
    }
    if (shut_down) {
      if (busy.empty() && reaping == 0 && spawning == 0) {
        lock.unlock();
        StopZygote("");
        return;
      }
      continue;
    }
    ++live;
    ++spawning;
    lock.unlock();
    const SteadyTime start = Clock::now();
    zygote.startup = {};
    absl::StatusOr<std::unique_ptr<Worker>> worker = Spawn();
    const auto took = Clock::now() - start - zygote.startup;  // the worker's own start-up
    lock.lock();
    --spawning;
    if (worker.ok()) {
      ++stats.spawned;
      stats.last_startup = took;
      startup_total += took;
      spawn_failing = 0;
      if (shut_down) {
        retired.push_back(*std::move(worker));  // reaped on the next turn
      } else {
        spares.push_back(*std::move(worker));
      }
    } else {
      --live;
      ++stats.spawn_failures;
      ++spawn_failing;
      spawn_error = worker.status();
      std::fprintf(stderr, "framekit isolate: cannot start a worker: %s\n",
                   std::string(worker.status().message()).c_str());
      workers_cv.notify_all();
      // A broken executable must not spin the spawner: wait before the next attempt.
      const std::chrono::milliseconds base =
          std::max(options.respawn_backoff_min, std::chrono::milliseconds(10));
      spawner_cv.wait_for(lock, std::min(std::max(options.respawn_backoff_max, base),
                                         base * (1 << std::min(spawn_failing, 8))));
    }
    workers_cv.notify_all();
  }
}

absl::StatusOr<std::unique_ptr<Worker>> WorkerPool::State::Spawn() {
  if (!options.zygote || zygote.disabled) return SpawnExecutable(argv);
  if (zygote.process == nullptr && Clock::now() >= zygote.retry_at) {
    const SteadyTime start = Clock::now();
    absl::StatusOr<std::unique_ptr<Worker>> started = SpawnExecutable(zygote_argv);
    zygote.startup = Clock::now() - start;
    if (started.ok()) {
      zygote.process = *std::move(started);
      zygote.failures = 0;
      std::lock_guard<std::mutex> lock(mu);
      zygote_pid = zygote.process->pid;
      ++stats.zygote_starts;
      stats.zygote_startup = zygote.startup;
    } else {
      StopZygote(std::string(started.status().message()));
    }
  }
  if (zygote.process != nullptr) {
    absl::StatusOr<std::unique_ptr<Worker>> worker = SpawnFromZygote();
    // Aborted: the zygote is gone or broke its protocol; anything else is about this worker.
    if (worker.ok() || !absl::IsAborted(worker.status())) return worker;
    StopZygote(std::string(worker.status().message()));
  }
  return SpawnExecutable(argv);  // no zygote now: this worker the slow way
}

void WorkerPool::State::CheckZygote() {
  siginfo_t info{};
  // WNOWAIT: only look; StopZygote reaps, so that the pid stays ours until then.
  if (waitid(P_PID, static_cast<id_t>(zygote.process->pid), &info, WEXITED | WNOHANG | WNOWAIT) !=
          0 ||
      info.si_pid == 0) {
    return;
  }
  StopZygote("it ended");
  // Its workers die with it: retire the spares and idle ones that have ended already. A spare
  // still dying is caught when a call takes it; an idle one still dying fails its next call
  // with Unavailable (see Call).
  std::lock_guard<std::mutex> lock(mu);
  for (auto it = spares.begin(); it != spares.end();) {
    if (Ended(**it)) {
      retired.push_back(std::move(*it));
      it = spares.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [name, list] : idle) {
    for (auto it = list.begin(); it != list.end();) {
      if (Ended(**it)) {
        retired.push_back(std::move(*it));
        it = list.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void WorkerPool::State::StopZygote(std::string_view why) {
  int status = 0;
  if (zygote.process != nullptr) {
    // End of stream tells the zygote to kill and reap its workers and exit; the kill is for
    // a zygote that is hung.
    CloseFd(zygote.process->sock);
    status = Reap(zygote.process->pid, std::chrono::milliseconds(1000));
    zygote.process.reset();
    std::lock_guard<std::mutex> lock(mu);
    zygote_pid = -1;
  }
  if (why.empty()) return;  // shutdown
  if (WIFEXITED(status) && WEXITSTATUS(status) == isolate_internal::kZygoteNotSingleThreaded) {
    zygote.disabled = true;  // would fail the same way every time
  }
  ++zygote.failures;
  const std::chrono::milliseconds base =
      std::max(options.respawn_backoff_min, std::chrono::milliseconds(10));
  // Doubling saturates: a huge respawn_backoff_min must not wrap around into the past.
  const int doublings = std::min(zygote.failures, 8);
  const std::chrono::milliseconds grown =
      base.count() > (std::chrono::milliseconds::max().count() >> doublings)
          ? std::chrono::milliseconds::max()
          : base * (1 << doublings);
  zygote.retry_at =
      DeadlineAfter(Clock::now(), std::min(std::max(options.respawn_backoff_max, base), grown));
  std::fprintf(stderr, "framekit isolate: worker zygote %s: %s\n",
               zygote.disabled ? "off for this pool" : "restarting after a backoff",
               std::string(why).c_str());
}

absl::StatusOr<std::unique_ptr<Worker>> WorkerPool::State::SpawnFromZygote() {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::UnavailableError(absl::StrCat("socketpair: ", strerror(errno)));
  }
  auto worker = std::make_unique<Worker>(limits);
  worker->sock = sv[0];
  int fault[2] = {-1, -1};
  int status[2] = {-1, -1};
  // The status pipe does not block: a zygote that died or hangs must not hang a reaping call.
  if (pipe2(fault, O_CLOEXEC) != 0 || pipe2(status, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int error = errno;
    for (int fd : {sv[1], fault[0], fault[1]}) {
      if (fd >= 0) close(fd);
    }
    return absl::UnavailableError(absl::StrCat("pipe2: ", strerror(error)));
  }
  worker->fault = fault[0];
  worker->status = status[0];
  absl::StatusOr<isolate_internal::ZygoteChild> child = isolate_internal::ZygoteFork(
      zygote.process->sock, sv[1], fault[1], status[1], options.startup_timeout);
  close(sv[1]);
  close(fault[1]);
  close(status[1]);
  if (!child.ok()) {
    if (absl::IsUnavailable(child.status())) return absl::AbortedError(child.status().message());
    return child.status();
  }
  worker->pid = child->pid;
  worker->pidfd = child->pidfd;
  absl::Status hello = AwaitHello(*worker, DeadlineAfter(Clock::now(), options.startup_timeout));
  if (!hello.ok()) {
    const std::optional<int> wait_status = ReapWorker(*worker, std::chrono::milliseconds(0));
    const isolate_internal::FaultRecord record =
        isolate_internal::ParseFaultRecord(DrainFaultPipe(worker->fault));
    if (!wait_status) {
      // The zygote ended (and took the worker with it): not the executable's failure. Aborted
      // makes Spawn stop the zygote and start this worker the slow way.
      return absl::AbortedError(
          absl::StrCat("the zygote ended while a worker started: ", hello.message()));
    }
    std::string how = !wait_status ? std::string("its zygote ended")
                      : WIFEXITED(*wait_status)
                          ? absl::StrCat("exit status ", WEXITSTATUS(*wait_status))
                      : WIFSIGNALED(*wait_status) ? SignalName(WTERMSIG(*wait_status))
                                                  : std::string("unknown");
    return absl::UnavailableError(absl::StrCat(
        "worker \"", options.executable, "\" forked by the zygote did not start (", how,
        "): ", hello.message(), record.detail.empty() ? "" : "; ", record.detail));
  }
  return worker;
}

absl::StatusOr<std::unique_ptr<Worker>> WorkerPool::State::SpawnExecutable(
    std::vector<std::string>& argv) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return absl::UnavailableError(absl::StrCat("socketpair: ", strerror(errno)));
  }
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) {
    close(sv[0]);
    close(sv[1]);
    return absl::UnavailableError(absl::StrCat("pipe2: ", strerror(errno)));
  }
  auto worker = std::make_unique<Worker>(limits);
  worker->sock = sv[0];
  worker->fault = pipefd[0];
  // The child's ends move above the target numbers, so that dup2 onto 3 and 4 is never a no-op
  // that would leave close-on-exec set.
  int child_sock = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
  int child_fault = fcntl(pipefd[1], F_DUPFD_CLOEXEC, 10);
  close(sv[1]);
  close(pipefd[1]);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, child_sock, isolate_internal::kWireFd);
  posix_spawn_file_actions_adddup2(&actions, child_fault, isolate_internal::kFaultFd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigset_t all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (std::string& arg : argv) args.push_back(arg.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc =
      posix_spawn(&pid, options.executable.c_str(), &actions, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  close(child_sock);
  close(child_fault);
  if (rc != 0 || child_sock < 0 || child_fault < 0) {
    if (rc == 0) Reap(pid, std::chrono::milliseconds(0));
    return absl::UnavailableError(absl::StrCat("posix_spawn \"", options.executable,
                                               "\": ", strerror(rc != 0 ? rc : EMFILE)));
  }
  worker->pid = pid;
  // Our own child, so its pid cannot be recycled before we reap it: the pidfd tells a call that
  // takes it as a spare whether it died while idle (Ended), as for a zygote's worker.
  worker->pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  absl::Status hello = AwaitHello(*worker, DeadlineAfter(Clock::now(), options.startup_timeout));
  if (!hello.ok()) {
    kill(pid, SIGKILL);
    const int status = Reap(pid, std::chrono::milliseconds(0));
    const isolate_internal::FaultRecord record =
        isolate_internal::ParseFaultRecord(DrainFaultPipe(worker->fault));
    std::string how = WIFEXITED(status)     ? absl::StrCat("exit status ", WEXITSTATUS(status))
                      : WIFSIGNALED(status) ? SignalName(WTERMSIG(status))
                                            : std::string("unknown");
    return absl::UnavailableError(absl::StrCat("worker \"", options.executable,
                                               "\" did not start (", how, "): ", hello.message(),
                                               record.detail.empty() ? "" : "; ", record.detail));
  }
  return worker;
}

absl::Status WorkerPool::State::AwaitHello(Worker& worker, SteadyTime until) {
  char buf[256];
  for (;;) {
    absl::StatusOr<std::optional<isolate_internal::Message>> next = worker.buffer.Next();
    if (!next.ok()) return next.status();
    if (next->has_value()) {
      if ((*next)->type != MessageType::kHello) {
        return absl::InvalidArgumentError("first message is not hello");
      }
      absl::StatusOr<std::int64_t> pid = isolate_internal::DecodeHello((*next)->body);
      if (!pid.ok()) return pid.status();
      if (*pid != worker.pid) return absl::InvalidArgumentError("hello names another pid");
      if (worker.buffer.buffered() != 0) return absl::InvalidArgumentError("data after hello");
      return absl::OkStatus();
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
    if (left.count() <= 0) return absl::DeadlineExceededError("no ready message in time");
    pollfd p{worker.sock, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 1 << 30)));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    const ssize_t n = read(worker.sock, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::UnavailableError("closed before ready");
    worker.buffer.Append(std::string_view(buf, static_cast<std::size_t>(n)));
  }
}

absl::StatusOr<std::unique_ptr<Worker>> WorkerPool::State::Acquire(
    const std::string& handler, bool reuse, std::optional<Deadline> deadline) {
  const SteadyTime acquire_by = DeadlineAfter(Clock::now(), options.acquire_timeout);
  const SteadyTime until = deadline ? std::min(*deadline, acquire_by) : acquire_by;
  std::unique_lock<std::mutex> lock(mu);
  for (;;) {
    if (shut_down) return absl::UnavailableError("isolate: the worker pool is shut down");
    const SteadyTime now = Clock::now();
    if (auto it = backoff.find(handler); it != backoff.end() && now < it->second.not_before) {
      // A crash loop: this handler's next worker waits; other handlers do not.
      if (it->second.not_before > until) {
        return absl::UnavailableError(
            absl::StrCat("isolate: handler \"", handler, "\" is backing off after ",
                         it->second.consecutive, " consecutive worker deaths"));
      }
      workers_cv.wait_until(lock, it->second.not_before);
      continue;
    }
    std::unique_ptr<Worker> worker;
    if (auto it = idle.find(handler); reuse && it != idle.end() && !it->second.empty()) {
      // No liveness check here (the round trip stays one send and one read): the spawner
      // sweeps idle workers when the zygote ends.
      worker = std::move(it->second.back());
      it->second.pop_back();
    } else if (!spares.empty()) {
      worker = std::move(spares.front());
      spares.pop_front();
      spawner_cv.notify_all();  // replace the spare
      if (Ended(*worker)) {
        // Died waiting (its zygote ended, say): not this call's fault; reaped by the spawner.
        retired.push_back(std::move(worker));
        continue;
      }
    }
    if (worker != nullptr) {
      busy.emplace(worker->pid, worker->pidfd);
      ++stats.calls;
      return worker;
    }
    if (spawn_failing > 0 && spawning == 0) {
      return absl::UnavailableError(
          absl::StrCat("isolate: cannot start a worker: ", spawn_error.message()));
    }
    // At capacity with reuse workers of other handlers idle: give one up for this call.
    if (live >= options.max_workers) {
      for (auto& [name, list] : idle) {
        if (!list.empty()) {
          RetireLocked(std::move(list.front()));
          list.erase(list.begin());
          break;
        }
      }
    }
    ++waiting;
    spawner_cv.notify_all();
    const bool timed_out = workers_cv.wait_until(lock, until) == std::cv_status::timeout;
    --waiting;
    if (timed_out && spares.empty()) {
      if (deadline && Clock::now() >= *deadline) {
        return absl::DeadlineExceededError("isolate: deadline passed waiting for a worker");
      }
      return absl::ResourceExhaustedError(absl::StrCat("isolate: no worker within ",
                                                       options.acquire_timeout.count(), " ms (",
                                                       options.max_workers, " workers busy)"));
    }
  }
}

void WorkerPool::State::Release(std::unique_ptr<Worker> worker, const std::string& handler,
                                bool keep) {
  std::lock_guard<std::mutex> lock(mu);
  if (keep && !shut_down) {
    busy.erase(worker->pid);
    idle[handler].push_back(std::move(worker));
    workers_cv.notify_all();
    return;
  }
  RetireLocked(std::move(worker));
}

std::optional<WorkerDeath> WorkerPool::State::Classify(Worker& worker,
                                                       std::chrono::milliseconds wait) {
  WorkerDeath death;
  death.pid = worker.pid;
  const std::optional<int> wait_status = ReapWorker(worker, wait);
  if (!wait_status) return std::nullopt;
  const int status = *wait_status;
  const isolate_internal::FaultRecord record =
      isolate_internal::ParseFaultRecord(DrainFaultPipe(worker.fault));
  death.stack = record.stack;
  death.detail = record.detail;
  if (WIFSIGNALED(status)) {
    death.signal = WTERMSIG(status);
    death.kind = DeathKind::kSignal;
    if (death.signal == SIGSYS && record.syscall >= 0) {
      death.kind = DeathKind::kSeccomp;
      death.syscall = isolate_internal::SyscallName(record.syscall);
    }
  } else {
    death.kind = DeathKind::kExit;
    death.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  return death;
}

void WorkerPool::State::NoteDeath(const std::string& handler) {
  std::lock_guard<std::mutex> lock(mu);
  ++stats.deaths;
  Backoff& b = backoff[handler];
  ++b.consecutive;
  if (b.consecutive >= 2 && options.respawn_backoff_min.count() > 0) {
    const int doublings = std::min(b.consecutive - 2, 16);
    const auto delay = options.respawn_backoff_min > options.respawn_backoff_max / (1 << doublings)
                           ? options.respawn_backoff_max
                           : options.respawn_backoff_min * (1 << doublings);
    b.not_before = DeadlineAfter(Clock::now(), delay);
  }
}

namespace {

// The status of a worker death: Internal carrying an ExtensionPanic with the worker's stack.
absl::Status DeathStatus(std::string_view handler, const WorkerDeath& death) {
  ExtensionPanic panic;
  panic.extension = std::string(handler);
  panic.phase = Phase::kInvoke;
  panic.type = "framekit::isolate::WorkerFault";
  panic.message = death.Summary();
  panic.stack = death.stack;
  return PanicStatus(panic);
}

// One call's exchange with its worker, after the call message went out.
struct Exchange {
  Exchange(WorkerPool::State& s, Worker& w, const Frame& f, dispatch::Sink& o)
      : state(s), worker(w), frame(f), out(o) {}
  WorkerPool::State& state;
  Worker& worker;
  const Frame& frame;
  dispatch::Sink& out;
  std::uint64_t output_bytes = 0;
  bool cancel_sent = false;
  absl::Status stop_reason;  // DeadlineExceeded / Cancelled once cancel_sent
  SteadyTime kill_at{};

  enum class End { kDone, kDied, kKilled, kProtocol, kSinkFailed, kTooMuchOutput };
  End end = End::kDone;
  isolate_internal::DoneMessage done;
  absl::Status sink_status;

  void Run();
  // Handles the buffered messages; returns true when the call ended.
  bool Drain();
};

void Exchange::Run() {
  const std::optional<Deadline> deadline = frame.deadline();
  const std::stop_token stop = frame.stop_token();
  char buf[64 * 1024];
  for (;;) {
    const SteadyTime now = Clock::now();
    if (!cancel_sent && ((deadline && now >= *deadline) || stop.stop_requested())) {
      stop_reason = deadline && now >= *deadline
                        ? absl::DeadlineExceededError("isolate: deadline exceeded; worker stopped")
                        : absl::CancelledError("isolate: call cancelled; worker stopped");
      cancel_sent = true;
      kill_at = DeadlineAfter(now, state.options.cancel_grace);
      (void)isolate_internal::SendAll(worker.sock, isolate_internal::EncodeCancel());
    }
    if (cancel_sent && now >= kill_at) {
      end = End::kKilled;
      return;
    }
    std::int64_t wait_ms = -1;
    const auto until = [&](SteadyTime t) {
      return std::max<std::int64_t>(0,
                                    std::chrono::ceil<std::chrono::milliseconds>(t - now).count());
    };
    if (cancel_sent) {
      wait_ms = until(kill_at);
    } else if (deadline) {
      wait_ms = until(*deadline);
    }
    if (stop.stop_possible() && !cancel_sent) {
      wait_ms = wait_ms < 0 ? 10 : std::min<std::int64_t>(wait_ms, 10);
    }
    pollfd p{worker.sock, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<std::int64_t>(wait_ms, 1 << 30)));
    if (r < 0 && errno != EINTR) {
      end = End::kDied;
      return;
    }
    if (r <= 0) continue;
    const ssize_t n = read(worker.sock, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      end = End::kDied;
      return;
    }
    worker.buffer.Append(std::string_view(buf, static_cast<std::size_t>(n)));
    if (Drain()) return;
  }
}

bool Exchange::Drain() {
  for (;;) {
    absl::StatusOr<std::optional<isolate_internal::Message>> next = worker.buffer.Next();
    if (!next.ok()) {
      end = End::kProtocol;
      return true;
    }
    if (!next->has_value()) return false;
    const isolate_internal::Message& message = **next;
    if (message.type == MessageType::kChunk) {
      absl::StatusOr<std::string_view> chunk = isolate_internal::DecodeChunk(message.body);
      if (!chunk.ok()) {
        end = End::kProtocol;
        return true;
      }
      if (cancel_sent) continue;  // the caller's time is up: late output is dropped
      output_bytes += chunk->size();
      if (output_bytes > state.options.max_output_bytes) {
        end = End::kTooMuchOutput;
        return true;
      }
      if (absl::Status s = out.Write(*chunk); !s.ok()) {
        sink_status = s;
        end = End::kSinkFailed;
        return true;
      }
    } else if (message.type == MessageType::kDone) {
      absl::StatusOr<isolate_internal::DoneMessage> done_message =
          isolate_internal::DecodeDone(message.body, state.limits);
      if (!done_message.ok() || worker.buffer.buffered() != 0) {
        end = End::kProtocol;
        return true;
      }
      done = *std::move(done_message);
      end = End::kDone;
      return true;
    } else {
      end = End::kProtocol;
      return true;
    }
  }
}

}  // namespace

absl::StatusOr<std::shared_ptr<WorkerPool>> WorkerPool::Create(WorkerPoolOptions options) {
  if (options.executable.empty()) {
    return absl::InvalidArgumentError("isolate: WorkerPoolOptions.executable is empty");
  }
  if (options.max_workers <= 0) return absl::InvalidArgumentError("isolate: max_workers <= 0");
  if (options.spare_workers < 0 || options.spare_workers > options.max_workers) {
    return absl::InvalidArgumentError("isolate: spare_workers outside 0..max_workers");
  }
  if (options.cancel_grace.count() < 0 || options.acquire_timeout.count() < 0 ||
      options.startup_timeout.count() <= 0 || options.respawn_backoff_min.count() < 0 ||
      options.respawn_backoff_max < options.respawn_backoff_min) {
    return absl::InvalidArgumentError("isolate: a negative or inverted duration in the options");
  }
  if (options.max_message_bytes < 1024 || options.max_message_bytes > (1u << 30)) {
    return absl::InvalidArgumentError("isolate: max_message_bytes outside 1 KiB..1 GiB");
  }
  if (access(options.executable.c_str(), X_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("isolate: worker executable \"", options.executable, "\": ", strerror(errno)));
  }
  auto state = std::make_shared<State>();
  if (options.portable_keys == nullptr) {
    auto keys = std::make_shared<PortableKeys>();
    if (absl::Status s = AddCallKeys(*keys); !s.ok()) return s;
    options.portable_keys = std::move(keys);
  }
  state->keys = options.portable_keys;
  state->limits.max_message_bytes = options.max_message_bytes;
  isolate_internal::WorkerArgs args;
  args.parent = getpid();
  args.limits = options.limits;
  args.max_message_bytes = options.max_message_bytes;
  state->argv.push_back(options.executable);
  for (std::string& arg : isolate_internal::FormatWorkerArgs(args)) {
    state->argv.push_back(std::move(arg));
  }
  for (const std::string& arg : options.args) state->argv.push_back(arg);
  state->zygote_argv = state->argv;
  state->zygote_argv[1] = isolate_internal::kZygoteFlag;
  state->options = std::move(options);
  state->spawner = std::thread([raw = state.get()] { raw->SpawnerLoop(); });
  return std::shared_ptr<WorkerPool>(new WorkerPool(std::move(state)));
}

WorkerPool::WorkerPool(std::shared_ptr<State> state) : state_(std::move(state)) {}

WorkerPool::~WorkerPool() { Shutdown(); }

void WorkerPool::Shutdown() {
  State& s = *state_;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    if (!s.shut_down) {
      s.shut_down = true;
      for (auto& worker : s.spares) s.retired.push_back(std::move(worker));
      s.spares.clear();
      for (auto& [name, list] : s.idle) {
        for (auto& worker : list) s.retired.push_back(std::move(worker));
      }
      s.idle.clear();
      // Busy workers die now; their calls see the end of stream and return.
      for (const auto& [pid, pidfd] : s.busy) Signal(pid, pidfd, SIGKILL);
    }
    s.spawner_cv.notify_all();
    s.workers_cv.notify_all();
  }
  if (s.spawner.joinable() && s.spawner.get_id() != std::this_thread::get_id()) s.spawner.join();
}

PoolStats WorkerPool::stats() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  PoolStats out = state_->stats;
  out.live = state_->live;
  out.spares = static_cast<int>(state_->spares.size());
  if (out.spawned > 0) out.mean_startup = state_->startup_total / out.spawned;
  out.zygote_pid = state_->zygote_pid > 0 ? state_->zygote_pid : 0;
  return out;
}

std::vector<std::int64_t> WorkerPool::worker_pids() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  std::vector<std::int64_t> pids;
  for (const auto& w : state_->spares) pids.push_back(w->pid);
  for (const auto& [name, list] : state_->idle) {
    for (const auto& w : list) pids.push_back(w->pid);
  }
  for (const auto& [pid, pidfd] : state_->busy) pids.push_back(pid);
  for (const auto& w : state_->retired) {
    if (w->pid > 0) pids.push_back(w->pid);
  }
  return pids;
}

absl::Status WorkerPool::Call(std::string_view handler_view, const Frame& frame,
                              std::string_view payload, dispatch::Sink& out,
                              const CallOptions& options, dispatch::RunStats* stats,
                              WorkerDeath* death_out) {
  State& s = *state_;
  if (frame.cancelled()) {
    return frame.deadline() && Clock::now() >= *frame.deadline()
               ? absl::DeadlineExceededError("isolate: deadline passed before the call")
               : absl::CancelledError("isolate: call cancelled before it started");
  }
  const std::string handler(handler_view);
  isolate_internal::CallMessage message;
  message.handler = handler;
  absl::StatusOr<PortableFrame> portable = s.keys->Encode(frame);
  if (!portable.ok()) return portable.status();
  message.frame = *std::move(portable);
  message.payload = std::string(payload);
  absl::StatusOr<std::string> wire = isolate_internal::EncodeCall(message, s.limits);
  if (!wire.ok()) return wire.status();

  absl::StatusOr<std::unique_ptr<Worker>> acquired =
      s.Acquire(handler, options.reuse, frame.deadline());
  if (!acquired.ok()) return acquired.status();
  std::unique_ptr<Worker> worker = *std::move(acquired);

  Exchange exchange(s, *worker, frame, out);
  if (isolate_internal::SendAll(worker->sock, *wire).ok()) {
    exchange.Run();
  } else {
    exchange.end = Exchange::End::kDied;
  }
  if (stats != nullptr) stats->output_bytes += exchange.output_bytes;

  using End = Exchange::End;
  switch (exchange.end) {
    case End::kDone: {
      const isolate_internal::DoneMessage& done = exchange.done;
      if (stats != nullptr) stats->peak_memory_bytes = done.peak_rss_bytes;
      if (exchange.cancel_sent) {
        s.Release(std::move(worker), handler, /*keep=*/false);
        return exchange.stop_reason;
      }
      if (done.threw) {
        WorkerDeath death;
        death.pid = worker->pid;
        s.Release(std::move(worker), handler, /*keep=*/false);
        death.kind = DeathKind::kHandlerThrew;
        death.detail = absl::StrCat(done.panic_type, ": ", done.panic_message);
        {
          std::lock_guard<std::mutex> lock(s.mu);
          ++s.stats.deaths;
        }
        absl::Status status = DeathStatus(handler, death);
        if (death_out != nullptr) *death_out = std::move(death);
        return status;
      }
      {
        std::lock_guard<std::mutex> lock(s.mu);
        s.backoff.erase(handler);
      }
      s.Release(std::move(worker), handler, options.reuse);
      return absl::Status(done.code, done.message);
    }
    case End::kKilled: {
      s.BeginReap(*worker);
      Signal(worker->pid, worker->pidfd, SIGKILL);
      ReapWorker(*worker, std::chrono::milliseconds(0));
      s.EndReap(std::move(worker));
      {
        std::lock_guard<std::mutex> lock(s.mu);
        ++s.stats.deadline_kills;
      }
      return exchange.stop_reason;
    }
    case End::kSinkFailed:
    case End::kTooMuchOutput:
    case End::kProtocol:
      // The worker stays alive for nothing: kill it first, so that the record is ours.
      s.BeginReap(*worker);
      Signal(worker->pid, worker->pidfd, SIGKILL);
      break;
    case End::kDied:
      s.BeginReap(*worker);
      break;
  }
  // Give an exiting process a moment to become a zombie before concluding it hangs.
  std::optional<WorkerDeath> classified = s.Classify(*worker, std::chrono::milliseconds(1000));
  s.EndReap(std::move(worker));
  if (exchange.end == End::kSinkFailed) return exchange.sink_status;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.shut_down) return absl::UnavailableError("isolate: the worker pool was shut down");
  }
  if (!classified) {
    // The zygote ended (and took its workers with it) during the call: not the handler's fault.
    return absl::UnavailableError("isolate: the worker's zygote ended during the call");
  }
  WorkerDeath& death = *classified;
  if (exchange.end == End::kTooMuchOutput) {
    return absl::ResourceExhaustedError(
        absl::StrCat("isolate: handler \"", handler, "\" wrote more than ",
                     s.options.max_output_bytes, " bytes; worker killed"));
  }
  if (exchange.end == End::kProtocol) {
    death.kind = DeathKind::kProtocol;
    death.signal = 0;
  }
  if (exchange.cancel_sent) {
    // It died after being told to stop: the deadline is what the caller sees.
    return exchange.stop_reason;
  }
  s.NoteDeath(handler);
  absl::Status status = DeathStatus(handler, death);
  if (death_out != nullptr) *death_out = std::move(death);
  return status;
}

namespace {

class IsolatedCodeImpl final : public dispatch::Code {
 public:
  IsolatedCodeImpl(std::shared_ptr<WorkerPool> pool, std::string handler, IsolatedOptions options)
      : pool_(std::move(pool)), handler_(std::move(handler)), options_(options) {}

  bool preemptive() const override { return true; }

  absl::Status Run(const Frame& frame, std::string_view payload, dispatch::Sink& out,
                   dispatch::RunStats& stats) override {
    WorkerDeath record;
    record.pid = -1;
    absl::Status status =
        pool_->Call(handler_, frame, payload, out, options_.call, &stats, &record);
    if (status.code() == absl::StatusCode::kInternal && record.pid != -1)
      ThrowFault(std::move(record));
    return status;
  }

 private:
  [[noreturn]] static void ThrowFault(WorkerDeath death) {
    // The stack rides as the nested level, so that the executor's fault record carries it.
    try {
      throw WorkerStack(death.stack.empty() ? std::string("(no stack recorded)") : death.stack);
    } catch (const WorkerStack&) {
      throw WorkerFault(std::move(death));
    }
  }

  const std::shared_ptr<WorkerPool> pool_;
  const std::string handler_;
  const IsolatedOptions options_;
};

}  // namespace

std::shared_ptr<dispatch::Code> IsolatedCode(std::shared_ptr<WorkerPool> pool, std::string handler,
                                             IsolatedOptions options) {
  if (pool == nullptr || handler.empty()) return nullptr;
  return std::make_shared<IsolatedCodeImpl>(std::move(pool), std::move(handler), options);
}

}  // namespace framekit::isolate
