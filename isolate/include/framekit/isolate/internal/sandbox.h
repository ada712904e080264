// Worker start-up pieces shared by the pool (which formats them) and WorkerMain (which applies
// them): the command line, the limits, the seccomp profile and the crash handler.
#ifndef FRAMEKIT_ISOLATE_INTERNAL_SANDBOX_H_
#define FRAMEKIT_ISOLATE_INTERNAL_SANDBOX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/isolate/pool.h"

namespace framekit::isolate_internal {

inline constexpr char kWorkerFlag[] = "--framekit-worker";
inline constexpr int kWireFd = 3;   // the socketpair end, in the worker
inline constexpr int kFaultFd = 4;  // the fault pipe's write end, in the worker

struct WorkerArgs {
  std::int64_t parent = 0;
  isolate::WorkerLimits limits;
  std::uint64_t max_message_bytes = 8 << 20;
  bool zygote = false;  // started with kZygoteFlag (zygote.h) instead of kWorkerFlag
};

// "--framekit-worker", "--parent=N", "--as=N", ... (args.zygote is not formatted: the pool
// puts zygote.h's kZygoteFlag in place of the first).
std::vector<std::string> FormatWorkerArgs(const WorkerArgs& args);
// InvalidArgument unless argv (after argv[0]) holds exactly what FormatWorkerArgs wrote (its
// first flag possibly the zygote's), possibly followed by the application's own arguments
// (ignored).
absl::StatusOr<WorkerArgs> ParseWorkerArgs(int argc, char** argv);

// setrlimit for each non-zero limit (address space skipped in a sanitizer build); no core dumps
// (RLIMIT_CORE 0, PR_SET_DUMPABLE 0).
absl::Status ApplyLimits(const isolate::WorkerLimits& limits);
// The default profile (see WorkerLimits::seccomp) in two steps. Compiling is the slow part
// (libseccomp builds the program): a zygote compiles once and each worker it forks only loads.
// The profile as a BPF program (an array of struct sock_filter, as bytes).
absl::StatusOr<std::string> CompileSeccompProfile();
// PR_SET_NO_NEW_PRIVS, then the program on every thread of the process.
absl::Status LoadSeccompProgram(const std::string& program);
// The name of syscall `number` on this architecture, or the number as text.
std::string SyscallName(long number);

// Installs the crash handler (alternate stack, fatal signals, terminate handler) writing to
// `fault_fd`. Preloads what backtrace() needs, so that the handler itself does not allocate.
void InstallCrashHandler(int fault_fd);

// True in a build with AddressSanitizer or ThreadSanitizer.
bool SanitizerBuild();

}  // namespace framekit::isolate_internal

#endif  // FRAMEKIT_ISOLATE_INTERNAL_SANDBOX_H_
