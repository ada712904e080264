// Dialing against real components: Debian's microsocks as the SOCKS5 proxy and an in-process
// echo server that answers every connection with the peer address it saw.
#include "framekit/net/dial.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "framekit/ctx/frame.h"
#include "framekit/net/network.h"
#include "framekit/net/overlay.h"
#include "framekit/net/testing/loopback.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace framekit::net {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr std::chrono::milliseconds kTimeout{5000};

using loopback::PeerEchoServer;
using loopback::Socks5Proxy;

std::uint16_t FreePort() {
  absl::StatusOr<std::uint16_t> port = loopback::FreeLoopbackPort();
  EXPECT_TRUE(port.ok()) << port.status();
  return port.value_or(1);
}

class DialTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Socks5Proxy::Available()) {
      GTEST_SKIP() << loopback::kMicrosocksBinary
                   << " is not installed (apt-get install microsocks); "
                   << "the dialing tests need a real SOCKS5 proxy";
    }
    absl::StatusOr<std::unique_ptr<PeerEchoServer>> echo = PeerEchoServer::Start();
    ASSERT_TRUE(echo.ok()) << echo.status();
    echo_ = *std::move(echo);
    absl::StatusOr<std::unique_ptr<Socks5Proxy>> proxy =
        Socks5Proxy::Start({.bind_address = "127.0.0.5"});
    ASSERT_TRUE(proxy.ok()) << proxy.status();
    proxy_ = *std::move(proxy);
    absl::StatusOr<std::unique_ptr<Socks5Proxy>> auth_proxy = Socks5Proxy::Start(
        {.bind_address = "127.0.0.5", .username = "alice", .password = "secret"});
    ASSERT_TRUE(auth_proxy.ok()) << auth_proxy.status();
    auth_proxy_ = *std::move(auth_proxy);
  }
  void TearDown() override {
    proxy_.reset();
    auth_proxy_.reset();
    echo_.reset();
  }

  std::shared_ptr<NetworkRegistry> Registry(ClearnetPolicy policy) {
    auto networks = std::make_shared<NetworkRegistry>(policy);
    EXPECT_TRUE(networks->Add(Network::Socks5("tor", "127.0.0.1", proxy_->port())).ok());
    EXPECT_TRUE(
        networks->Add(Network::Socks5("auth", "127.0.0.1", auth_proxy_->port(), "alice", "secret"))
            .ok());
    EXPECT_TRUE(
        networks
            ->Add(Network::Socks5("badauth", "127.0.0.1", auth_proxy_->port(), "alice", "wrong"))
            .ok());
    EXPECT_TRUE(networks->Add(Network::Direct("lan", "127.0.0.7")).ok());
    EXPECT_TRUE(networks->Add(Network::Socks5("dead", "127.0.0.1", FreePort())).ok());
    return networks;
  }

  // The frame the overlay resolver makes for a call with these options.
  static Frame CallFrame(const std::shared_ptr<const NetworkRegistry>& networks,
                         const Options& options) {
    PairList pairs;
    absl::Status status = OverlayResolver(networks, "")(Frame(), options, pairs);
    EXPECT_TRUE(status.ok()) << status;
    return Frame().Fork().With(pairs);
  }

  // Dials the echo server and returns the peer address it reports.
  absl::StatusOr<std::string> PeerSeen(const Frame& frame, const NetworkRegistry& networks) {
    absl::StatusOr<Connection> conn = Dial(frame, networks, "127.0.0.1", echo_->port(), kTimeout);
    if (!conn.ok()) return conn.status();
    std::string seen;
    while (true) {
      absl::StatusOr<std::string> chunk = conn->Read(64, kTimeout);
      if (!chunk.ok()) return chunk.status();
      if (chunk->empty()) break;
      seen += *chunk;
    }
    if (!seen.empty() && seen.back() == '\n') seen.pop_back();
    return seen;
  }

  std::unique_ptr<PeerEchoServer> echo_;
  std::unique_ptr<Socks5Proxy> proxy_;
  std::unique_ptr<Socks5Proxy> auth_proxy_;
};

TEST_F(DialTest, Socks5RouteArrivesFromTheProxy) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<std::string> peer = PeerSeen(CallFrame(networks, {{"network", "tor"}}), *networks);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(*peer, "127.0.0.5");
}

TEST_F(DialTest, Socks5WithCredentialsArrivesFromTheProxy) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<std::string> peer =
      PeerSeen(CallFrame(networks, {{"network", "auth"}}), *networks);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(*peer, "127.0.0.5");
}

