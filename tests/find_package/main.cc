// Uses the contract of DESIGN.md through the installed package; exits non-zero on any mismatch.
#include <cstdio>
#include <memory>
#include <string>

#include "framekit/framekit.h"

namespace {
const framekit::Key<std::string> kTenant{"consumer.tenant"};

// The status macros come with the umbrella header (the README's example relies on it).
absl::StatusOr<int> Half(int n) {
  if (n % 2 != 0) return absl::InvalidArgumentError("odd");
  return n / 2;
}
absl::Status CheckMacros() {
  FRAMEKIT_ASSIGN_OR_RETURN(const int quarter, Half(8));
  FRAMEKIT_RETURN_IF_ERROR(quarter == 4 ? absl::OkStatus() : absl::InternalError("arithmetic"));
  return absl::OkStatus();
}
}  // namespace

int main() {
  if (!CheckMacros().ok()) return 10;
  framekit::AppContext app;
  auto resolvers = std::make_shared<framekit::FrameResolvers>();
  if (!app.SetFrameResolvers(resolvers).ok()) return 1;
  absl::Status registered = app.frame_resolvers()->Register(
      "consumer.tenant", 100, {"tenant"},  // the option key it reads (options are strict)
      [](const framekit::Frame&, const framekit::Options& options, framekit::PairList& out) {
        out.push_back(
            framekit::Pair::Of(kTenant, std::string(options.GetString("tenant").value_or("none"))));
        return absl::OkStatus();
      });
  if (!registered.ok()) return 2;
  // The network overlay, from framekit::net.
  auto networks = std::make_shared<framekit::net::NetworkRegistry>();
  if (!networks->Add(framekit::net::Network::Direct("lo", "127.0.0.1")).ok()) return 5;
  if (!framekit::net::RegisterNetworkOverlay(app, networks, "lo").ok()) return 6;
  app.Seal();
  framekit::PairList pairs;
  if (!framekit::Resolve(app.frame_resolvers(), framekit::Frame(),
                         framekit::Options{{"tenant", "acme"}}, pairs)
           .ok()) {
    return 3;
  }
  const framekit::Frame frame = framekit::Frame().With(pairs);
  const std::string* tenant = frame.Find(kTenant);
  if (tenant == nullptr || *tenant != "acme") return 4;
  const std::string* network = frame.Find(framekit::net::NetworkKey());
  if (network == nullptr || *network != "lo") return 7;
  // A dispatcher, from framekit::dispatch, applying the same registry.
  framekit::dispatch::FunctionExecutor executor(app);
  if (!executor
           .Register(
               "tenant",
               [](const framekit::Frame& call, std::string_view, framekit::dispatch::Sink& out) {
                 const std::string* t = call.Find(kTenant);
                 return out.Write(t == nullptr ? "none" : *t);
               })
           .ok()) {
    return 8;
  }
  absl::StatusOr<std::string> invoked =
      executor.Invoke(framekit::Frame(), "tenant", "", framekit::Options{{"tenant", "globex"}});
  if (!invoked.ok() || *invoked != "globex") {
    std::fprintf(stderr, "find_package consumer: invoke: %s\n",
                 invoked.status().ToString().c_str());
    return 9;
  }
  std::printf("find_package consumer: resolved %s\n", frame.DebugString().c_str());
  return 0;
}
