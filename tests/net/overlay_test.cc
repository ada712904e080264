#include "framekit/net/overlay.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "framekit/app/app_context.h"
#include "framekit/app/boot.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/frame.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::net {
namespace {

using ::framekit::testing::IsOk;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::shared_ptr<const NetworkRegistry> Networks(ClearnetPolicy policy = ClearnetPolicy::kDeny) {
  auto networks = std::make_shared<NetworkRegistry>(policy);
  EXPECT_THAT(networks->Add(Network::Socks5("tor", "127.0.0.1", 9050)), IsOk());
  EXPECT_THAT(networks->Add(Network::Direct("lan", "127.0.0.7")), IsOk());
  return networks;
}

struct Outcome {
  absl::Status status;
  PairList pairs;
};

Outcome Apply(const FrameResolverFn& resolver, const Options& options) {
  Outcome out;
  out.status = resolver(Frame(), options, out.pairs);
  return out;
}

// The id the outcome selected, or "<none>" when nothing was appended.
std::string Selected(const Outcome& outcome) {
  if (outcome.pairs.size() == 0) return "<none>";
  EXPECT_EQ(outcome.pairs.size(), 1u);
  const std::string* id = outcome.pairs[0].As(NetworkKey());
  return id == nullptr ? "<other key>" : *id;
}

TEST(OverlayResolver, NoSelectionAppendsNothing) {
  Outcome out = Apply(OverlayResolver(Networks(), ""), Options());
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(Selected(out), "<none>");
}

TEST(OverlayResolver, OptionSelects) {
  Outcome out = Apply(OverlayResolver(Networks(), ""), Options{{"network", "tor"}});
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(Selected(out), "tor");
}

TEST(OverlayResolver, AppDefaultSelectsWithoutOption) {
  Outcome out = Apply(OverlayResolver(Networks(), "lan"), Options());
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(Selected(out), "lan");
}

TEST(OverlayResolver, OptionBeatsDefault) {
  Outcome out = Apply(OverlayResolver(Networks(), "lan"), Options{{"network", "tor"}});
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(Selected(out), "tor");
}

TEST(OverlayResolver, EmptyOptionFallsBackToDefault) {
  Outcome out = Apply(OverlayResolver(Networks(), "lan"), Options{{"network", ""}});
  EXPECT_THAT(out.status, IsOk());
  EXPECT_EQ(Selected(out), "lan");
  Outcome none = Apply(OverlayResolver(Networks(), ""), Options{{"network", ""}});
  EXPECT_THAT(none.status, IsOk());
  EXPECT_EQ(Selected(none), "<none>");
}

TEST(OverlayResolver, UnknownOptionIdIsNotFound) {
  Outcome out = Apply(OverlayResolver(Networks(), "lan"), Options{{"network", "i2p"}});
  EXPECT_TRUE(IsNetworkNotFound(out.status)) << out.status;
  EXPECT_THAT(out.status.message(), HasSubstr("\"i2p\""));
  EXPECT_EQ(out.pairs.size(), 0u);
}

// Tests that a hostile network id is echoed bounded and escaped.
TEST(OverlayResolver, HugeUnknownIdIsEchoedBounded) {
  const std::string id = std::string(1 << 20, 'x') + "\n";
  Outcome out = Apply(OverlayResolver(Networks(), "lan"), Options{{"network", id}});
  EXPECT_TRUE(IsNetworkNotFound(out.status)) << out.status.message().substr(0, 200);
  EXPECT_LE(out.status.message().size(), 400u);
  EXPECT_LE(
      out.status
          .GetPayload(absl::string_view(kNetworkNotFoundUrl.data(), kNetworkNotFoundUrl.size()))
          ->size(),
      400u);
}

TEST(OverlayResolver, UnknownDefaultIsNotFound) {
  Outcome out = Apply(OverlayResolver(Networks(), "i2p"), Options());
  EXPECT_TRUE(IsNetworkNotFound(out.status)) << out.status;
  EXPECT_EQ(out.pairs.size(), 0u);
}

TEST(OverlayResolver, NoRegistryIsNotFound) {
  Outcome out = Apply(OverlayResolver(nullptr, ""), Options{{"network", "tor"}});
  EXPECT_TRUE(IsNetworkNotFound(out.status)) << out.status;
  EXPECT_EQ(out.pairs.size(), 0u);
  Outcome by_default = Apply(OverlayResolver(nullptr, "tor"), Options());
  EXPECT_TRUE(IsNetworkNotFound(by_default.status)) << by_default.status;
  // With nothing selected, a missing registry is not consulted.
  EXPECT_THAT(Apply(OverlayResolver(nullptr, ""), Options()).status, IsOk());
}

TEST(OverlayResolver, ClearnetAllowedSelectsNoOverlay) {
  Outcome out = Apply(OverlayResolver(Networks(ClearnetPolicy::kAllow), "tor"),
                      Options{{"network", "clearnet"}});
  EXPECT_THAT(out.status, IsOk()) << out.status;
  EXPECT_EQ(Selected(out), "clearnet");
}

TEST(OverlayResolver, ClearnetDeniedIsPermissionDenied) {
  Outcome out = Apply(OverlayResolver(Networks(ClearnetPolicy::kDeny), "tor"),
                      Options{{"network", "clearnet"}});
  EXPECT_EQ(out.status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(out.pairs.size(), 0u);
}

TEST(OverlayResolver, NonStringOptionIsInvalid) {
  Outcome out = Apply(OverlayResolver(Networks(), "tor"), Options{{"network", std::int64_t{7}}});
  EXPECT_EQ(out.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out.pairs.size(), 0u);
}

// The outcome of the resolver for a nested call: `parent` is the parent call's frame, forked as
// a dispatcher forks it.
Outcome ApplyNested(const FrameResolverFn& resolver, const Frame& parent, const Options& options) {
  Outcome out;
  out.status = resolver(parent.Fork(), options, out.pairs);
  return out;
}

// Tests the fail-safe precedence: a nested call that names no network keeps its parent's
// selection instead of falling back to the app default.
TEST(OverlayResolver, InheritedSelectionBeatsTheDefault) {
  const Frame on_lan = Frame().With(NetworkKey(), "lan");
  Outcome out = ApplyNested(OverlayResolver(Networks(), "tor"), on_lan, Options());
  EXPECT_TRUE(out.status.ok()) << out.status;
  EXPECT_EQ(Selected(out), "lan");
  Outcome empty = ApplyNested(OverlayResolver(Networks(), "tor"), on_lan, Options{{"network", ""}});
  EXPECT_TRUE(empty.status.ok()) << empty.status;
  EXPECT_EQ(Selected(empty), "lan");
}

TEST(OverlayResolver, OptionBeatsInheritedSelection) {
  const Frame on_lan = Frame().With(NetworkKey(), "lan");
  Outcome out =
      ApplyNested(OverlayResolver(Networks(), "lan"), on_lan, Options{{"network", "tor"}});
  EXPECT_TRUE(out.status.ok()) << out.status;
  EXPECT_EQ(Selected(out), "tor");
}

// Tests that an inherited id this registry does not know (a frame decoded from another node, a
// pair set by hand) fails closed rather than falling back to the default.
TEST(OverlayResolver, UnknownInheritedIdIsNotFound) {
  const Frame on_i2p = Frame().With(NetworkKey(), "i2p");
  Outcome out = ApplyNested(OverlayResolver(Networks(), "tor"), on_i2p, Options());
  EXPECT_TRUE(IsNetworkNotFound(out.status)) << out.status;
  EXPECT_THAT(out.status.message(), HasSubstr("inherited"));
  EXPECT_EQ(out.pairs.size(), 0u);
}

// Tests that an inherited clearnet selection is kept only where this registry allows clearnet.
TEST(OverlayResolver, InheritedClearnetNeedsClearnetAllowed) {
  const Frame on_clearnet = Frame().With(NetworkKey(), std::string(kClearnet));
  Outcome allowed =
      ApplyNested(OverlayResolver(Networks(ClearnetPolicy::kAllow), "tor"), on_clearnet, {});
  EXPECT_TRUE(allowed.status.ok()) << allowed.status;
  EXPECT_EQ(Selected(allowed), "clearnet");
  Outcome denied =
      ApplyNested(OverlayResolver(Networks(ClearnetPolicy::kDeny), "tor"), on_clearnet, {});
  EXPECT_EQ(denied.status.code(), absl::StatusCode::kPermissionDenied) << denied.status;
  EXPECT_EQ(denied.pairs.size(), 0u);
}

TEST(NetworkKey, InheritedAcrossFork) {
  PairList pairs;
  ASSERT_THAT(OverlayResolver(Networks(), "")(Frame(), Options{{"network", "tor"}}, pairs), IsOk());
  Frame call = Frame().Fork().With(pairs);
  EXPECT_TRUE(NetworkKey().inherit());
  Frame child = call.Fork();
  ASSERT_NE(child.Find(NetworkKey()), nullptr);
  EXPECT_EQ(*child.Find(NetworkKey()), "tor");
  EXPECT_EQ(child.Origin(NetworkKey()), ValueOrigin::kInherited);
}

// Tests that an explicit clearnet selection shadows an overlay inherited from the parent.
TEST(NetworkKey, ClearnetShadowsInheritedOverlay) {
  Frame parent = Frame().With(NetworkKey(), "tor");
  PairList pairs;
  ASSERT_THAT(OverlayResolver(Networks(ClearnetPolicy::kAllow), "")(
                  parent, Options{{"network", "clearnet"}}, pairs),
              IsOk());
  Frame call = parent.Fork().With(pairs);
  EXPECT_EQ(*call.Find(NetworkKey()), "clearnet");
}

TEST(ApplyOverlayPair, WrapsTheResolver) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  PairList pairs;
  EXPECT_THAT(ApplyOverlayPair(Frame(), Options{{"network", "tor"}}, Networks(), "lan", pairs),
              IsOk());
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(*pairs[0].As(NetworkKey()), "tor");
  PairList none;
  absl::Status unknown = ApplyOverlayPair(Frame(), Options(), Networks(), "i2p", none);
  EXPECT_TRUE(IsNetworkNotFound(unknown));
  EXPECT_EQ(none.size(), 0u);
#pragma GCC diagnostic pop
}

TEST(RegisterNetworkOverlay, WithoutFrameResolversFailsLoud) {
  AppContext app;
  absl::Status status = RegisterNetworkOverlay(app, Networks(), "tor");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(IsFrameResolversMissing(status));
  EXPECT_FALSE(IsFrameResolversMissing(absl::FailedPreconditionError("other")));
}

TEST(RegisterNetworkOverlay, RegistersAtOverlayOrderWithClaim) {
  AppContext app;
  auto resolvers = std::make_shared<FrameResolvers>();
  ASSERT_THAT(
      resolvers->Register("early", kOverlayOrder - 1, [](auto&&...) { return absl::OkStatus(); }),
      IsOk());
  ASSERT_THAT(
      resolvers->Register("late", kOverlayOrder + 1, [](auto&&...) { return absl::OkStatus(); }),
      IsOk());
  ASSERT_THAT(app.SetFrameResolvers(resolvers), IsOk());
  ASSERT_THAT(RegisterNetworkOverlay(app, Networks(), "lan"), IsOk());
  EXPECT_THAT(resolvers->names(), ElementsAre("early", "net.overlay", "late"));
  EXPECT_THAT(resolvers->claims(), ElementsAre("network"));
  PairList pairs;
  ASSERT_THAT(resolvers->Resolve(Frame(), Options(), pairs), IsOk());
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(*pairs[0].As(NetworkKey()), "lan");
  // Registering twice is refused by the registry.
  EXPECT_EQ(RegisterNetworkOverlay(app, Networks(), "lan").code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(RegisterNetworkOverlay, UnknownDefaultFailsAtBoot) {
  AppContext app;
  ASSERT_THAT(app.SetFrameResolvers(std::make_shared<FrameResolvers>()), IsOk());
  EXPECT_TRUE(IsNetworkNotFound(RegisterNetworkOverlay(app, Networks(), "i2p")));
  EXPECT_EQ(app.frame_resolvers()->size(), 0u);
}

// Tests that a registry carrying the network claim but no overlay fails a call that selects
// a network, instead of sending it out with no route.
TEST(NetworkClaim, RegistryWithoutOverlayFailsClosed) {
  FrameResolvers resolvers;
  ASSERT_THAT(RegisterNetworkClaim(resolvers), IsOk());
  PairList pairs;
  absl::Status status = resolvers.Resolve(Frame(), Options{{"network", "tor"}}, pairs);
  EXPECT_TRUE(IsResolverNotRegistered(status)) << status;
  EXPECT_EQ(NotRegisteredClaim(status), "network");
  // Calls that select nothing are unaffected.
  EXPECT_THAT(resolvers.Resolve(Frame(), Options(), pairs), IsOk());
}

constexpr char kConfig[] = R"(# test networks
default = tor
clearnet = deny
network tor socks5 127.0.0.1:9050
network lan direct bind=127.0.0.7
)";

absl::Status InstallResolvers(AppContext& app) {
  auto resolvers = std::make_shared<FrameResolvers>();
  FRAMEKIT_RETURN_IF_ERROR(RegisterNetworkClaim(*resolvers));
  return app.SetFrameResolvers(resolvers);
}

TEST(NetworkComponent, BootsTheOverlayFromConfiguration) {
  BootSequence boot;
  ASSERT_THAT(boot.Add(NetworkComponent(kConfig, {"resolvers"})), IsOk());
  ASSERT_THAT(boot.Add({"resolvers", {}, InstallResolvers}), IsOk());
  AppContext app;
  ASSERT_THAT(boot.Run(app), IsOk());
  EXPECT_TRUE(app.sealed());
  const auto* networks = app.Get(NetworkRegistryKey());
  ASSERT_NE(networks, nullptr);
  EXPECT_TRUE((*networks)->Contains("lan"));
  PairList pairs;
  ASSERT_THAT(app.frame_resolvers()->Resolve(Frame(), Options(), pairs), IsOk());
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(*pairs[0].As(NetworkKey()), "tor");
}

TEST(NetworkComponent, WithoutFrameResolversBootFailsLoud) {
  BootSequence boot;
  ASSERT_THAT(boot.Add(NetworkComponent(kConfig)), IsOk());
  AppContext app;
  absl::Status status = boot.Run(app);
  EXPECT_TRUE(IsFrameResolversMissing(status)) << status;
  EXPECT_EQ(FailedBootComponent(status), "net");
  EXPECT_EQ(app.Get(NetworkRegistryKey()), nullptr);
  EXPECT_FALSE(app.sealed());
}

// Tests that a configuration error fails boot naming the component, the line and the key,
// and leaves no overlay registered.
TEST(NetworkComponent, BadConfigurationLeavesNothingInstalled) {
  BootSequence boot;
  ASSERT_THAT(boot.Add({"resolvers", {}, InstallResolvers}), IsOk());
  ASSERT_THAT(boot.Add(NetworkComponent("network tor socks5 127.0.0.1:9050\nclearnet = maybe\n",
                                        {"resolvers"})),
              IsOk());
  AppContext app;
  absl::Status status = boot.Run(app);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("boot component \"net\": line 2: key \"clearnet\""));
  EXPECT_EQ(app.frame_resolvers()->size(), 0u);
}

}  // namespace
}  // namespace framekit::net
