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
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
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

// A scripted SOCKS5 server on 127.0.0.1 that records every client's handshake (the
// authentication methods offered, the credentials sent, and the destination asked for, as the
// client sent it: a host name or an address) and answers as scripted. It resolves host names
// only from its own table, so a name that reaches a destination through it was resolved on the
// proxy side, never by the client. Connections are served one at a time.
//
// This is a test instrument for the client side of the protocol; the real proxy in tests is
// microsocks (Socks5Proxy).
//
// Thread-safety: thread-safe.
class RecordingSocks5Server {
 public:
  struct Script {
    // The method the server selects when the client offers it: 0x00 none, 0x02
    // username/password. When the client does not offer it the server answers 0xFF (no
    // acceptable method) and closes.
    std::uint8_t method = 0x00;
    // The CONNECT reply code (RFC 1928 section 6); 0 relays to the destination.
    std::uint8_t reply = 0x00;
    // Host names this server resolves, to IPv4 addresses. Any other name gets reply 4.
    std::map<std::string, std::string> hosts = {};
    // The source address of the relayed connection (its "egress"); empty: the default.
    std::string egress_address = {};
  };
  struct Handshake {
    std::vector<std::uint8_t> methods;  // as offered by the client, in order
    std::string username;               // sent in RFC 1929 authentication, if any
    std::string password;
    std::uint8_t address_type = 0;  // 1 IPv4, 3 host name, 4 IPv6; 0: no request came
    std::string destination;        // the name as sent, or the address in text form
    std::uint16_t port = 0;
  };

  static absl::StatusOr<std::unique_ptr<RecordingSocks5Server>> Start(Script script);
  ~RecordingSocks5Server();
  RecordingSocks5Server(const RecordingSocks5Server&) = delete;
  RecordingSocks5Server& operator=(const RecordingSocks5Server&) = delete;

  std::uint16_t port() const { return port_; }
  // One entry per accepted connection, in order.
  std::vector<Handshake> handshakes() const;

 private:
  explicit RecordingSocks5Server(Script script) : script_(std::move(script)) {}
  void Serve();
  void Handle(int fd);

  const Script script_;
  int listen_fd_ = -1;
  int stop_pipe_[2] = {-1, -1};
  std::uint16_t port_ = 0;
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Handshake> handshakes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace framekit::net::loopback

#endif  // FRAMEKIT_NET_TESTING_LOOPBACK_H_