TEST_F(DialTest, Socks5WrongCredentialsFailAtTheProxyHop) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<std::string> peer =
      PeerSeen(CallFrame(networks, {{"network", "badauth"}}), *networks);
  ASSERT_FALSE(peer.ok());
  EXPECT_EQ(peer.status().code(), absl::StatusCode::kPermissionDenied) << peer.status();
  EXPECT_THAT(peer.status().message(), HasSubstr("network \"badauth\": hop 1 (SOCKS5 proxy"));
  EXPECT_THAT(echo_->peers(), IsEmpty());
}

TEST_F(DialTest, DirectRouteArrivesFromItsBindAddress) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<std::string> peer = PeerSeen(CallFrame(networks, {{"network", "lan"}}), *networks);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(*peer, "127.0.0.7");
}

// Tests that with no route and a strict policy nothing reaches the server: a sentinel
// connection made afterwards is the first and only one the server sees.
TEST_F(DialTest, NoRouteUnderStrictPolicyNeverConnects) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<Connection> conn =
      Dial(CallFrame(networks, Options()), *networks, "127.0.0.1", echo_->port(), kTimeout);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(conn.status().message(), HasSubstr("no network selected"));

  auto sentinel = std::make_shared<NetworkRegistry>(ClearnetPolicy::kDeny);
  ASSERT_TRUE(sentinel->Add(Network::Direct("sentinel", "127.0.0.9")).ok());
  absl::StatusOr<std::string> peer = PeerSeen(Frame().With(NetworkKey(), "sentinel"), *sentinel);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_THAT(echo_->peers(), ElementsAre("127.0.0.9"));
}

TEST_F(DialTest, ClearnetAllowedConnectsDirectly) {
  auto networks = Registry(ClearnetPolicy::kAllow);
  absl::StatusOr<std::string> none = PeerSeen(CallFrame(networks, Options()), *networks);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, "127.0.0.1");
  absl::StatusOr<std::string> forced =
      PeerSeen(CallFrame(networks, {{"network", "clearnet"}}), *networks);
  ASSERT_TRUE(forced.ok()) << forced.status();
  EXPECT_EQ(*forced, "127.0.0.1");
}

TEST_F(DialTest, ProxyDownFailsAtTheProxyHop) {
  auto networks = Registry(ClearnetPolicy::kAllow);
  absl::StatusOr<Connection> conn = Dial(CallFrame(networks, {{"network", "dead"}}), *networks,
                                         "127.0.0.1", echo_->port(), kTimeout);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnavailable) << conn.status();
  EXPECT_THAT(conn.status().message(), HasSubstr("network \"dead\": hop 1 (SOCKS5 proxy"));
}

TEST_F(DialTest, DestinationRefusedFailsAtTheSecondHop) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<Connection> conn =
      Dial(CallFrame(networks, {{"network", "tor"}}), *networks, "127.0.0.1", FreePort(), kTimeout);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnavailable) << conn.status();
  EXPECT_THAT(conn.status().message(), HasSubstr("network \"tor\": hop 2 (destination"));
}

TEST_F(DialTest, UnknownNetworkOnFrameIsNotFound) {
  auto networks = Registry(ClearnetPolicy::kAllow);
  absl::StatusOr<Connection> conn =
      Dial(Frame().With(NetworkKey(), "i2p"), *networks, "127.0.0.1", echo_->port(), kTimeout);
  EXPECT_TRUE(IsNetworkNotFound(conn.status())) << conn.status();
}

// Tests that dials from several threads at once each take their own frame's route.
TEST_F(DialTest, ConcurrentDialsTakeTheirOwnRoutes) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  constexpr int kThreads = 4;
  std::latch start(kThreads);
  std::vector<absl::StatusOr<std::string>> seen(kThreads, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      const Frame frame = CallFrame(networks, {{"network", i % 2 == 0 ? "tor" : "lan"}});
      start.arrive_and_wait();
      seen[i] = PeerSeen(frame, *networks);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_TRUE(seen[i].ok()) << seen[i].status();
    EXPECT_EQ(*seen[i], i % 2 == 0 ? "127.0.0.5" : "127.0.0.7");
  }
}

TEST(Connection, IsMoveOnlyAndClosesOnce) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Connection a(fds[0]);
  Connection b(std::move(a));
  EXPECT_FALSE(a.is_open());
  ASSERT_TRUE(b.Write("hi").ok());
  char buf[2];
  ASSERT_EQ(::recv(fds[1], buf, 2, 0), 2);
  b.Close();
  EXPECT_EQ(::recv(fds[1], buf, 2, 0), 0);  // peer sees the close
  EXPECT_EQ(b.Write("x").code(), absl::StatusCode::kFailedPrecondition);
  ::close(fds[1]);
}

}  // namespace
}  // namespace framekit::net
