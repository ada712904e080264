// Loopback peers for tests and demos of dialing: an echo server that reports the source address
// it saw, and a real SOCKS5 proxy (Debian's microsocks) run as a child process.
//
// These are real components, not mocks: a test that dials through a network and reads back the
// address the server saw proves which route the connection took.
//
// Example:
//   auto echo = framekit::net::loopback::PeerEchoServer::Start();
//   auto proxy = framekit::net::loopback::Socks5Proxy::Start({.bind_address = "127.0.0.5"});
//   // Dial through a network pointing at proxy->port(); the server reports "127.0.0.5".
//
// Part of the target framekit::net_testing, which is not installed.
#ifndef FRAMEKIT_NET_TESTING_LOOPBACK_H_
#define FRAMEKIT_NET_TESTING_LOOPBACK_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"

namespace framekit::net::loopback {

// A loopback TCP port nobody listened on at the time of the call.
// NOTE: another process may take it before the caller binds it; callers retry on EADDRINUSE
// or accept the (small) race.
absl::StatusOr<std::uint16_t> FreeLoopbackPort();

// Listens on 127.0.0.1 and answers every connection with "<peer ip>\n", then closes it.
//
// Thread-safety: thread-safe.
class PeerEchoServer {
 public:
  // Starts serving on an ephemeral port. Errors name the failing system call.
  static absl::StatusOr<std::unique_ptr<PeerEchoServer>> Start();
  // Stops serving and joins the server thread.
  ~PeerEchoServer();
  PeerEchoServer(const PeerEchoServer&) = delete;
  PeerEchoServer& operator=(const PeerEchoServer&) = delete;

  std::uint16_t port() const { return port_; }
  // The peer address of every connection accepted so far, in order.
  std::vector<std::string> peers() const;

 private:
  PeerEchoServer() = default;
  void Serve();

  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<std::string> peers_ ABSL_GUARDED_BY(mu_);
};

// Where Debian's microsocks package installs the proxy.
inline constexpr char kMicrosocksBinary[] = "/usr/bin/microsocks";

// A microsocks SOCKS5 proxy child process on a free loopback port.
//
// Thread-safety: thread-compatible.
class Socks5Proxy {
 public:
  struct Options {
    std::string binary = kMicrosocksBinary;
    std::string listen_address = "127.0.0.1";
    std::string bind_address = {};  // the proxy's outgoing source address; empty: default
    std::string username = {};      // empty: no authentication
    std::string password = {};
  };

  // Whether `binary` exists and is executable.
  static bool Available(const std::string& binary = kMicrosocksBinary);
  // Starts the proxy and waits (up to 10 s) until it accepts connections. Unavailable when the
  // binary is missing; Internal when it cannot be spawned or exits during start-up.
  static absl::StatusOr<std::unique_ptr<Socks5Proxy>> Start(Options options);
  // Stops the process (SIGTERM, then waits for it).
  ~Socks5Proxy();
  Socks5Proxy(const Socks5Proxy&) = delete;
  Socks5Proxy& operator=(const Socks5Proxy&) = delete;

  std::uint16_t port() const { return port_; }
  pid_t pid() const { return pid_; }
  // Stops the process now; idempotent.
  void Stop();

 private:
  Socks5Proxy() = default;
  pid_t pid_ = -1;
  std::uint16_t port_ = 0;
};

}  // namespace framekit::net::loopback

#endif  // FRAMEKIT_NET_TESTING_LOOPBACK_H_
