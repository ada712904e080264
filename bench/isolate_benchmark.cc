// Isolated calls (framekit/isolate/pool.h), each against a baseline of the same run:
//   BM_IsolateRoundTripReuse vs BM_SocketpairPingPong
//       one call on a reused worker (encode the frame, send, the worker decodes it and runs the
//       handler, chunk and done back) vs the bare floor: 64 bytes there and back over a
//       socketpair between two processes
//   BM_IsolateRoundTripFresh       the default mode: every call on a fresh worker (spares
//                                  started ahead by the pool's spawner)
//   BM_IsolateCrashThenCall/zygote:{0,1}
//       a crashing call (death detected, classified, reaped) and the next call, which needs the
//       replacement worker; one spare, so the replacement starts while the crash is classified.
//       zygote:0 starts every worker with posix_spawn (the baseline), zygote:1 forks it from
//       the pool's zygote (the default)
//   BM_IsolateCrashThenCallNoSpare/zygote:{0,1}
//       the same with no spare workers: each call waits for its own worker to start after it
//       asked, so the start-up is measured whole, hidden behind nothing
//   BM_IsolateReplacement/zygote:{0,1}
//       what a caller sees of one crash in a pool with the default two spares: the crashing call
//       and the next call, which a ready spare serves (the pool refills its spares between
//       iterations, timer paused); crash_ms and next_ms split it. The crash benchmarks above
//       run crashes back to back, so they measure how fast workers can be started
//   BM_IsolateThroughput{Reuse,Fresh}/threads:4   1000 calls from 4 threads
//   BM_ForkExitWait               the floor of a process start: fork, _exit, waitpid
// Counters: startup_us is the pool's mean worker start-up (posix_spawn, or the fork request to
// the zygote, to the worker's ready message); zygote_startup_us the zygote's own (posix_spawn
// to ready, once per pool); cpu_ms (crash benchmarks) the CPU time per iteration of every
// process involved: the benchmark process, its reaped children and the zygote with its reaped
// children (from /proc, in clock ticks: read it over many iterations). On a loaded machine it
// tells the work apart from the time spent waiting to be scheduled.
// FRAMEKIT_ISOLATE_BENCH_WORKER in the environment names another build of the worker, to compare
// two versions of isolate/ (each benchmark binary with its own worker) run by run.
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "benchmark/benchmark.h"
#include "framekit/isolate/pool.h"
#include "framekit/isolate/worker.h"

