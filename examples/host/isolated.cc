#include "isolated.h"

#include <dirent.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "framekit/ctx/panic.h"
#include "framekit/isolate/pool.h"

namespace framekit::host {
namespace {

constexpr int kCrashPeriod = 5;
constexpr int kRounds = 30;
constexpr int kSpinEvery = 10;  // one spinning call per 10 rounds
constexpr int kSpinTimeoutMs = 100;

// Next to the running executable first (an installed host), then where the build put it.
std::string FindWorker() {
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    std::string dir(self);
    dir.resize(dir.rfind('/') + 1);
    const std::string candidate = dir + "framekit-host-worker";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
#ifdef FRAMEKIT_HOST_WORKER
  if (access(FRAMEKIT_HOST_WORKER, X_OK) == 0) return FRAMEKIT_HOST_WORKER;
#endif
  return "";
}

// Children of this process, alive or zombie (from /proc).
int CountChildren() {
  int n = 0;
  DIR* dir = opendir("/proc");
  if (dir == nullptr) return 0;
  const int self = getpid();
  while (dirent* entry = readdir(dir)) {
    if (std::atoi(entry->d_name) <= 0) continue;
    std::ifstream in(std::string("/proc/") + entry->d_name + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 1));
    char state = '?';
    int ppid = 0;
    rest >> state >> ppid;
    n += ppid == self ? 1 : 0;
  }
  closedir(dir);
  return n;
}

void Calls(dispatch::FunctionExecutor& executor, const Frame& parent, IsolatedSummary& out,
           std::vector<std::string>& violations) {
  for (int i = 1; i <= kRounds; ++i) {
    absl::StatusOr<std::string> flaky =
        executor.Invoke(parent, "iso.flaky", absl::StrCat(i, "/", kCrashPeriod));
    ++out.flaky_calls;
    if (flaky.ok()) {
      ++out.flaky_ok;
    } else if (flaky.status().code() == absl::StatusCode::kInternal &&
               IsExtensionPanic(flaky.status())) {
      ++out.flaky_faults;
    } else {
      violations.push_back(
          absl::StrCat("iso.flaky call ", i, ": ", StatusToString(flaky.status())));
    }
    if (i % kSpinEvery == 0) {
      ++out.spin_calls;
      absl::StatusOr<std::string> spin = executor.Invoke(parent, "iso.spin", "");
      if (spin.status().code() == absl::StatusCode::kDeadlineExceeded) ++out.spin_timeouts;
    }
    ++out.echo_calls;
    const std::string payload = absl::StrCat("echo ", i);
    absl::StatusOr<std::string> echo = executor.Invoke(parent, "iso.echo", payload);
    if (echo.ok() && *echo == payload) ++out.echo_ok;
  }
}

}  // namespace

void RunIsolatedDemo(dispatch::FunctionExecutor& executor, const dispatch::FaultMonitor& monitor,
                     const Frame& parent, IsolatedSummary& out, std::vector<std::string>& notes,
                     std::vector<std::string>& violations) {
  const std::string worker = FindWorker();
  if (worker.empty()) {
    notes.push_back("isolated functions skipped: framekit-host-worker not found");
    return;
  }
  // The host's own children (its launched proxies) are not the pool's.
  const int children_before = CountChildren();
  isolate::WorkerPoolOptions options;
  options.executable = worker;
  options.max_workers = 4;
  options.spare_workers = 3;
  absl::StatusOr<std::shared_ptr<isolate::WorkerPool>> pool = isolate::WorkerPool::Create(options);
  if (!pool.ok()) {
    violations.push_back(absl::StrCat("isolated worker pool: ", pool.status().message()));
    return;
  }
  for (const auto& [name, handler] :
       {std::pair{"iso.flaky", "flaky"}, std::pair{"iso.spin", "spin"},
        std::pair{"iso.echo", "echo"}}) {
    Options defaults;
    if (std::string_view(handler) == "spin") defaults.Set("timeout_ms", kSpinTimeoutMs);
    absl::Status registered =
        executor.Register(name, isolate::IsolatedCode(*pool, handler), std::move(defaults));
    if (!registered.ok()) {
      violations.push_back(absl::StrCat("register ", name, ": ", registered.message()));
      return;
    }
  }
  out.ran = true;
  out.crash_period = kCrashPeriod;
  out.expected_faults = kRounds / kCrashPeriod;
  Calls(executor, parent, out, violations);
  const isolate::PoolStats stats = (*pool)->stats();
  out.deadline_kills = stats.deadline_kills;
  out.workers_started = stats.spawned;
  out.mean_startup_ms = std::chrono::duration<double, std::milli>(stats.mean_startup).count();
  out.monitor_faults = monitor.faults("iso.flaky@v1", Phase::kInvoke);
  (*pool)->Shutdown();
  out.children_left = std::max(0, CountChildren() - children_before);

  if (out.flaky_faults != out.expected_faults || out.flaky_ok != kRounds - out.expected_faults) {
    violations.push_back(absl::StrCat("iso.flaky: ", out.flaky_faults, " faults and ", out.flaky_ok,
                                      " ok in ", kRounds, " calls; expected ", out.expected_faults,
                                      " faults"));
  }
  if (out.monitor_faults != static_cast<std::uint64_t>(out.expected_faults)) {
    violations.push_back(absl::StrCat("the fault monitor counted ", out.monitor_faults,
                                      " iso.flaky faults, not ", out.expected_faults));
  }
  // Every spinning call ends at its deadline. Each one that reached a worker killed it; one that
  // spent its whole deadline waiting for a worker (a loaded machine) never started.
  if (out.spin_timeouts != out.spin_calls ||
      out.deadline_kills > static_cast<std::uint64_t>(out.spin_calls)) {
    violations.push_back(absl::StrCat("iso.spin: ", out.spin_timeouts, " timeouts and ",
                                      out.deadline_kills, " worker kills in ", out.spin_calls,
                                      " calls"));
  }
  if (out.echo_ok != out.echo_calls) {
    violations.push_back(
        absl::StrCat("iso.echo: ", out.echo_ok, " of ", out.echo_calls, " calls succeeded"));
  }
  if (executor.quarantined() != 0) {
    violations.push_back("an isolated call left a quarantined worker thread");
  }
  if (out.children_left != 0) {
    violations.push_back(absl::StrCat(out.children_left, " worker processes left after shutdown"));
  }
}

}  // namespace framekit::host
