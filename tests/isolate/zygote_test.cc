// The worker zygote (framekit/isolate/internal/zygote.h): workers are forked by it, deaths keep
// their full fault record, nothing is left behind, and the pool survives the zygote's death.
#include "framekit/isolate/internal/zygote.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "framekit/isolate/pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "tests/isolate/isolate_test_util.h"

namespace framekit::isolate {
namespace {

using ::framekit::isolate_test::Children;
using ::framekit::isolate_test::MakePool;
using ::framekit::isolate_test::StringSink;
using ::framekit::isolate_test::TestOptions;
using ::framekit::isolate_test::WaitForChildren;
using ::framekit::isolate_test::WaitForSpares;
using ::framekit::isolate_test::Zombies;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;

struct ProcStat {
  bool exists = false;
  char state = '?';
  int ppid = 0;
};

ProcStat Stat(int pid) {
  const std::string stat = isolate_test::ReadProcFile("/proc/" + std::to_string(pid) + "/stat");
  ProcStat out;
  const std::size_t close = stat.rfind(')');
  if (close == std::string::npos) return out;
  out.exists = true;
  std::sscanf(stat.c_str() + close + 1, " %c %d", &out.state, &out.ppid);
  return out;
}

// The processes whose parent is `parent`, from /proc.
std::vector<int> ChildrenOf(int parent) {
  std::vector<int> out;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return out;
  while (dirent* entry = readdir(dir)) {
    const int pid = std::atoi(entry->d_name);
    if (pid > 0 && Stat(pid).ppid == parent) out.push_back(pid);
  }
  closedir(dir);
  return out;
}

// Waits (bounded) until `pid` no longer runs: gone from /proc, or a zombie of someone else's.
bool Gone(int pid, std::chrono::milliseconds bound = std::chrono::seconds(5)) {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    const ProcStat s = Stat(pid);
    if (!s.exists || (s.state == 'Z' && s.ppid != getpid())) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

absl::StatusOr<std::string> CallString(WorkerPool& pool, std::string_view handler,
                                       std::string_view payload = {}, WorkerDeath* death = nullptr,
                                       CallOptions options = {}) {
  StringSink sink;
  absl::Status s = pool.Call(handler, Frame(), payload, sink, options, nullptr, death);
  if (!s.ok()) return s;
  return sink.out;
}

// Tests that the host forks nothing itself: its one child is the single-threaded zygote, and the
// workers are the zygote's children.
TEST(Zygote, WorkersAreForkedBySingleThreadedZygote) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  const PoolStats stats = pool->stats();
  ASSERT_GT(stats.zygote_pid, 0);
  EXPECT_EQ(stats.zygote_starts, 1u);
  EXPECT_GT(stats.zygote_startup.count(), 0);
  const int zygote = static_cast<int>(stats.zygote_pid);
  const std::vector<isolate_test::ChildProcess> children = Children();
  ASSERT_EQ(children.size(), 1u);
  EXPECT_EQ(children[0].pid, zygote);
  int tasks = 0;
  if (DIR* dir = opendir(("/proc/" + std::to_string(zygote) + "/task").c_str())) {
    while (dirent* entry = readdir(dir)) tasks += entry->d_name[0] != '.' ? 1 : 0;
    closedir(dir);
  }
  EXPECT_EQ(tasks, 1);
  const std::vector<std::int64_t> workers = pool->worker_pids();
  ASSERT_EQ(workers.size(), 2u);
  for (std::int64_t pid : workers) EXPECT_EQ(Stat(static_cast<int>(pid)).ppid, zygote);
  pool->Shutdown();
  EXPECT_TRUE(Gone(zygote));
  for (std::int64_t pid : workers) EXPECT_TRUE(Gone(static_cast<int>(pid)));
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
}

// Tests that the fresh-per-call default still means a new process for every call.
TEST(Zygote, FreshCallsEachGetANewProcess) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  std::set<std::string> pids;
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<std::string> pid = CallString(*pool, "pid");
    ASSERT_THAT(pid, IsOk());
    EXPECT_NE(*pid, std::to_string(pool->stats().zygote_pid));
    pids.insert(*pid);
  }
  EXPECT_EQ(pids.size(), 6u);
  // And a fresh worker does not share the state a reused one built up.
  EXPECT_THAT(CallString(*pool, "counter", "", nullptr, {.reuse = true}), IsOk());
  EXPECT_THAT(CallString(*pool, "counter", "", nullptr, {.reuse = true}),
              isolate_test::IsOkAndHolds(std::string("2")));
  EXPECT_THAT(CallString(*pool, "counter"), isolate_test::IsOkAndHolds(std::string("1")));
  EXPECT_GT(pool->stats().zygote_pid, 0);
  pool->Shutdown();
  EXPECT_EQ(WaitForChildren(0), 0u);
}

