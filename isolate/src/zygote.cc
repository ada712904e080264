#include "framekit/isolate/internal/zygote.h"

#include <dirent.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framekit/isolate/internal/wire.h"

namespace framekit::isolate_internal {
namespace {

constexpr int kRequestFds = 3;

// Sends `bytes` with `fds` attached (SCM_RIGHTS); false when the peer is gone.
bool SendWithFds(int sock, const void* bytes, std::size_t size, const int* fds, int nfds) {
  iovec iov{const_cast<void*>(bytes), size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kRequestFds)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * nfds);
  }
  for (;;) {
    const ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    return n == static_cast<ssize_t>(size);
  }
}

// Receives up to `size` bytes and the descriptors attached (close-on-exec). Returns the byte
// count (0 at end of stream, -1 on error); `nfds` receives how many descriptors arrived, at most
// `max_fds` (any beyond, or of a truncated message, are closed).
ssize_t RecvWithFds(int sock, void* bytes, std::size_t size, int* fds, int max_fds, int& nfds) {
  nfds = 0;
  iovec iov{bytes, size};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  while ((n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const int count = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (nfds < max_fds && (msg.msg_flags & MSG_CTRUNC) == 0) {
        fds[nfds++] = fd;
      } else {
        close(fd);
      }
    }
  }
  return n;
}

void EncodeLe64(std::int64_t value, unsigned char* out) {
  const auto v = static_cast<std::uint64_t>(value);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

std::int64_t DecodeLe64(const unsigned char* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return static_cast<std::int64_t>(v);
}

// Appends the pids of this process's children to `out`: from /proc/self/task/<pid>/children
// (the zygote has one thread, so that file lists them all), or, where the kernel lacks it, from
// the parent field of every /proc/<pid>/stat.
void ListChildren(std::vector<pid_t>& out) {
  out.clear();
  const pid_t self = getpid();
  char path[64];
  std::snprintf(path, sizeof(path), "/proc/self/task/%d/children", static_cast<int>(self));
  if (const int fd = open(path, O_RDONLY | O_CLOEXEC); fd >= 0) {
    std::string text;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
      if (n > 0) text.append(buf, static_cast<std::size_t>(n));
    }
    close(fd);
    long pid = 0;
    bool in_number = false;
    for (char c : text) {
      if (c >= '0' && c <= '9') {
        pid = pid * 10 + (c - '0');
        in_number = true;
      } else if (in_number) {
        out.push_back(static_cast<pid_t>(pid));
        pid = 0;
        in_number = false;
      }
    }
    if (in_number) out.push_back(static_cast<pid_t>(pid));
    return;
  }
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return;
  while (dirent* entry = readdir(dir)) {
    const int pid = std::atoi(entry->d_name);
    if (pid <= 0) continue;
    std::snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    char stat[512];
    const ssize_t n = read(fd, stat, sizeof(stat) - 1);
    close(fd);
    if (n <= 0) continue;
    stat[n] = '\0';
    const char* close_paren = std::strrchr(stat, ')');
    int ppid = 0;
    char state = 0;
    if (close_paren != nullptr && std::sscanf(close_paren + 1, " %c %d", &state, &ppid) == 2 &&
        ppid == self) {
      out.push_back(static_cast<pid_t>(pid));
    }
  }
  closedir(dir);
}

// The zygote's state: its control socket, its SIGCHLD signalfd and each live worker's status
// pipe. Single-threaded; lives for the zygote's whole life.
//
// The zygote is a child subreaper (PR_SET_CHILD_SUBREAPER): a process that a worker started
// (possible only with seccomp off) and that lost its parent comes to the zygote rather than to
// init, even after setsid(). The zygote's only children of its own are the workers it forked
// (status_fds), so every other child is such an orphan: it is killed and reaped whenever a
// child of the zygote ends (a worker's orphans are reparented before its death is signalled)
// and when the zygote exits. Descendants of a worker that still runs stay the worker's.
struct Zygote {
  int control = -1;
  int sigchld = -1;
  std::map<pid_t, int> status_fds;  // worker pid -> its status pipe's write end
  std::vector<pid_t> children;      // scratch for ListChildren

