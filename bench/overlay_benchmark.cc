// The network overlay resolver's cost inside FrameResolvers::Resolve, beside the empty
// registry measured in the same run, with allocations per iteration as a counter. Built into
// framekit_bench by the bench/ glob. Target: the overlay adds at most 20 ns to a Resolve and
// allocates nothing when the selected id fits std::string's inline buffer.
#include <memory>

#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/net/network.h"
#include "framekit/net/overlay.h"
#include "framekit/resolvers/frame_resolvers.h"

namespace {

using framekit::net::Network;
using framekit::net::NetworkRegistry;

std::shared_ptr<const NetworkRegistry> Networks() {
  auto networks = std::make_shared<NetworkRegistry>();
  (void)networks->Add(Network::Socks5("tor", "127.0.0.1", 9050));
  (void)networks->Add(Network::Direct("lan", "127.0.0.7"));
  (void)networks->Add(Network::Socks5("corp-egress", "10.0.0.1", 1080));
  return networks;
}

void Run(benchmark::State& state, const framekit::FrameResolvers& resolvers,
         const framekit::Options& options) {
  const framekit::Frame parent;
  framekit::PairList pairs;
  pairs.reserve(4);
  const framekit::bench::AllocationScope allocations;
  for (auto _ : state) {
    pairs.clear();
    benchmark::DoNotOptimize(resolvers.Resolve(parent, options, pairs));
    benchmark::DoNotOptimize(pairs.data());
  }
  allocations.Report(state);
}

void BM_OverlayBaselineEmptyRegistry(benchmark::State& state) {
  framekit::FrameResolvers resolvers;
  Run(state, resolvers, framekit::Options());
}
BENCHMARK(BM_OverlayBaselineEmptyRegistry);

// Baseline: one resolver that appends a prebuilt string pair and looks at nothing. The
// overlay's own logic is the difference to this.
void BM_OverlayBaselineOneStringPair(benchmark::State& state) {
  framekit::FrameResolvers resolvers;
  const framekit::Pair pair = framekit::Pair::Of(framekit::net::NetworkKey(), "tor");
  (void)resolvers.Register(
      "baseline", framekit::net::kOverlayOrder,
      [&pair](const framekit::Frame&, const framekit::Options&, framekit::PairList& out) {
        out.push_back(pair);
        return absl::OkStatus();
      });
  Run(state, resolvers, framekit::Options{{"network", "corp-egress"}});
}
BENCHMARK(BM_OverlayBaselineOneStringPair);

// The overlay registered, the network chosen by the per-call option.
void BM_OverlayOption(benchmark::State& state) {
  framekit::FrameResolvers resolvers;
  (void)resolvers.Register("net.overlay", framekit::net::kOverlayOrder,
                           framekit::net::OverlayResolver(Networks(), ""), {"network"});
  (void)framekit::net::RegisterNetworkClaim(resolvers);
  Run(state, resolvers, framekit::Options{{"network", "corp-egress"}});
}
BENCHMARK(BM_OverlayOption);

// The overlay registered, the network chosen by the app default.
void BM_OverlayDefault(benchmark::State& state) {
  framekit::FrameResolvers resolvers;
  (void)resolvers.Register("net.overlay", framekit::net::kOverlayOrder,
                           framekit::net::OverlayResolver(Networks(), "tor"), {"network"});
  (void)framekit::net::RegisterNetworkClaim(resolvers);
  Run(state, resolvers, framekit::Options());
}
BENCHMARK(BM_OverlayDefault);

// The overlay registered, nothing selected: the resolver runs and appends nothing.
void BM_OverlayNoSelection(benchmark::State& state) {
  framekit::FrameResolvers resolvers;
  (void)resolvers.Register("net.overlay", framekit::net::kOverlayOrder,
                           framekit::net::OverlayResolver(Networks(), ""), {"network"});
  Run(state, resolvers, framekit::Options());
}
BENCHMARK(BM_OverlayNoSelection);

}  // namespace
