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
#include <cstdlib>
#include <cstring>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/frame.h"
#include "framekit/net/internal/route_check.h"
#include "framekit/net/network.h"
#include "framekit/net/overlay.h"
#include "framekit/net/testing/loopback.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

extern char** environ;

namespace framekit::net {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr std::chrono::milliseconds kTimeout{5000};

using loopback::PeerEchoServer;
using loopback::RecordingSocks5Server;
using loopback::Socks5Proxy;

// Sets environment variables for its lifetime and restores what was there before.
// NOTE: setenv is not thread-safe; use it only while the test runs no other threads that read
// the environment (the echo server and proxies do not).
class ScopedEnv {
 public:
  explicit ScopedEnv(std::vector<std::pair<std::string, std::string>> values) {
    for (auto& [name, value] : values) {
      const char* old = std::getenv(name.c_str());
      saved_.push_back({name, old != nullptr ? std::optional<std::string>(old) : std::nullopt});
      ::setenv(name.c_str(), value.c_str(), 1);
    }
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it) {
      if (it->second) {
        ::setenv(it->first.c_str(), it->second->c_str(), 1);
      } else {
        ::unsetenv(it->first.c_str());
      }
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

std::unique_ptr<RecordingSocks5Server> StartRecorder(RecordingSocks5Server::Script script) {
  absl::StatusOr<std::unique_ptr<RecordingSocks5Server>> server =
      RecordingSocks5Server::Start(std::move(script));
  EXPECT_TRUE(server.ok()) << server.status();
  return server.ok() ? *std::move(server) : nullptr;
}

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
    EXPECT_THAT(networks->Add(Network::Socks5("tor", "127.0.0.1", proxy_->port())),
                ::framekit::testing::IsOk());
    EXPECT_TRUE(
        networks->Add(Network::Socks5("auth", "127.0.0.1", auth_proxy_->port(), "alice", "secret"))
            .ok());
    EXPECT_TRUE(
        networks
            ->Add(Network::Socks5("badauth", "127.0.0.1", auth_proxy_->port(), "alice", "wrong"))
            .ok());
    EXPECT_THAT(networks->Add(Network::Direct("lan", "127.0.0.7")), ::framekit::testing::IsOk());
    EXPECT_THAT(networks->Add(Network::Socks5("dead", "127.0.0.1", FreePort())),
                ::framekit::testing::IsOk());
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

  // Dials the echo server at `host` and returns the peer address it reports.
  absl::StatusOr<std::string> PeerSeen(const Frame& frame, const NetworkRegistry& networks,
                                       const std::string& host = "127.0.0.1") {
    absl::StatusOr<Connection> conn = Dial(frame, networks, host, echo_->port(), kTimeout);
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
  ASSERT_THAT(peer, ::testing::Not(::framekit::testing::IsOk()));
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
  ASSERT_THAT(conn, ::testing::Not(::framekit::testing::IsOk()));
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(conn.status().message(), HasSubstr("no network selected"));

  auto sentinel = std::make_shared<NetworkRegistry>(ClearnetPolicy::kDeny);
  ASSERT_THAT(sentinel->Add(Network::Direct("sentinel", "127.0.0.9")), ::framekit::testing::IsOk());
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
  ASSERT_THAT(conn, ::testing::Not(::framekit::testing::IsOk()));
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kUnavailable) << conn.status();
  EXPECT_THAT(conn.status().message(), HasSubstr("network \"dead\": hop 1 (SOCKS5 proxy"));
}

TEST_F(DialTest, DestinationRefusedFailsAtTheSecondHop) {
  auto networks = Registry(ClearnetPolicy::kDeny);
  absl::StatusOr<Connection> conn =
      Dial(CallFrame(networks, {{"network", "tor"}}), *networks, "127.0.0.1", FreePort(), kTimeout);
  ASSERT_THAT(conn, ::testing::Not(::framekit::testing::IsOk()));
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

// The proxy variables a host, a container image or a shell profile commonly sets, each pointed
// somewhere hostile: NO_PROXY at everything or at the destination, the proxy variables at a
// decoy proxy that records any contact.
std::vector<std::vector<std::pair<std::string, std::string>>> HostileEnvironments(
    std::uint16_t decoy_port) {
  const std::string decoy = absl::StrCat("socks5h://127.0.0.1:", decoy_port);
  const std::string decoy_http = absl::StrCat("http://127.0.0.1:", decoy_port);
  return {
      {{"NO_PROXY", "*"}},
      {{"no_proxy", "*"}},
      {{"NO_PROXY", "localhost,127.0.0.1"}, {"no_proxy", "localhost,127.0.0.1"}},
      {{"ALL_PROXY", decoy}},
      {{"all_proxy", decoy}},
      {{"HTTP_PROXY", decoy_http}, {"http_proxy", decoy_http}},
      {{"HTTPS_PROXY", decoy_http}, {"https_proxy", decoy_http}},
      {{"NO_PROXY", "*"},
       {"no_proxy", "*"},
       {"ALL_PROXY", decoy},
       {"all_proxy", decoy},
       {"http_proxy", decoy_http},
       {"HTTPS_PROXY", decoy_http}},
  };
}

std::string Describe(const std::vector<std::pair<std::string, std::string>>& env) {
  std::string out;
  for (const auto& [name, value] : env) absl::StrAppend(&out, name, "=", value, " ");
  return out;
}

// Tests that no proxy variable in the process environment changes where a dial goes: every
// SOCKS5-routed dial still arrives from the proxy's egress address (for an IP and a host-name
// destination), wrong credentials still fail at the proxy, direct and bound networks still go
// straight out, and the decoy proxy the variables name is never contacted.
TEST_F(DialTest, ProxyEnvironmentVariablesCannotMoveARoute) {
  auto networks = Registry(ClearnetPolicy::kAllow);
  std::unique_ptr<RecordingSocks5Server> decoy = StartRecorder({.egress_address = "127.0.0.9"});
  ASSERT_NE(decoy, nullptr);
  for (const auto& env : HostileEnvironments(decoy->port())) {
    SCOPED_TRACE(Describe(env));
    ScopedEnv scoped(env);
    for (const std::string host : {"127.0.0.1", "localhost"}) {
      SCOPED_TRACE(host);
      absl::StatusOr<std::string> tor =
          PeerSeen(CallFrame(networks, {{"network", "tor"}}), *networks, host);
      ASSERT_TRUE(tor.ok()) << tor.status();
      EXPECT_EQ(*tor, "127.0.0.5");
      absl::StatusOr<std::string> auth =
          PeerSeen(CallFrame(networks, {{"network", "auth"}}), *networks, host);
      ASSERT_TRUE(auth.ok()) << auth.status();
      EXPECT_EQ(*auth, "127.0.0.5");
      absl::StatusOr<std::string> bad =
          PeerSeen(CallFrame(networks, {{"network", "badauth"}}), *networks, host);
      EXPECT_EQ(bad.status().code(), absl::StatusCode::kPermissionDenied) << bad.status();
      absl::StatusOr<std::string> lan =
          PeerSeen(CallFrame(networks, {{"network", "lan"}}), *networks, host);
      ASSERT_TRUE(lan.ok()) << lan.status();
      EXPECT_EQ(*lan, "127.0.0.7");
      absl::StatusOr<std::string> clear = PeerSeen(CallFrame(networks, Options()), *networks, host);
      ASSERT_TRUE(clear.ok()) << clear.status();
      EXPECT_EQ(*clear, "127.0.0.1");
    }
  }
  EXPECT_THAT(decoy->handshakes(), IsEmpty()) << "a proxy variable rerouted a dial";
}

// Tests that a destination host name travels to the proxy unresolved and is resolved there: the
// name exists only in the proxy's own table (".invalid" never resolves through DNS), and the
// dial arrives from the proxy's egress address, with NO_PROXY set to match everything.
TEST_F(DialTest, HostNamesAreResolvedByTheProxyNotLocally) {
  std::unique_ptr<RecordingSocks5Server> proxy = StartRecorder(
      {.hosts = {{"echo.proxy-only.invalid", "127.0.0.1"}}, .egress_address = "127.0.0.6"});
  ASSERT_NE(proxy, nullptr);
  NetworkRegistry networks(ClearnetPolicy::kDeny);
  ASSERT_THAT(networks.Add(Network::Socks5("rec", "127.0.0.1", proxy->port())),
              ::framekit::testing::IsOk());
  ScopedEnv env({{"NO_PROXY", "*"}, {"no_proxy", "*"}});
  absl::StatusOr<std::string> peer =
      PeerSeen(Frame().With(NetworkKey(), "rec"), networks, "echo.proxy-only.invalid");
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_EQ(*peer, "127.0.0.6");
  const std::vector<RecordingSocks5Server::Handshake> seen = proxy->handshakes();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].address_type, 0x03) << "the destination was sent as an address, not a name";
  EXPECT_EQ(seen[0].destination, "echo.proxy-only.invalid");
  EXPECT_EQ(seen[0].port, echo_->port());
}

// Tests that a network without credentials offers exactly "no authentication", and one with
// credentials offers username/password: never GSS-API, which would hand the host's Kerberos
// credentials to a proxy that picks it. libcurl always lists "no authentication" first; with it a
// proxy that needs no credentials is sent none, which leaks nothing.
TEST_F(DialTest, OffersOnlyTheConfiguredAuthenticationMethod) {
  std::unique_ptr<RecordingSocks5Server> open = StartRecorder({.method = 0x00});
  std::unique_ptr<RecordingSocks5Server> basic = StartRecorder({.method = 0x02});
  std::unique_ptr<RecordingSocks5Server> gssapi = StartRecorder({.method = 0x01});
  ASSERT_TRUE(open && basic && gssapi);
  NetworkRegistry networks(ClearnetPolicy::kDeny);
  ASSERT_THAT(networks.Add(Network::Socks5("open", "127.0.0.1", open->port())),
              ::framekit::testing::IsOk());
  ASSERT_TRUE(
      networks.Add(Network::Socks5("basic", "127.0.0.1", basic->port(), "alice", "secret")).ok());
  ASSERT_THAT(networks.Add(Network::Socks5("gss", "127.0.0.1", gssapi->port())),
              ::framekit::testing::IsOk());
  ASSERT_TRUE(
      networks.Add(Network::Socks5("gss2", "127.0.0.1", gssapi->port(), "alice", "secret")).ok());

  ASSERT_THAT(PeerSeen(Frame().With(NetworkKey(), "open"), networks), ::framekit::testing::IsOk());
  ASSERT_EQ(open->handshakes().size(), 1u);
  EXPECT_THAT(open->handshakes()[0].methods, ElementsAre(0x00));

  ASSERT_THAT(PeerSeen(Frame().With(NetworkKey(), "basic"), networks), ::framekit::testing::IsOk());
  ASSERT_EQ(basic->handshakes().size(), 1u);
  EXPECT_THAT(basic->handshakes()[0].methods, ElementsAre(0x00, 0x02));
  EXPECT_EQ(basic->handshakes()[0].username, "alice");
  EXPECT_EQ(basic->handshakes()[0].password, "secret");

  for (const char* id : {"gss", "gss2"}) {
    absl::StatusOr<std::string> refused = PeerSeen(Frame().With(NetworkKey(), id), networks);
    EXPECT_FALSE(refused.ok()) << id << " accepted a method it never offered";
  }
  ASSERT_EQ(gssapi->handshakes().size(), 2u);
  for (const auto& handshake : gssapi->handshakes()) {
    EXPECT_THAT(handshake.methods, Not(Contains(0x01)));
    EXPECT_EQ(handshake.address_type, 0) << "a request was sent after the proxy refused";
  }
}

// Tests that every SOCKS5 reply a proxy can send at hop 2 is spelled out, with its number.
TEST_F(DialTest, SecondHopRepliesAreSpelledOut) {
  const std::vector<std::pair<std::uint8_t, std::string>> replies = {
      {1, "general SOCKS server failure (SOCKS5 reply 1)"},
      {2, "connection not allowed by ruleset (SOCKS5 reply 2)"},
      {3, "network unreachable (SOCKS5 reply 3)"},
      {4, "host unreachable (SOCKS5 reply 4)"},
      {5, "connection refused (SOCKS5 reply 5)"},
      {6, "TTL expired (SOCKS5 reply 6)"},
      {7, "command not supported (SOCKS5 reply 7)"},
      {8, "address type not supported (SOCKS5 reply 8)"},
      {9, "an unassigned SOCKS5 reply code"},
  };
  for (const auto& [reply, text] : replies) {
    SCOPED_TRACE(static_cast<int>(reply));
    std::unique_ptr<RecordingSocks5Server> proxy = StartRecorder({.reply = reply});
    ASSERT_NE(proxy, nullptr);
    NetworkRegistry networks(ClearnetPolicy::kDeny);
    ASSERT_THAT(networks.Add(Network::Socks5("p", "127.0.0.1", proxy->port())),
                ::framekit::testing::IsOk());
    absl::StatusOr<Connection> conn =
        Dial(Frame().With(NetworkKey(), "p"), networks, "127.0.0.1", echo_->port(), kTimeout);
    ASSERT_THAT(conn, ::testing::Not(::framekit::testing::IsOk()));
    EXPECT_EQ(conn.status().code(),
              reply == 2 ? absl::StatusCode::kPermissionDenied : absl::StatusCode::kUnavailable)
        << conn.status();
    EXPECT_THAT(conn.status().message(), HasSubstr("hop 2 (destination 127.0.0.1:"));
    EXPECT_THAT(conn.status().message(), HasSubstr(text));
  }
  EXPECT_THAT(echo_->peers(), IsEmpty());
}

// Tests that a destination name too long for a SOCKS5 request (over 255 bytes, where libcurl
// would quietly resolve it locally instead) is refused before anything connects.
TEST_F(DialTest, OverlongHostNameIsRefusedBeforeAnyLookup) {
  std::unique_ptr<RecordingSocks5Server> proxy = StartRecorder({});
  ASSERT_NE(proxy, nullptr);
  NetworkRegistry networks(ClearnetPolicy::kDeny);
  ASSERT_THAT(networks.Add(Network::Socks5("rec", "127.0.0.1", proxy->port())),
              ::framekit::testing::IsOk());
  std::string host;
  while (host.size() < 300) host += "abcdefghij.";
  host += "invalid";
  absl::StatusOr<Connection> conn =
      Dial(Frame().With(NetworkKey(), "rec"), networks, host, echo_->port(), kTimeout);
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kInvalidArgument) << conn.status();
  EXPECT_THAT(proxy->handshakes(), IsEmpty());
}

