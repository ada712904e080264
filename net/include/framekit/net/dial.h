// Dialing through a frame's route: open a TCP connection the way the call's network says.
//
// The overlay resolver puts the selected network id on the call's frame (NetworkKey()); Dial
// looks it up in the application's NetworkRegistry and connects through that network:
//  - a SOCKS5 network: through the proxy, sending the destination host name to the proxy
//    unresolved (socks5h: no local DNS lookup that would leak the destination), with
//    username/password authentication when configured;
//  - a direct network: straight to the destination, from its bind address when it has one;
//  - no selection, or the "clearnet" selection: directly, only when the registry's clearnet
//    policy allows it; otherwise FailedPrecondition, and nothing connects.
//
// The proxy protocol and the sockets are libcurl's (connect-only mode): a maintained SOCKS5
// client with remote resolution, RFC 1929 authentication, source binding and connect
// timeouts. Dial takes the socket over once connected; libcurl plays no part afterwards.
//
// The process environment never changes a route: every libcurl option that decides where a
// dial goes is set explicitly, so NO_PROXY, no_proxy, ALL_PROXY, all_proxy, HTTP(S)_PROXY and
// http(s)_proxy are ignored; a SOCKS5 handshake offers only the configured authentication
// (username/password, or none; never GSS-API). After connecting, the kernel's view of the
// socket is checked against the network (the peer is the proxy; the source is the bind
// address), and a socket off the route is closed with an Internal error rather than used.
// NOTE: a proxy given by host name is resolved locally by the C library (/etc/hosts, DNS; for
// names without a dot also HOSTALIASES and LOCALDOMAIN). Configure proxies by numeric address
// where that matters: the route check then also verifies the proxy's address.
//
// Example:
//   std::shared_ptr<const framekit::net::NetworkRegistry> networks =
//       *app.Get(framekit::net::NetworkRegistryKey());
//   absl::StatusOr<framekit::net::Connection> conn = framekit::net::Dial(
//       call_frame, *networks, "example.org", 443, std::chrono::seconds(5));
//   if (!conn.ok()) return conn.status();  // e.g. Unavailable: network "tor": hop 1 ...
//   FRAMEKIT_RETURN_IF_ERROR(conn->Write("hello"));
#ifndef FRAMEKIT_NET_DIAL_H_
#define FRAMEKIT_NET_DIAL_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/frame.h"
#include "framekit/net/network.h"

namespace framekit::net {

// A connected TCP socket, closed on destruction. Move-only.
//
// Thread-safety: thread-compatible; one reader and one writer may use fd() concurrently as
// with any socket.
class Connection {
 public:
  Connection() = default;
  // Takes ownership of the connected socket `fd`.
  explicit Connection(int fd) : fd_(fd) {}
  Connection(Connection&& other) noexcept;
  Connection& operator=(Connection&& other) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // The socket, or -1 when closed or moved from.
  int fd() const { return fd_; }
  bool is_open() const { return fd_ >= 0; }
  // Gives up ownership: returns the socket and leaves this connection closed.
  int Release();
  // Closes the socket now. Idempotent.
  void Close();

  // Sends all of `data`. FailedPrecondition when closed; Unavailable (with errno text) when the
  // peer is gone.
  absl::Status Write(std::string_view data);
  // Receives up to `max_bytes`, waiting at most `timeout`. An empty string means the peer
  // closed. DeadlineExceeded when nothing arrived in time; FailedPrecondition when closed.
  absl::StatusOr<std::string> Read(std::size_t max_bytes, std::chrono::milliseconds timeout);

 private:
  int fd_ = -1;
};

// Connects to host:port through the route of `frame` (see the file comment), giving up after
// `timeout`. Errors name the network, the hop and the reason:
//  - FailedPrecondition: no network selected (or "clearnet") and `networks` denies clearnet;
//  - NotFound (IsNetworkNotFound): the frame's network is not in `networks`;
//  - InvalidArgument: empty host or port 0;
//  - Unavailable: a hop refused or was unreachable ("hop 1 (SOCKS5 proxy 127.0.0.1:9050):
//    connection refused"; "hop 2 (destination example.org:443 via the proxy): ...");
//  - PermissionDenied: the proxy rejected the credentials or the request by its rules;
//  - DeadlineExceeded: `timeout` passed;
//  - Internal: connected, but the socket is off the network's route (the route check above);
//    nothing was sent on it.
// NOTE: blocks the calling thread for up to `timeout`. A Frame deadline earlier than
// now + timeout shortens the wait.
absl::StatusOr<Connection> Dial(const Frame& frame, const NetworkRegistry& networks,
                                std::string_view host, std::uint16_t port,
                                std::chrono::milliseconds timeout);

// Connects to host:port through `network` regardless of any frame. Errors as for Dial.
absl::StatusOr<Connection> DialNetwork(const Network& network, std::string_view host,
                                       std::uint16_t port, std::chrono::milliseconds timeout);

}  // namespace framekit::net

#endif  // FRAMEKIT_NET_DIAL_H_