  void Report(pid_t pid, int wait_status) {
    auto it = status_fds.find(pid);
    if (it == status_fds.end()) return;  // an orphan a worker left
    ssize_t ignored = write(it->second, &wait_status, sizeof(wait_status));
    (void)ignored;
    close(it->second);
    status_fds.erase(it);
  }
  void ReapAll(int flags) {
    int wait_status = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &wait_status, flags)) > 0 || (pid < 0 && errno == EINTR)) {
      if (pid > 0) Report(pid, wait_status);
    }
  }
  // Kills every child that is not a worker; they are reaped on the SIGCHLD their deaths raise
  // (and whatever they leave comes here in turn).
  void KillOrphans() {
    ListChildren(children);
    for (pid_t pid : children) {
      if (!status_fds.contains(pid)) kill(pid, SIGKILL);
    }
  }
  // Kills every child, workers and orphans, and reaps them all, orphans those leave included.
  [[noreturn]] void Exit() {
    for (const auto& [pid, fd] : status_fds) kill(pid, SIGKILL);
    for (;;) {
      ListChildren(children);
      for (pid_t pid : children) kill(pid, SIGKILL);
      int wait_status = 0;
      const pid_t pid = waitpid(-1, &wait_status, 0);
      if (pid > 0) {
        Report(pid, wait_status);
      } else if (errno != EINTR) {
        break;  // ECHILD: none left
      }
    }
    _exit(0);
  }
  // Returns the new worker's pid in the worker (0 in the zygote after it answered).
  pid_t Fork(const int* fds, int nfds);
};

pid_t Zygote::Fork(const int* fds, int nfds) {
  unsigned char reply[8];
  if (nfds != kRequestFds) {
    for (int i = 0; i < nfds; ++i) close(fds[i]);
    EncodeLe64(-EINVAL, reply);
    if (!SendWithFds(control, reply, sizeof(reply), nullptr, 0)) Exit();
    return 0;
  }
  const pid_t zygote = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // The worker: only its wire (3) and fault pipe (4) stay; its fds move above 4 first, so
    // that neither dup2 overwrites the other's source.
    close(control);
    close(sigchld);
    for (const auto& [other, fd] : status_fds) close(fd);
    close(fds[2]);
    const int wire = fcntl(fds[0], F_DUPFD, 10);
    const int fault = fcntl(fds[1], F_DUPFD, 10);
    close(fds[0]);
    close(fds[1]);
    if (wire < 0 || fault < 0 || dup2(wire, kWireFd) < 0 || dup2(fault, kFaultFd) < 0) _exit(3);
    close(wire);
    close(fault);
    signal(SIGCHLD, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    return zygote;
  }
  const int fork_errno = errno;
  close(fds[0]);
  close(fds[1]);
  if (pid < 0) {
    close(fds[2]);
    EncodeLe64(-fork_errno, reply);
    if (!SendWithFds(control, reply, sizeof(reply), nullptr, 0)) Exit();
    return 0;
  }
  status_fds[pid] = fds[2];
  // The pid cannot be recycled before this process waits for it: the pidfd names the worker.
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int open_errno = errno;
    kill(pid, SIGKILL);  // reaped and reported like any worker
    EncodeLe64(-open_errno, reply);
    if (!SendWithFds(control, reply, sizeof(reply), nullptr, 0)) Exit();
    return 0;
  }
  EncodeLe64(pid, reply);
  const bool sent = SendWithFds(control, reply, sizeof(reply), &pidfd, 1);
  close(pidfd);
  if (!sent) Exit();
  return 0;
}

[[noreturn]] void ZygoteFail(const char* what, int code) {
  const std::string line = absl::StrCat("detail zygote: ", what, "\n");
  ssize_t ignored = write(kFaultFd, line.data(), line.size());
  (void)ignored;
  std::fprintf(stderr, "framekit zygote: %s\n", what);
  _exit(code);
}

}  // namespace

int CountThreads() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int n = 0;
  while (dirent* entry = readdir(dir)) n += entry->d_name[0] != '.' ? 1 : 0;
  closedir(dir);
  return n;
}