// Connects a plain TCP socket to 127.0.0.1:port from `source`; -1 on failure.
int ConnectFrom(const char* source, std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in from{};
  from.sin_family = AF_INET;
  inet_pton(AF_INET, source, &from.sin_addr);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Tests the kernel-side route check behind every dial: a socket that does not lead to the
// proxy, or does not leave from the bind address, is refused with a message naming both ends.
TEST_F(DialTest, RouteCheckRefusesASocketOffTheRoute) {
  Connection to_echo(ConnectFrom("127.0.0.8", echo_->port()));
  ASSERT_TRUE(to_echo.is_open());
  const absl::Status not_proxy =
      net_internal::VerifyRoute(to_echo.fd(), Network::Socks5("tor", "127.0.0.1", proxy_->port()));
  EXPECT_EQ(not_proxy.code(), absl::StatusCode::kInternal) << not_proxy;
  EXPECT_THAT(not_proxy.message(), HasSubstr("network \"tor\": route check failed"));
  EXPECT_THAT(not_proxy.message(), HasSubstr(absl::StrCat("127.0.0.1:", echo_->port())));
  const absl::Status wrong_source =
      net_internal::VerifyRoute(to_echo.fd(), Network::Direct("lan", "127.0.0.7"));
  EXPECT_EQ(wrong_source.code(), absl::StatusCode::kInternal) << wrong_source;
  EXPECT_THAT(wrong_source.message(), HasSubstr("127.0.0.8"));

  Connection to_proxy(ConnectFrom("127.0.0.8", proxy_->port()));
  ASSERT_TRUE(to_proxy.is_open());
  EXPECT_TRUE(
      net_internal::VerifyRoute(to_proxy.fd(), Network::Socks5("tor", "127.0.0.1", proxy_->port()))
          .ok());
  EXPECT_FALSE(
      net_internal::VerifyRoute(to_proxy.fd(), Network::Socks5("tor", "127.0.0.2", proxy_->port()))
          .ok());
  EXPECT_THAT(net_internal::VerifyRoute(to_proxy.fd(), Network::Direct("lan", "127.0.0.8")),
              ::framekit::testing::IsOk());
  EXPECT_THAT(net_internal::VerifyRoute(to_proxy.fd(), Network::Direct("any")),
              ::framekit::testing::IsOk());
}

TEST(Connection, IsMoveOnlyAndClosesOnce) {
  int fds[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  Connection a(fds[0]);
  Connection b(std::move(a));
  EXPECT_FALSE(a.is_open());
  ASSERT_THAT(b.Write("hi"), ::framekit::testing::IsOk());
  char buf[2];
  ASSERT_EQ(::recv(fds[1], buf, 2, 0), 2);
  b.Close();
  EXPECT_EQ(::recv(fds[1], buf, 2, 0), 0);  // peer sees the close
  EXPECT_EQ(b.Write("x").code(), absl::StatusCode::kFailedPrecondition);
  ::close(fds[1]);
}

}  // namespace
}  // namespace framekit::net
