// Uses the contract of DESIGN.md through the installed package; exits non-zero on any mismatch.
#include <cstdio>
#include <memory>
#include <string>

#include "framekit/framekit.h"

namespace {
const framekit::Key<std::string> kTenant{"consumer.tenant"};
}

int main() {
  framekit::AppContext app;
  auto resolvers = std::make_shared<framekit::FrameResolvers>();
  if (!app.SetFrameResolvers(resolvers).ok()) return 1;
  absl::Status registered = app.frame_resolvers()->Register(
      "consumer.tenant", 100,
      [](const framekit::Frame&, const framekit::Options& options, framekit::PairList& out) {
        out.push_back(
            framekit::Pair::Of(kTenant, std::string(options.GetString("tenant").value_or("none"))));
        return absl::OkStatus();
      });
  if (!registered.ok()) return 2;
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
  std::printf("find_package consumer: resolved %s\n", frame.DebugString().c_str());
  return 0;
}
