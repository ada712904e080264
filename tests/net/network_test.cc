#include "framekit/net/network.h"

#include <string>

#include "absl/status/status.h"
#include "framekit/net/overlay.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::net {
namespace {

using ::framekit::testing::IsOk;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(NetworkRegistry, AddFindContains) {
  NetworkRegistry networks;
  ASSERT_THAT(networks.Add(Network::Socks5("tor", "127.0.0.1", 9050, "alice", "secret")), IsOk());
  ASSERT_THAT(networks.Add(Network::Direct("lan").WithBindAddress("127.0.0.7")), IsOk());
  EXPECT_TRUE(networks.Contains("tor"));
  EXPECT_FALSE(networks.Contains("i2p"));
  ASSERT_NE(networks.Find("tor"), nullptr);
  EXPECT_EQ(networks.Find("tor")->kind, Network::Kind::kSocks5);
  EXPECT_EQ(networks.Find("tor")->username, "alice");
  EXPECT_EQ(networks.Find("lan")->bind_address, "127.0.0.7");
  EXPECT_EQ(networks.Find("i2p"), nullptr);
  EXPECT_THAT(networks.ids(), ElementsAre("tor", "lan"));
  EXPECT_FALSE(networks.clearnet_allowed());
}

TEST(NetworkRegistry, DuplicateIdIsAlreadyExists) {
  NetworkRegistry networks;
  ASSERT_THAT(networks.Add(Network::Direct("lan")), IsOk());
  EXPECT_EQ(networks.Add(Network::Socks5("lan", "127.0.0.1", 1080)).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(NetworkRegistry, RejectsMalformedNetworks) {
  NetworkRegistry networks;
  for (const Network& bad : {
           Network::Direct(""),
           Network::Direct("Tor"),
           Network::Direct("a b"),
           Network::Direct(std::string(65, 'a')),
           Network::Direct("clearnet"),
           Network::Direct("lan", "not-an-ip"),
           Network::Direct("lan", "127.0.0.300"),
           Network::Socks5("tor", "", 9050),
           Network::Socks5("tor", "bad host", 9050),
           Network::Socks5("tor", "a..b", 9050),
           Network::Socks5("tor", "127.0.0.1", 0),
           Network::Socks5("tor", "127.0.0.1", 9050, "", "secret"),
           Network::Socks5("tor", "127.0.0.1", 9050, std::string(256, 'u'), "p"),
       }) {
    EXPECT_EQ(networks.Add(bad).code(), absl::StatusCode::kInvalidArgument) << bad.id;
  }
  EXPECT_EQ(networks.size(), 0u);
}

// Tests that an address with an embedded NUL is refused, not read up to the NUL (found by the
// fuzzer: "::\0\0\0\01" passed as "::").
TEST(NetworkRegistry, RejectsAddressWithEmbeddedNul) {
  using namespace std::string_literals;
  EXPECT_FALSE(IsValidIpAddress("::\0\0\0\0001"s));
  EXPECT_FALSE(IsValidHost("127.0.0.1\0evil"s));
  NetworkRegistry networks;
  EXPECT_EQ(networks.Add(Network::Direct("lan", "::\0\0\0\0001"s)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(NetworkId, Grammar) {
  EXPECT_TRUE(IsValidNetworkId("tor"));
  EXPECT_TRUE(IsValidNetworkId("corp-egress.eu_1"));
  EXPECT_TRUE(IsValidNetworkId(std::string(64, 'z')));
  EXPECT_FALSE(IsValidNetworkId(std::string(65, 'z')));
  EXPECT_FALSE(IsValidNetworkId("UPPER"));
  EXPECT_FALSE(IsValidNetworkId("clearnet"));
  EXPECT_FALSE(IsValidNetworkId(""));
  EXPECT_FALSE(IsValidNetworkId("a/b"));
}

TEST(ParseNetworkConfig, ParsesEverySetting) {
  absl::StatusOr<NetworkConfig> config = ParseNetworkConfig(
      "# comment\n\n default = tor  # trailing\nclearnet = allow\n"
      "network tor socks5 127.0.0.1:9050 user=alice password=secret\n"
      "network v6 socks5 [::1]:1080\n"
      "network lan direct bind=127.0.0.7\nnetwork plain direct\n");
  ASSERT_THAT(config, IsOk()) << config.status();
  EXPECT_EQ(config->app_default, "tor");
  EXPECT_EQ(config->clearnet, ClearnetPolicy::kAllow);
  ASSERT_EQ(config->networks.size(), 4u);
  EXPECT_EQ(config->networks[0], Network::Socks5("tor", "127.0.0.1", 9050, "alice", "secret"));
  EXPECT_EQ(config->networks[1], Network::Socks5("v6", "::1", 1080));
  EXPECT_EQ(config->networks[2], Network::Direct("lan", "127.0.0.7"));
  EXPECT_EQ(config->networks[3], Network::Direct("plain"));
  absl::StatusOr<NetworkConfig> again = ParseNetworkConfig(FormatNetworkConfig(*config));
  ASSERT_THAT(again, IsOk()) << again.status();
  EXPECT_EQ(*again, *config);
}

TEST(ParseNetworkConfig, EmptyTextIsStrictAndEmpty) {
  absl::StatusOr<NetworkConfig> config = ParseNetworkConfig("");
  ASSERT_THAT(config, IsOk());
  EXPECT_TRUE(config->networks.empty());
  EXPECT_EQ(config->clearnet, ClearnetPolicy::kDeny);
}

TEST(ParseNetworkConfig, ErrorsNameLineAndKey) {
  struct Case {
    const char* text;
    const char* expected;
  };
  for (const Case& c : {
           Case{"clearnet = maybe", "line 1: key \"clearnet\": expected allow or deny"},
           Case{"\n\nproxy = x", "line 3: key \"proxy\": unknown key"},
           Case{"default = Tor", "line 1: key \"default\": \"Tor\" is not a valid network id"},
           Case{"default = a\ndefault = b", "line 2: key \"default\": given twice"},
           Case{"network tor socks5 127.0.0.1", "line 1: key \"network\": malformed proxy"},
           Case{"network tor socks5 127.0.0.1:0", "line 1: key \"network\": proxy port \"0\""},
           Case{"network lan direct user=x", "line 1: key \"user\": not an option of a direct"},
           Case{"network lan direct bind=nope", "line 1: key \"network\": network \"lan\": bind"},
           Case{"network a direct\nnetwork a direct",
                "line 2: key \"network\": network \"a\" is "
                "defined twice"},
           Case{"network lan wormhole", "line 1: key \"network\": unknown kind \"wormhole\""},
       }) {
    absl::StatusOr<NetworkConfig> config = ParseNetworkConfig(c.text);
    ASSERT_THAT(config, ::testing::Not(IsOk())) << c.text;
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(config.status().message(), HasSubstr(c.expected)) << c.text;
  }
}

TEST(BuildNetworkRegistry, UnknownDefaultIsNotFound) {
  NetworkConfig config;
  config.networks.push_back(Network::Direct("lan"));
  config.app_default = "tor";
  EXPECT_TRUE(IsNetworkNotFound(BuildNetworkRegistry(config).status()));
  config.app_default = "lan";
  config.clearnet = ClearnetPolicy::kAllow;
  absl::StatusOr<std::shared_ptr<const NetworkRegistry>> registry = BuildNetworkRegistry(config);
  ASSERT_THAT(registry, IsOk());
  EXPECT_TRUE((*registry)->Contains("lan"));
  EXPECT_TRUE((*registry)->clearnet_allowed());
}

}  // namespace
}  // namespace framekit::net
