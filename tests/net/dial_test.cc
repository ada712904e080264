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
#include "gmock/gmock.h"
#include "gtest/gtest.h"

extern char** environ;

namespace framekit::net {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr char kMicrosocks[] = "/usr/bin/microsocks";
constexpr std::chrono::milliseconds kTimeout{5000};

sockaddr_in Loopback(const char* ip, std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, ip, &addr.sin_addr);
  return addr;
}

// A loopback port nobody listens on right now.
std::uint16_t FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = Loopback("127.0.0.1", 0);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Answers each connection with "<peer ip>\n" and closes it; remembers the peers in order.
class EchoServer {
 public:
  EchoServer() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = Loopback("127.0.0.1", 0);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(::listen(listen_fd_, 16), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    EXPECT_EQ(::pipe2(stop_pipe_, O_CLOEXEC), 0);
    thread_ = std::thread([this] { Serve(); });
  }
  ~EchoServer() {
    ::close(stop_pipe_[1]);
    thread_.join();
    ::close(stop_pipe_[0]);
    ::close(listen_fd_);
  }

  std::uint16_t port() const { return port_; }
  std::vector<std::string> peers() const {
    std::lock_guard<std::mutex> lock(mu_);
    return peers_;
  }

 private:
  void Serve() {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
    while (true) {
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents != 0) return;
      sockaddr_in peer{};
      socklen_t len = sizeof(peer);
      const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
      if (fd < 0) continue;
      char ip[INET_ADDRSTRLEN] = {0};
      inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
      {
        std::lock_guard<std::mutex> lock(mu_);
        peers_.push_back(ip);
      }
      const std::string reply = std::string(ip) + "\n";
      (void)::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
      ::close(fd);
    }
  }

  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<std::string> peers_;
};

// A microsocks process on a free loopback port, its outgoing connections bound to 127.0.0.5.
class Microsocks {
 public:
  // Starts microsocks with `extra` arguments and waits (bounded) until it accepts connections.
  absl::Status Start(std::vector<std::string> extra = {}) {
    port_ = FreePort();
    std::vector<std::string> args = {kMicrosocks,           "-i", "127.0.0.1", "-p",
                                     std::to_string(port_), "-b", "127.0.0.5"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    // microsocks logs every client to stderr; keep the test output readable.
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    const int err = posix_spawn(&pid_, kMicrosocks, &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (err != 0) {
      pid_ = -1;
      return absl::InternalError(std::string("posix_spawn microsocks: ") + std::strerror(err));
    }
    // Poll-connect until the proxy listens: bounded, and failing early if the process died.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      int wstatus = 0;
      if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
        pid_ = -1;
        return absl::InternalError("microsocks exited during startup");
      }
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in addr = Loopback("127.0.0.1", port_);
      const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
      ::close(fd);
      if (up) return absl::OkStatus();
      ::poll(nullptr, 0, 5);  // back off between attempts
    }
    return absl::DeadlineExceededError("microsocks did not listen within 10 s");
  }
  void Stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    int wstatus = 0;
    ::waitpid(pid_, &wstatus, 0);
    pid_ = -1;
  }
  ~Microsocks() { Stop(); }
  std::uint16_t port() const { return port_; }

 private:
  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
};

class DialTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access(kMicrosocks, X_OK) != 0) {
      GTEST_SKIP() << kMicrosocks << " is not installed (apt-get install microsocks); "
                   << "the dialing tests need a real SOCKS5 proxy";
    }
    ASSERT_TRUE(proxy_.Start().ok());
    ASSERT_TRUE(auth_proxy_.Start({"-u", "alice", "-P", "secret"}).ok());
  }
  void TearDown() override {
    proxy_.Stop();
    auth_proxy_.Stop();
  }

  std::shared_ptr<NetworkRegistry> Registry(ClearnetPolicy policy) {
    auto networks = std::make_shared<NetworkRegistry>(policy);
    EXPECT_TRUE(networks->Add(Network::Socks5("tor", "127.0.0.1", proxy_.port())).ok());
    EXPECT_TRUE(
        networks->Add(Network::Socks5("auth", "127.0.0.1", auth_proxy_.port(), "alice", "secret"))
            .ok());
    EXPECT_TRUE(
        networks->Add(Network::Socks5("badauth", "127.0.0.1", auth_proxy_.port(), "alice", "wrong"))
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
    absl::StatusOr<Connection> conn = Dial(frame, networks, "127.0.0.1", echo_.port(), kTimeout);
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

  EchoServer echo_;
  Microsocks proxy_;
  Microsocks auth_proxy_;
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
  EXPECT_THAT(echo_.peers(), IsEmpty());
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
      Dial(CallFrame(networks, Options()), *networks, "127.0.0.1", echo_.port(), kTimeout);
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(conn.status().message(), HasSubstr("no network selected"));

  auto sentinel = std::make_shared<NetworkRegistry>(ClearnetPolicy::kDeny);
  ASSERT_TRUE(sentinel->Add(Network::Direct("sentinel", "127.0.0.9")).ok());
  absl::StatusOr<std::string> peer = PeerSeen(Frame().With(NetworkKey(), "sentinel"), *sentinel);
  ASSERT_TRUE(peer.ok()) << peer.status();
  EXPECT_THAT(echo_.peers(), ElementsAre("127.0.0.9"));
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
                                         "127.0.0.1", echo_.port(), kTimeout);
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
      Dial(Frame().With(NetworkKey(), "i2p"), *networks, "127.0.0.1", echo_.port(), kTimeout);
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