pid_t RunZygote(const WorkerArgs& args) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // Orphans of workers come here, not to init (see Zygote). Not inherited by the workers.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (getppid() != static_cast<pid_t>(args.parent)) _exit(1);
  if (const int threads = CountThreads(); threads != 1) {
    ZygoteFail(absl::StrCat(threads, " threads at start-up; a zygote must have one").c_str(),
               kZygoteNotSingleThreaded);
  }
  dup2(STDERR_FILENO, STDOUT_FILENO);
  // What every worker needs and the fork can share: backtrace() loads libgcc's unwinder.
  void* warm[4];
  backtrace(warm, 4);
  Zygote z;
  z.control = fcntl(kWireFd, F_DUPFD_CLOEXEC, 10);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, nullptr);
  z.sigchld = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  if (z.control < 0 || z.sigchld < 0) ZygoteFail(strerror(errno), 3);
  close(kWireFd);
  if (!SendAll(z.control, EncodeHello(getpid())).ok()) _exit(0);
  close(kFaultFd);  // start-up went well: nothing more to report there
  for (;;) {
    pollfd p[2] = {{z.control, POLLIN, 0}, {z.sigchld, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      z.Exit();
    }
    if (p[1].revents != 0) {
      signalfd_siginfo info;
      while (read(z.sigchld, &info, sizeof(info)) > 0) {
      }
      z.ReapAll(WNOHANG);
      z.KillOrphans();
    }
    if (p[0].revents == 0) continue;
    char request = 0;
    int fds[8];
    int nfds = 0;
    const ssize_t n = RecvWithFds(z.control, &request, 1, fds, 8, nfds);
    if (n <= 0 || request != 'F') {
      for (int i = 0; i < nfds; ++i) close(fds[i]);
      z.Exit();  // the host closed the socket, died, or sent what it never sends
    }
    if (const pid_t parent = z.Fork(fds, nfds); parent != 0) return parent;
  }
}

absl::StatusOr<ZygoteChild> ZygoteFork(int control, int wire, int fault, int status,
                                       std::chrono::milliseconds timeout) {
  const char request = 'F';
  const int fds[kRequestFds] = {wire, fault, status};
  if (!SendWithFds(control, &request, 1, fds, kRequestFds)) {
    return absl::UnavailableError(absl::StrCat("zygote: send: ", strerror(errno)));
  }
  pollfd p{control, POLLIN, 0};
  int r;
  // A huge timeout (up to milliseconds::max()) waits as long as poll can, never wraps around.
  const int wait_ms = static_cast<int>(
      std::clamp<std::int64_t>(timeout.count(), 0, std::numeric_limits<int>::max()));
  while ((r = poll(&p, 1, wait_ms)) < 0 && errno == EINTR) {
  }
  if (r == 0) return absl::UnavailableError("zygote: no answer in time");
  if (r < 0) return absl::UnavailableError(absl::StrCat("zygote: poll: ", strerror(errno)));
  unsigned char reply[8];
  int got[8];
  int nfds = 0;
  const ssize_t n = RecvWithFds(control, reply, sizeof(reply), got, 8, nfds);
  const auto close_all = [&] {
    for (int i = 0; i < nfds; ++i) close(got[i]);
  };
  if (n != static_cast<ssize_t>(sizeof(reply))) {
    close_all();
    return absl::UnavailableError(n == 0 ? "zygote: ended" : "zygote: malformed answer");
  }
  const std::int64_t pid = DecodeLe64(reply);
  if (pid <= 0) {
    close_all();
    if (pid < -4095 || pid == 0) return absl::UnavailableError("zygote: malformed answer");
    return absl::InternalError(absl::StrCat("zygote: fork: ", strerror(static_cast<int>(-pid))));
  }
  if (nfds != 1 || pid > INT32_MAX) {
    close_all();
    return absl::UnavailableError("zygote: malformed answer");
  }
  return ZygoteChild{static_cast<pid_t>(pid), got[0]};
}

}  // namespace framekit::isolate_internal
