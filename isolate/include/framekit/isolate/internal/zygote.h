// The worker zygote: one process of the worker executable, started once by the pool, that forks
// a ready worker on request, so that a replacement worker costs a fork instead of an exec and
// the dynamic loading of every shared library.
//
// Why a fork is safe here: the zygote is single-threaded. It is started with posix_spawn (never
// forked from the threaded host), runs only WorkerMain's argument parsing and this loop (no
// handler, no thread), and checks at start-up that it has exactly one thread (static
// initialisers of the application or a sanitizer runtime could start one); if it has more it
// exits with kZygoteNotSingleThreaded and the pool starts every worker with posix_spawn instead.
//
// Protocol over the control socket (a socketpair; the zygote's end was fd 3 at start-up):
//   zygote -> host   the usual hello message with its pid, once;
//   host -> zygote   one byte 'F' carrying three descriptors (SCM_RIGHTS): the worker's end of
//                    its wire, the write end of its fault pipe, the write end of its status pipe;
//   zygote -> host   8 bytes, little-endian: the new worker's pid, carrying a pidfd of it; or
//                    -errno, carrying nothing, when the fork failed.
// The zygote reaps its workers (they are its children, not the host's) and writes each one's
// wait status (4 bytes, native int) to its status pipe, then closes it: the host reads the real
// wait status there, from a pipe the worker never held. End of stream on the control socket
// (the host closed it, or died) makes the zygote kill and reap its workers and exit.
//
// Lifetimes: the zygote asks for SIGKILL when the host's spawning thread ends
// (PR_SET_PDEATHSIG), each worker asks for SIGKILL when the zygote ends. Killing the host kills
// the zygote, which kills its workers: no worker outlives the host.
//
// Descendants of workers: the zygote is a child subreaper (PR_SET_CHILD_SUBREAPER), so a
// process a worker started (seccomp off) that loses its parent is reparented to the zygote, even
// after setsid(). Every child of the zygote that is not a worker it forked is such an orphan and
// is killed and reaped: when any child of the zygote ends, and when the zygote exits (end of
// stream on the control socket). A descendant of a worker that still runs stays the worker's
// until the worker ends. Not covered: a zygote killed by SIGKILL (the host killed) cannot kill
// the orphans it holds; they go to init.
#ifndef FRAMEKIT_ISOLATE_INTERNAL_ZYGOTE_H_
#define FRAMEKIT_ISOLATE_INTERNAL_ZYGOTE_H_

#include <sys/types.h>

#include <chrono>

#include "absl/status/statusor.h"
#include "framekit/isolate/internal/sandbox.h"

namespace framekit::isolate_internal {

inline constexpr char kZygoteFlag[] = "--framekit-zygote";
// The zygote's exit status when it finds more than one thread at start-up.
inline constexpr int kZygoteNotSingleThreaded = 4;

// Worker side, from WorkerMain in zygote mode: serves fork requests until the host closes the
// control socket, then exits. Returns only in a forked worker, with fds 3 and 4 its own wire
// and fault pipe, every descriptor of the zygote closed and the signal mask cleared; the
// return value is the zygote's pid (the worker's expected parent).
pid_t RunZygote(const WorkerArgs& args);

struct ZygoteChild {
  pid_t pid = -1;
  int pidfd = -1;  // owned by the caller
};

// Host side: asks the zygote on `control` for a worker with the given child ends (the caller
// keeps and closes them) and waits up to `timeout` for the answer.
//   Unavailable  the zygote is gone, hung or broke the protocol (stop using it);
//   Internal     the zygote is fine but its fork failed (errno in the message).
absl::StatusOr<ZygoteChild> ZygoteFork(int control, int wire, int fault, int status,
                                       std::chrono::milliseconds timeout);

// The number of threads of this process (from /proc/self/task), -1 when unknown.
int CountThreads();

}  // namespace framekit::isolate_internal

#endif  // FRAMEKIT_ISOLATE_INTERNAL_ZYGOTE_H_
