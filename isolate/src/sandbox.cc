#include "framekit/isolate/internal/sandbox.h"

#include <cxxabi.h>
#include <errno.h>
#include <execinfo.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string_view>
#include <typeinfo>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "framekit/isolate/internal/zygote.h"

namespace framekit::isolate_internal {
namespace {

bool ParseFlag(std::string_view arg, std::string_view name, std::uint64_t& value) {
  if (!arg.starts_with(name)) return false;
  arg.remove_prefix(name.size());
  return absl::SimpleAtoi(absl::string_view(arg.data(), arg.size()), &value);
}

// ---- crash handler: everything below runs in a signal handler or in std::terminate -------

int g_fault_fd = -1;

// Async-signal-safe writes: write(2) only, no allocation, no locale.
void WriteAll(const char* data, std::size_t size) {
  while (size > 0) {
    const ssize_t n = write(g_fault_fd, data, size);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}
void WriteStr(const char* s) { WriteAll(s, std::strlen(s)); }
void WriteNumber(long value) {
  char buf[24];
  int i = sizeof(buf);
  const bool negative = value < 0;
  unsigned long v = negative ? 0UL - static_cast<unsigned long>(value) : value;
  do {
    buf[--i] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0 && i > 1);
  if (negative) buf[--i] = '-';
  WriteAll(buf + i, sizeof(buf) - i);
}

void WriteStack() {
  void* frames[64];
  const int depth = backtrace(frames, 64);
  backtrace_symbols_fd(frames, depth, g_fault_fd);
}

void OnFatalSignal(int sig, siginfo_t* info, void*) {
  const int saved_errno = errno;
  WriteStr("signal ");
  WriteNumber(sig);
  WriteStr("\n");
  if (sig == SIGSYS && info != nullptr) {
    WriteStr("syscall ");
    WriteNumber(info->si_syscall);
    WriteStr("\n");
  }
  WriteStack();
  errno = saved_errno;
  // SA_RESETHAND restored the default action: die by the same signal, so that the host's
  // waitpid sees it. A synchronous fault re-executes the faulting instruction; raise covers
  // the rest (abort, a trapped syscall).
  raise(sig);
}

void OnTerminate() {
  WriteStr("detail terminate: ");
  if (std::exception_ptr current = std::current_exception()) {
    const std::type_info* type = abi::__cxa_current_exception_type();
    int status = 0;
    char* name =
        type != nullptr ? abi::__cxa_demangle(type->name(), nullptr, nullptr, &status) : nullptr;
    WriteStr("uncaught ");
    WriteStr(name != nullptr ? name : (type != nullptr ? type->name() : "exception"));
    std::free(name);
    try {
      std::rethrow_exception(current);
    } catch (const std::exception& e) {
      WriteStr(": ");
      WriteStr(e.what());
    } catch (...) {
    }
  } else {
    WriteStr("called without an exception");
  }
  WriteStr("\n");
  std::abort();
}

}  // namespace

std::vector<std::string> FormatWorkerArgs(const WorkerArgs& args) {
  return {kWorkerFlag,
          absl::StrCat("--parent=", args.parent),
          absl::StrCat("--as=", args.limits.address_space_bytes),
          absl::StrCat("--cpu=", args.limits.cpu_seconds),
          absl::StrCat("--nofile=", args.limits.open_files),
          absl::StrCat("--seccomp=", args.limits.seccomp ? 1 : 0),
          absl::StrCat("--max-message=", args.max_message_bytes)};
}

absl::StatusOr<WorkerArgs> ParseWorkerArgs(int argc, char** argv) {
  if (argc < 8 ||
      (std::string_view(argv[1]) != kWorkerFlag && std::string_view(argv[1]) != kZygoteFlag)) {
    return absl::InvalidArgumentError(
        "not started by a framekit WorkerPool (expected --framekit-worker and its flags)");
  }
  WorkerArgs args;
  std::uint64_t parent = 0;
  std::uint64_t seccomp = 0;
  if (!ParseFlag(argv[2], "--parent=", parent) ||
      !ParseFlag(argv[3], "--as=", args.limits.address_space_bytes) ||
      !ParseFlag(argv[4], "--cpu=", args.limits.cpu_seconds) ||
      !ParseFlag(argv[5], "--nofile=", args.limits.open_files) ||
      !ParseFlag(argv[6], "--seccomp=", seccomp) || seccomp > 1 ||
      !ParseFlag(argv[7], "--max-message=", args.max_message_bytes) || parent == 0) {
    return absl::InvalidArgumentError("malformed framekit worker flags");
  }
  args.parent = static_cast<std::int64_t>(parent);
  args.limits.seccomp = seccomp == 1;
  args.zygote = std::string_view(argv[1]) == kZygoteFlag;
  return args;
}

bool SanitizerBuild() {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
  return true;
#else
  return false;
#endif
#else
  return false;
#endif
}

absl::Status ApplyLimits(const isolate::WorkerLimits& limits) {
  const auto set = [](int resource, std::uint64_t value, std::string_view name) -> absl::Status {
    if (value == 0) return absl::OkStatus();
    rlimit limit{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
    if (setrlimit(resource, &limit) != 0) {
      return absl::InternalError(absl::StrCat(
          "setrlimit(", absl::string_view(name.data(), name.size()), "): ", std::strerror(errno)));
    }
    return absl::OkStatus();
  };
  // No core dumps: the crash is reported through the fault record, and writing a core of every
  // crashing worker (or piping it to a core handler, which RLIMIT_CORE alone does not stop)
  // would cost far more than the replacement. Not dumpable also keeps other processes of the
  // same user from attaching to the worker.
  const rlimit no_core{0, 0};
  if (setrlimit(RLIMIT_CORE, &no_core) != 0 || prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    return absl::InternalError(absl::StrCat("no core dumps: ", std::strerror(errno)));
  }
  if (!SanitizerBuild()) {
    if (absl::Status s = set(RLIMIT_AS, limits.address_space_bytes, "RLIMIT_AS"); !s.ok()) return s;
  }
  if (limits.cpu_seconds != 0) {
    // The soft limit sends SIGXCPU; the hard limit a second later SIGKILL.
    rlimit cpu{static_cast<rlim_t>(limits.cpu_seconds),
               static_cast<rlim_t>(limits.cpu_seconds + 1)};
    if (setrlimit(RLIMIT_CPU, &cpu) != 0) {
      return absl::InternalError(absl::StrCat("setrlimit(RLIMIT_CPU): ", std::strerror(errno)));
    }
  }
  return set(RLIMIT_NOFILE, limits.open_files, "RLIMIT_NOFILE");
}

absl::StatusOr<std::string> CompileSeccompProfile() {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (ctx == nullptr) return absl::InternalError("seccomp_init failed");
  int rc = 0;
  // SCMP_ACT_TRAP: the call is not executed; SIGSYS reaches the crash handler, which records
  // the call's number, and the worker dies by SIGSYS.
  static constexpr const char* kDenied[] = {
      "execve",          "execveat",    "ptrace",       "process_vm_readv", "process_vm_writev",
      "mount",           "umount2",     "pivot_root",   "chroot",           "unshare",
      "setns",           "init_module", "finit_module", "delete_module",    "kexec_load",
      "kexec_file_load", "reboot",      "swapon",       "swapoff",          "bpf",
      "perf_event_open", "keyctl",      "add_key",      "request_key",      "fork",
      "vfork",           "acct",        "settimeofday", "clock_settime",    "open_by_handle_at",
      "userfaultfd",     "fsopen",      "fsmount",      "move_mount",       "open_tree",
  };
  for (const char* name : kDenied) {
    const int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if ((rc = seccomp_rule_add(ctx, SCMP_ACT_TRAP, nr, 0)) != 0) break;
  }
  // clone: threads (CLONE_THREAD) only, never a new process. clone3 passes its flags in memory
  // that a filter cannot read: it fails with ENOSYS and glibc falls back to clone.
  if (rc == 0) {
    rc = seccomp_rule_add(ctx, SCMP_ACT_TRAP, SCMP_SYS(clone), 1,
                          SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
  }
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  // libseccomp 2.5 exports to a descriptor only: a memory file, read back.
  const int fd = rc == 0 ? memfd_create("framekit-seccomp", MFD_CLOEXEC) : -1;
  if (rc == 0 && fd < 0) rc = -errno;
  if (rc == 0) rc = seccomp_export_bpf(ctx, fd);
  seccomp_release(ctx);
  std::string program;
  if (rc == 0) {
    char buf[4096];
    ssize_t n;
    while ((n = pread(fd, buf, sizeof(buf), static_cast<off_t>(program.size()))) > 0 ||
           (n < 0 && errno == EINTR)) {
      if (n > 0) program.append(buf, static_cast<std::size_t>(n));
    }
    if (n < 0) rc = -errno;
  }
  if (fd >= 0) close(fd);
  if (rc == 0 && (program.empty() || program.size() % sizeof(sock_filter) != 0 ||
                  program.size() / sizeof(sock_filter) > BPF_MAXINSNS)) {
    rc = -EINVAL;
  }
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("seccomp profile: ", std::strerror(-rc)));
  }
  return program;
}

absl::Status LoadSeccompProgram(const std::string& program) {
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(program.size() / sizeof(sock_filter));
  prog.filter = reinterpret_cast<sock_filter*>(const_cast<char*>(program.data()));
  // As seccomp_load does: no new privileges, then the filter on every thread (TSYNC).
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) != 0) {
    return absl::InternalError(absl::StrCat("seccomp profile: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::string SyscallName(long number) {
  char* name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, static_cast<int>(number));
  std::string out = name != nullptr ? std::string(name) : absl::StrCat("#", number);
  std::free(name);
  return out;
}

void InstallCrashHandler(int fault_fd) {
  g_fault_fd = fault_fd;
  // backtrace() loads libgcc's unwinder on first use, which allocates: do it now.
  void* warm[4];
  backtrace(warm, 4);
  // A stack overflow leaves no stack to run the handler on: give it its own. Never freed.
  static constexpr std::size_t kAltStack = 64 * 1024;
  stack_t alt{};
  alt.ss_sp = std::malloc(kAltStack);
  alt.ss_size = kAltStack;
  if (alt.ss_sp != nullptr) sigaltstack(&alt, nullptr);
  struct sigaction action {};
  action.sa_sigaction = OnFatalSignal;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS})
    sigaction(sig, &action, nullptr);
  std::set_terminate(OnTerminate);
}

}  // namespace framekit::isolate_internal