// Tests that the zygote's workers keep the whole fault record: signal name, exit code, the
// crash handler's stack, the denied syscall; and that no zombie is left under the zygote.
TEST(Zygote, FaultRecordsStayComplete) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  WorkerDeath segv;
  EXPECT_THAT(CallString(*pool, "segv", "", &segv),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("SIGSEGV (Segmentation fault)")));
  EXPECT_EQ(segv.kind, DeathKind::kSignal);
  EXPECT_EQ(segv.signal, SIGSEGV);
  EXPECT_THAT(segv.stack, HasSubstr("WorkerMain"));
  WorkerDeath aborted;
  EXPECT_THAT(CallString(*pool, "abort", "", &aborted), StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(aborted.signal, SIGABRT);
  EXPECT_FALSE(aborted.stack.empty());
  WorkerDeath exited;
  EXPECT_THAT(CallString(*pool, "exit", "", &exited),
              StatusIs(absl::StatusCode::kInternal, HasSubstr("exited with status 7")));
  EXPECT_EQ(exited.kind, DeathKind::kExit);
  EXPECT_EQ(exited.exit_code, 7);
  WorkerDeath terminated;
  EXPECT_THAT(CallString(*pool, "noexcept_throw", "", &terminated),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(terminated.detail, HasSubstr("uncaught std::runtime_error"));
  WorkerDeath denied;
  EXPECT_THAT(CallString(*pool, "exec", "", &denied), StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(denied.kind, DeathKind::kSeccomp);
  EXPECT_EQ(denied.syscall, "execve");
  EXPECT_EQ(pool->stats().deaths, 5u);
  const int zygote = static_cast<int>(pool->stats().zygote_pid);
  ASSERT_GT(zygote, 0);
  for (const WorkerDeath* d : {&segv, &aborted, &exited, &terminated, &denied}) {
    EXPECT_TRUE(Gone(static_cast<int>(d->pid))) << d->pid;
  }
  // The zygote reaps at once: no zombie of its own for long.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  int zombies = 0;
  do {
    zombies = 0;
    for (int pid : ChildrenOf(zygote)) zombies += Stat(pid).state == 'Z' ? 1 : 0;
  } while (zombies > 0 && std::chrono::steady_clock::now() < until);
  EXPECT_EQ(zombies, 0);
  pool->Shutdown();
  EXPECT_TRUE(Gone(zygote));
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
}

// Tests that killing the zygote takes its idle workers with it, that the pool reaps it, starts
// a new one and serves calls again, and that a call in flight on one of its workers fails with
// Unavailable, not as a fault of its handler.
TEST(Zygote, KilledZygoteIsReplacedAndCallsGoOn) {
  auto pool = MakePool();
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  const int first = static_cast<int>(pool->stats().zygote_pid);
  ASSERT_GT(first, 0);
  absl::Status in_flight;
  std::thread busy([&] { in_flight = CallString(*pool, "sleep", "10000").status(); });
  while (pool->stats().calls == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  // The spare the call took is replaced: no fork in flight, so these are all the zygote's
  // workers. (A worker forked just before the zygote dies may live long enough to be handed a
  // call, which then fails with Unavailable as above: that race is inherent, not tested here.)
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::vector<std::int64_t> workers = pool->worker_pids();
  ASSERT_EQ(workers.size(), 3u);
  // pidfds, readable once every thread of the worker has ended (a zombie leader in /proc may
  // still have a thread exiting): what the pool itself looks at before handing out a spare.
  std::vector<int> pidfds;
  for (std::int64_t pid : workers) {
    pidfds.push_back(static_cast<int>(syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
    ASSERT_GE(pidfds.back(), 0);
  }
  ASSERT_EQ(kill(first, SIGKILL), 0);
  busy.join();
  EXPECT_THAT(in_flight, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("zygote")));
  for (int fd : pidfds) {
    pollfd p{fd, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 5000), 1) << "a worker outlived its zygote";
    close(fd);
  }
  for (int i = 0; i < 5; ++i) {
    EXPECT_THAT(CallString(*pool, "echo", "back"), isolate_test::IsOkAndHolds(std::string("back")));
  }
  EXPECT_EQ(pool->stats().deaths, 0u);
  // A new zygote after the backoff (the calls above may have been served by direct spawns).
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (pool->stats().zygote_starts < 2 && std::chrono::steady_clock::now() < until) {
    EXPECT_THAT(CallString(*pool, "echo", "x"), IsOk());
  }
  EXPECT_EQ(pool->stats().zygote_starts, 2u);
  EXPECT_NE(pool->stats().zygote_pid, first);
  EXPECT_TRUE(Gone(first));  // reaped by the pool, not left a zombie
  pool->Shutdown();
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
}

TEST(Zygote, OffMeansEveryWorkerIsSpawnedByTheHost) {
  auto options = TestOptions();
  options.zygote = false;
  auto pool = MakePool(options);
  ASSERT_NE(pool, nullptr);
  ASSERT_TRUE(WaitForSpares(*pool, 2));
  EXPECT_EQ(pool->stats().zygote_pid, 0);
  EXPECT_EQ(pool->stats().zygote_starts, 0u);
  for (std::int64_t pid : pool->worker_pids())
    EXPECT_EQ(Stat(static_cast<int>(pid)).ppid, getpid());
  WorkerDeath death;
  EXPECT_THAT(CallString(*pool, "segv", "", &death), StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(death.signal, SIGSEGV);
  pool->Shutdown();
  EXPECT_EQ(WaitForChildren(0), 0u);
  EXPECT_EQ(Zombies(), 0);
}

// The host side of the protocol, against a zygote played by the test: whatever the peer
// answers, ZygoteFork returns a status and leaks no descriptor.
class FakeZygote : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv_), 0);
    ASSERT_EQ(pipe(ends_), 0);
    fds_before_ = isolate_test::OpenFds();
  }
  void TearDown() override {
    for (int fd : {sv_[0], sv_[1], ends_[0], ends_[1]}) {
      if (fd >= 0) close(fd);
    }
  }
  absl::StatusOr<isolate_internal::ZygoteChild> Fork(
      std::chrono::milliseconds timeout = std::chrono::milliseconds(500)) {
    return isolate_internal::ZygoteFork(sv_[0], ends_[0], ends_[1], ends_[1], timeout);
  }
  // Reads the request (and closes the descriptors it carried).
  void TakeRequest() {
    char byte = 0;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 3)];
    iovec iov{&byte, 1};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ASSERT_EQ(recvmsg(sv_[1], &msg, 0), 1);
    EXPECT_EQ(byte, 'F');
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    ASSERT_NE(c, nullptr);
    ASSERT_EQ(c->cmsg_len, CMSG_LEN(sizeof(int) * 3));
    int fds[3];
    std::memcpy(fds, CMSG_DATA(c), sizeof(fds));
    for (int fd : fds) close(fd);
  }
  void Answer(const std::string& bytes, int fd = -1) {
    iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ASSERT_EQ(sendmsg(sv_[1], &msg, 0), static_cast<ssize_t>(bytes.size()));
  }
  static std::string Le64(std::int64_t v) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i)
      out[i] = static_cast<char>(static_cast<std::uint64_t>(v) >> (8 * i));
    return out;
  }
  int sv_[2] = {-1, -1};
  int ends_[2] = {-1, -1};
  int fds_before_ = 0;
};