#ifdef FRAMEKIT_ISOLATE_BENCH_WORKER
namespace {

namespace isolate = framekit::isolate;

class NullSink : public framekit::dispatch::Sink {
 public:
  absl::Status Write(std::string_view) override { return absl::OkStatus(); }
};

const std::string kPayload(64, 'p');

std::shared_ptr<isolate::WorkerPool> MakePool(int max_workers, int spares, bool zygote = true) {
  isolate::WorkerPoolOptions options;
  // The environment may name another build of the worker (to compare two versions).
  const char* worker = std::getenv("FRAMEKIT_ISOLATE_BENCH_WORKER");
  options.executable =
      worker != nullptr && *worker != '\0' ? worker : FRAMEKIT_ISOLATE_BENCH_WORKER;
  options.max_workers = max_workers;
  options.spare_workers = spares;
  options.zygote = zygote;
  options.respawn_backoff_min = std::chrono::milliseconds(0);  // measure the respawn itself
  // The test worker decodes the tests' tenant key too; the call keys are a subset of it.
  auto pool = isolate::WorkerPool::Create(options);
  return pool.ok() ? *pool : nullptr;
}

void ReportStartup(benchmark::State& state, const isolate::WorkerPool& pool) {
  const isolate::PoolStats stats = pool.stats();
  state.counters["startup_us"] =
      std::chrono::duration<double, std::micro>(stats.mean_startup).count();
  state.counters["zygote_startup_us"] =
      std::chrono::duration<double, std::micro>(stats.zygote_startup).count();
}

void RoundTrip(benchmark::State& state, bool reuse) {
  auto pool = MakePool(4, 2);
  if (pool == nullptr) return state.SkipWithError("pool");
  NullSink sink;
  const framekit::Frame frame;
  const isolate::CallOptions options{.reuse = reuse};
  // Warm up: the first call waits for the first worker to start.
  if (!pool->Call("echo", frame, kPayload, sink, options).ok()) return state.SkipWithError("warm");
  for (auto _ : state) {
    absl::Status status = pool->Call("echo", frame, kPayload, sink, options);
    if (!status.ok()) return state.SkipWithError(std::string(status.message()).c_str());
  }
  ReportStartup(state, *pool);
}

void BM_IsolateRoundTripReuse(benchmark::State& state) { RoundTrip(state, true); }
void BM_IsolateRoundTripFresh(benchmark::State& state) { RoundTrip(state, false); }
BENCHMARK(BM_IsolateRoundTripReuse)->UseRealTime();
BENCHMARK(BM_IsolateRoundTripFresh)->UseRealTime();

// The floor: a child that only echoes (read and write: async-signal-safe, so fork is fine even
// with the pools' threads running) and 64 bytes there and back.
void BM_SocketpairPingPong(benchmark::State& state) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return state.SkipWithError("socketpair");
  }
  const pid_t child = fork();
  if (child == 0) {
    close(sv[0]);
    char buf[64];
    for (;;) {
      ssize_t got = 0;
      while (got < 64) {
        const ssize_t n = read(sv[1], buf + got, sizeof(buf) - got);
        if (n <= 0) _exit(0);
        got += n;
      }
      if (write(sv[1], buf, sizeof(buf)) != 64) _exit(0);
    }
  }
  close(sv[1]);
  char buf[64];
  for (auto _ : state) {
    if (write(sv[0], kPayload.data(), 64) != 64) return state.SkipWithError("write");
    ssize_t got = 0;
    while (got < 64) {
      const ssize_t n = read(sv[0], buf + got, sizeof(buf) - got);
      if (n <= 0) return state.SkipWithError("read");
      got += n;
    }
  }
  close(sv[0]);
  int status = 0;
  waitpid(child, &status, 0);
}
BENCHMARK(BM_SocketpairPingPong)->UseRealTime();

// The floor of any process start on this machine, to read the crash benchmarks against: fork a
// child that exits at once (async-signal-safe, fine with threads running) and wait for it.
void BM_ForkExitWait(benchmark::State& state) {
  for (auto _ : state) {
    const pid_t child = fork();
    if (child == 0) _exit(0);
    if (child < 0) return state.SkipWithError("fork");
    int status = 0;
    waitpid(child, &status, 0);
  }
}
BENCHMARK(BM_ForkExitWait)->UseRealTime()->Unit(benchmark::kMicrosecond);

