// The paths a dispatcher takes for every call, measured in the shape it uses them (issue 13): a
// fresh PairList per call, and the call's frame built and released per call. The Resolve cases
// of resolve_benchmark.cc reuse one list across iterations, which hides the list's own cost.
//
//   PerCall/Resolve/N        FrameResolvers::Resolve of N resolvers appending one pair each
//                            into a PairList made and destroyed in the iteration
//   PerCall/With/4           Frame::With of 4 pairs onto a frame with 2 pairs, released
//   PerCall/call_frame/4     the whole call frame of a root call: Resolve x4 into a fresh list,
//                            Fork of the parent, With of the pairs, released
//   PerCall/call_frame_nested/4  the same under a parent carrying 2 inherited pairs
//
// Read each figure as a ratio to Floor/raw_pointer of the same run.
#include <memory>
#include <string>

#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/framekit.h"

namespace framekit::bench {
namespace {

const Key<int> kSlot{"bench.percall.slot"};
const Key<int> kParentA{"bench.percall.a"};
const Key<int> kParentB{"bench.percall.b"};

const FrameResolvers& Registry(int n) {
  static FrameResolvers* registries[17] = {};
  if (registries[n] == nullptr) {
    auto* r = new FrameResolvers();
    for (int i = 0; i < n; ++i) {
      (void)r->Register("r" + std::to_string(i), i,
                        [i](const Frame&, const Options&, PairList& out) {
                          out.push_back(Pair::Of(kSlot, i));
                          return absl::OkStatus();
                        });
    }
    r->Seal();
    registries[n] = r;
  }
  return *registries[n];
}

void BM_PerCallResolve(benchmark::State& state) {
  const FrameResolvers& registry = Registry(static_cast<int>(state.range(0)));
  const Frame parent;
  const Options options;
  AllocationScope allocations;
  for (auto _ : state) {
    PairList pairs;
    const bool ok = registry.Resolve(parent, options, pairs).ok();
    benchmark::DoNotOptimize(ok);
    benchmark::DoNotOptimize(pairs.data());
  }
  allocations.Report(state);
}
BENCHMARK(BM_PerCallResolve)->Name("PerCall/Resolve")->Arg(4)->Arg(16);

void BM_PerCallWith(benchmark::State& state) {
  const Frame parent = Frame().With({Pair::Of(kParentA, 1), Pair::Of(kParentB, 2)});
  const Key<int>* keys[4];
  static const Key<int> k0{"bench.percall.w0"}, k1{"bench.percall.w1"}, k2{"bench.percall.w2"},
      k3{"bench.percall.w3"};
  keys[0] = &k0, keys[1] = &k1, keys[2] = &k2, keys[3] = &k3;
  PairList pairs;
  for (int i = 0; i < 4; ++i) pairs.push_back(Pair::Of(*keys[i], i));
  AllocationScope allocations;
  for (auto _ : state) {
    Frame frame = parent.With(pairs);
    benchmark::DoNotOptimize(frame);
  }
  allocations.Report(state);
}
BENCHMARK(BM_PerCallWith)->Name("PerCall/With/4");

// What a dispatcher does to make a call's frame: fork the caller's frame, resolve into a fresh
// list, set the pairs on the fork; the frame is released at the end of the call.
void CallFrameLoop(benchmark::State& state, const Frame& parent) {
  const FrameResolvers& registry = Registry(4);
  const Options options;
  AllocationScope allocations;
  for (auto _ : state) {
    Frame call = parent.Fork();
    PairList pairs;
    if (!registry.Resolve(call, options, pairs).ok()) state.SkipWithError("Resolve failed");
    call = call.With(pairs);
    benchmark::DoNotOptimize(call);
  }
  allocations.Report(state);
}

void BM_PerCallCallFrame(benchmark::State& state) { CallFrameLoop(state, Frame()); }
BENCHMARK(BM_PerCallCallFrame)->Name("PerCall/call_frame/4");

void BM_PerCallCallFrameNested(benchmark::State& state) {
  CallFrameLoop(state, Frame().With({Pair::Of(kParentA, 1), Pair::Of(kParentB, 2)}));
}
BENCHMARK(BM_PerCallCallFrameNested)->Name("PerCall/call_frame_nested/4");

}  // namespace
}  // namespace framekit::bench