TEST_F(FakeZygote, SilenceIsUnavailable) {
  EXPECT_THAT(Fork(std::chrono::milliseconds(20)),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no answer")));
  TakeRequest();
  EXPECT_EQ(isolate_test::OpenFds(), fds_before_);
}

TEST_F(FakeZygote, EndOfStreamIsUnavailable) {
  close(sv_[1]);
  sv_[1] = -1;
  EXPECT_THAT(Fork(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(FakeZygote, ForkErrorIsInternalWithErrno) {
  std::thread zygote([&] {
    TakeRequest();
    Answer(Le64(-EAGAIN));
  });
  EXPECT_THAT(Fork(), StatusIs(absl::StatusCode::kInternal, HasSubstr(std::strerror(EAGAIN))));
  zygote.join();
  EXPECT_EQ(isolate_test::OpenFds(), fds_before_);
}

TEST_F(FakeZygote, MalformedAnswersAreUnavailableAndLeakNothing) {
  struct Case {
    std::string bytes;
    bool with_fd;
  };
  for (const Case& c : {Case{Le64(1234), false}, Case{"abc", true}, Case{Le64(0), true},
                        Case{Le64(-100000), true}, Case{Le64(std::int64_t{1} << 40), true}}) {
    std::thread zygote([&] {
      TakeRequest();
      Answer(c.bytes, c.with_fd ? ends_[0] : -1);
    });
    EXPECT_THAT(Fork(), StatusIs(absl::StatusCode::kUnavailable, HasSubstr("malformed")));
    zygote.join();
    EXPECT_EQ(isolate_test::OpenFds(), fds_before_);
  }
}

TEST_F(FakeZygote, AnswerWithPidfdIsTheChild) {
  std::thread zygote([&] {
    TakeRequest();
    Answer(Le64(4321), ends_[0]);
  });
  absl::StatusOr<isolate_internal::ZygoteChild> child = Fork();
  zygote.join();
  ASSERT_THAT(child, IsOk());
  EXPECT_EQ(child->pid, 4321);
  EXPECT_GE(child->pidfd, 0);
  close(child->pidfd);
  EXPECT_EQ(isolate_test::OpenFds(), fds_before_);
}

}  // namespace
}  // namespace framekit::isolate
