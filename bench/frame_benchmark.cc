// Frame and Options: building a call's frame and reading from it.
#include <memory>
#include <string>
#include <vector>

#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/framekit.h"

namespace framekit::bench {
namespace {

const std::vector<std::unique_ptr<Key<int>>>& Keys() {
  static const auto* keys = [] {
    auto* v = new std::vector<std::unique_ptr<Key<int>>>();
    for (int i = 0; i < 32; ++i)
      v->push_back(std::make_unique<Key<int>>("bench.k" + std::to_string(i)));
    return v;
  }();
  return *keys;
}

// Frame::With(n pairs) onto a root frame.
void BM_FrameWith(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  PairList pairs;
  for (int i = 0; i < n; ++i) pairs.push_back(Pair::Of(*Keys()[i], i));
  const Frame root;
  AllocationScope allocations;
  for (auto _ : state) {
    Frame frame = root.With(pairs);
    benchmark::DoNotOptimize(frame);
  }
  allocations.Report(state);
}
BENCHMARK(BM_FrameWith)->Name("Frame/With")->Arg(1)->Arg(4)->Arg(8);

// Find on a frame built by `depth` successive With calls, looking up the oldest key.
void BM_FrameFind(benchmark::State& state) {
  const int depth = static_cast<int>(state.range(0));
  Frame frame;
  for (int i = 0; i < depth; ++i) frame = frame.With(*Keys()[i], i);
  const Key<int>& oldest = *Keys()[0];
  AllocationScope allocations;
  for (auto _ : state) {
    const int* value = frame.Find(oldest);
    benchmark::DoNotOptimize(value);
  }
  allocations.Report(state);
}
BENCHMARK(BM_FrameFind)->Name("Frame/Find")->Arg(1)->Arg(4)->Arg(16)->Threads(1)->Threads(2);

// Fork of a frame with 4 inherited pairs.
void BM_FrameFork(benchmark::State& state) {
  Frame frame;
  for (int i = 0; i < 4; ++i) frame = frame.With(*Keys()[i], i);
  AllocationScope allocations;
  for (auto _ : state) {
    Frame child = frame.Fork();
    benchmark::DoNotOptimize(child);
  }
  allocations.Report(state);
}
BENCHMARK(BM_FrameFork)->Name("Frame/Fork");

void BM_FrameCopy(benchmark::State& state) {
  const Frame frame = Frame().With(*Keys()[0], 1);
  AllocationScope allocations;
  for (auto _ : state) {
    Frame copy = frame;
    benchmark::DoNotOptimize(copy);
  }
  allocations.Report(state);
}
BENCHMARK(BM_FrameCopy)->Name("Frame/Copy");

void BM_OptionsGetString(benchmark::State& state) {
  const Options options{{"network", "tor"}, {"retries", 3}, {"tenant", "acme"}, {"strict", true}};
  AllocationScope allocations;
  for (auto _ : state) {
    auto value = options.GetString("network");
    benchmark::DoNotOptimize(value);
  }
  allocations.Report(state);
}
BENCHMARK(BM_OptionsGetString)->Name("Options/GetString");

void BM_OptionsMerge(benchmark::State& state) {
  const Options base{{"network", "corp"}, {"retries", 3}};
  const Options call{{"network", "tor"}};
  AllocationScope allocations;
  for (auto _ : state) {
    Options merged = Options::Merge(base, call);
    benchmark::DoNotOptimize(merged);
  }
  allocations.Report(state);
}
BENCHMARK(BM_OptionsMerge)->Name("Options/Merge");

}  // namespace
}  // namespace framekit::bench