// CPU time in ms of process `pid` (0: this one) and of its children it has reaped.
double CpuMs(std::int64_t pid) {
  std::ifstream in(pid == 0 ? std::string("/proc/self/stat")
                            : "/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  double ticks = 0;
  // Fields 3.. of proc(5): utime, stime, cutime and cstime are the 14th to 17th.
  for (int i = 3; i <= 17 && (fields >> field); ++i) {
    if (i >= 14) ticks += std::stod(field);
  }
  return ticks * 1000.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double PoolCpuMs(const isolate::WorkerPool& pool) {
  const std::int64_t zygote = pool.stats().zygote_pid;
  return CpuMs(0) + (zygote > 0 ? CpuMs(zygote) : 0.0);
}

void CrashThenCall(benchmark::State& state, int spares) {
  auto pool = MakePool(4, spares, state.range(0) != 0);
  if (pool == nullptr) return state.SkipWithError("pool");
  NullSink sink;
  const framekit::Frame frame;
  // Warm up: the first call waits for the zygote (when on) and the first worker to start.
  if (!pool->Call("echo", frame, kPayload, sink).ok()) return state.SkipWithError("warm");
  const double cpu_before = PoolCpuMs(*pool);
  for (auto _ : state) {
    absl::Status crashed = pool->Call("segv", frame, "", sink);
    if (crashed.code() != absl::StatusCode::kInternal) return state.SkipWithError("no crash");
    absl::Status status = pool->Call("echo", frame, kPayload, sink);
    if (!status.ok()) return state.SkipWithError(std::string(status.message()).c_str());
  }
  state.counters["cpu_ms"] =
      benchmark::Counter(PoolCpuMs(*pool) - cpu_before, benchmark::Counter::kAvgIterations);
  ReportStartup(state, *pool);
  if (state.range(0) != 0 && pool->stats().zygote_starts != 1) {
    state.SkipWithError("the zygote did not serve every start");
  }
}
void BM_IsolateCrashThenCall(benchmark::State& state) { CrashThenCall(state, 1); }
void BM_IsolateCrashThenCallNoSpare(benchmark::State& state) { CrashThenCall(state, 0); }
BENCHMARK(BM_IsolateCrashThenCall)
    ->ArgName("zygote")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_IsolateCrashThenCallNoSpare)
    ->ArgName("zygote")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// What a caller sees when a worker crashes in a pool with the default two spares: the crashing
// call (death detected, classified, reaped) and the next call, served by a spare that replaces
// the dead worker. Between iterations, with the timer paused, the pool is given time to start
// its spares again, as it would between two crashes that are not back to back;
// BM_IsolateCrashThenCall above does not wait, so it measures a crash loop, bound by how fast
// workers can be started. Counters: crash_ms and next_ms split the time between the two calls.
void BM_IsolateReplacement(benchmark::State& state) {
  auto pool = MakePool(4, 2, state.range(0) != 0);
  if (pool == nullptr) return state.SkipWithError("pool");
  NullSink sink;
  const framekit::Frame frame;
  if (!pool->Call("echo", frame, kPayload, sink).ok()) return state.SkipWithError("warm");
  double crash_ms = 0;
  double next_ms = 0;
  for (auto _ : state) {
    state.PauseTiming();
    // The spares are started, and the workers of the previous iteration are reaped.
    for (int i = 0; i < 5000; ++i) {
      const isolate::PoolStats s = pool->stats();
      if (s.spares >= 2 && s.live == 2) break;
      usleep(200);
    }
    state.ResumeTiming();
    const auto start = std::chrono::steady_clock::now();
    absl::Status crashed = pool->Call("segv", frame, "", sink);
    const auto middle = std::chrono::steady_clock::now();
    if (crashed.code() != absl::StatusCode::kInternal) return state.SkipWithError("no crash");
    absl::Status status = pool->Call("echo", frame, kPayload, sink);
    const auto end = std::chrono::steady_clock::now();
    if (!status.ok()) return state.SkipWithError(std::string(status.message()).c_str());
    crash_ms += std::chrono::duration<double, std::milli>(middle - start).count();
    next_ms += std::chrono::duration<double, std::milli>(end - middle).count();
  }
  state.counters["crash_ms"] = benchmark::Counter(crash_ms, benchmark::Counter::kAvgIterations);
  state.counters["next_ms"] = benchmark::Counter(next_ms, benchmark::Counter::kAvgIterations);
  ReportStartup(state, *pool);
}
BENCHMARK(BM_IsolateReplacement)
    ->ArgName("zygote")
    ->Arg(0)
    ->Arg(1)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

std::shared_ptr<isolate::WorkerPool> SharedPool() {
  static const std::shared_ptr<isolate::WorkerPool> pool = MakePool(8, 4);
  return pool;
}

void Throughput(benchmark::State& state, bool reuse) {
  auto pool = SharedPool();
  if (pool == nullptr) return state.SkipWithError("pool");
  NullSink sink;
  const framekit::Frame frame;
  const isolate::CallOptions options{.reuse = reuse};
  for (auto _ : state) {
    absl::Status status = pool->Call("echo", frame, kPayload, sink, options);
    if (!status.ok()) return state.SkipWithError(std::string(status.message()).c_str());
  }
  state.SetItemsProcessed(state.iterations());
}
void BM_IsolateThroughputReuse(benchmark::State& state) { Throughput(state, true); }
void BM_IsolateThroughputFresh(benchmark::State& state) { Throughput(state, false); }
// 1000 calls: 250 per thread.
BENCHMARK(BM_IsolateThroughputReuse)->Threads(4)->Iterations(250)->UseRealTime();
BENCHMARK(BM_IsolateThroughputFresh)->Threads(4)->Iterations(250)->UseRealTime();

}  // namespace
#endif  // FRAMEKIT_ISOLATE_BENCH_WORKER
