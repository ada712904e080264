// Helpers for the isolate suites: the test worker's path, pools of it, and the /proc checks
// for zombies and leftover children.
#ifndef FRAMEKIT_TESTS_ISOLATE_ISOLATE_TEST_UTIL_H_
#define FRAMEKIT_TESTS_ISOLATE_ISOLATE_TEST_UTIL_H_

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "framekit/dispatch/code.h"
#include "framekit/isolate/pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/isolate/test_keys.h"

namespace framekit::isolate_test {

inline const char* WorkerPath() { return FRAMEKIT_ISOLATE_TEST_WORKER; }

inline isolate::WorkerPoolOptions TestOptions() {
  isolate::WorkerPoolOptions options;
  options.executable = WorkerPath();
  options.portable_keys = TestKeys();
  options.spare_workers = 2;
  options.max_workers = 6;
  options.limits.address_space_bytes = std::uint64_t{512} << 20;
  options.respawn_backoff_min = std::chrono::milliseconds(5);
  options.respawn_backoff_max = std::chrono::milliseconds(200);
  return options;
}

inline std::shared_ptr<isolate::WorkerPool> MakePool(
    isolate::WorkerPoolOptions options = TestOptions()) {
  auto pool = isolate::WorkerPool::Create(std::move(options));
  EXPECT_TRUE(pool.ok()) << pool.status();
  return pool.ok() ? *pool : nullptr;
}

// Waits (bounded) until the pool has `n` spare workers started, so that a timing-sensitive call
// does not spend its deadline waiting for a process to start (slow under the sanitizers).
inline bool WaitForSpares(const isolate::WorkerPool& pool, int n,
                          std::chrono::milliseconds bound = std::chrono::seconds(60)) {
  const auto until = std::chrono::steady_clock::now() + bound;
  while (pool.stats().spares < n) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

// The whole of a /proc file, or "" when it cannot be read. Plain read(2): a process that ends
// while its file is read makes read fail with ESRCH, which a std::ifstream turns into an
// exception (libstdc++'s filebuf throws on a read error whatever the stream's exception mask).
inline std::string ReadProcFile(const std::string& path) {
  std::string text;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  char buf[4096];
  for (;;) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  return text;
}

struct ChildProcess {
  int pid = 0;
  char state = '?';
};

// This process's children, from /proc/<pid>/stat (state and ppid follow the parenthesised name).
inline std::vector<ChildProcess> Children() {
  std::vector<ChildProcess> out;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return out;
  const int self = getpid();
  while (dirent* entry = readdir(dir)) {
    const int pid = std::atoi(entry->d_name);
    if (pid <= 0) continue;
    const std::string stat = ReadProcFile(std::string("/proc/") + entry->d_name + "/stat");
    const std::size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    char state = '?';
    int ppid = 0;
    rest >> state >> ppid;
    if (ppid == self) out.push_back({pid, state});
  }
  closedir(dir);
  return out;
}

// Zombie children now. The pool kills and reaps a retired worker on its spawner thread, so a
// killed worker may be a zombie for a moment: this waits (bounded) for the count to reach 0 and
// returns the count seen last.
inline int Zombies(std::chrono::milliseconds bound = std::chrono::seconds(5)) {
  const auto until = std::chrono::steady_clock::now() + bound;
  for (;;) {
    int n = 0;
    for (const ChildProcess& c : Children()) n += c.state == 'Z' ? 1 : 0;
    if (n == 0 || std::chrono::steady_clock::now() >= until) return n;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Waits (bounded) for the children to drop to `n`, since the pool reaps retired workers on its
// own thread. Returns the count seen last.
inline std::size_t WaitForChildren(std::size_t n,
                                   std::chrono::milliseconds bound = std::chrono::seconds(5)) {
  const auto until = std::chrono::steady_clock::now() + bound;
  std::size_t seen = Children().size();
  while (seen > n && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    seen = Children().size();
  }
  return seen;
}

inline int OpenFds() {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (dirent* entry = readdir(dir)) n += entry->d_name[0] != '.' ? 1 : 0;
  closedir(dir);
  return n;
}

// Matches an OK absl::StatusOr<T> whose value matches `matcher`; prints the status otherwise.
MATCHER_P(IsOkAndHolds, matcher, "is OK and holds a value that matches") {
  if (!arg.ok()) {
    *result_listener << "whose status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(matcher, *arg, result_listener);
}

class StringSink final : public dispatch::Sink {
 public:
  absl::Status Write(std::string_view chunk) override {
    out.append(chunk);
    return absl::OkStatus();
  }
  std::string out;
};

}  // namespace framekit::isolate_test

#endif  // FRAMEKIT_TESTS_ISOLATE_ISOLATE_TEST_UTIL_H_
