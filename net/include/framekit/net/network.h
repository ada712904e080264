// Networks: the overlays a call's outbound traffic can take, and the registry that names them.
//
// A network is either an overlay reached through a SOCKS5 proxy (the way Tor or a corporate
// egress is reached; host names are resolved by the proxy, never locally) or a direct route,
// optionally bound to a chosen source address. A NetworkRegistry holds the networks of one
// application together with its clearnet policy; it is filled at boot and then shared,
// immutable, by the overlay resolver (framekit/net/overlay.h) and by Dial (framekit/net/dial.h).
//
// The configuration text read by the network boot component has one setting per line:
//
//   # comments and blank lines are ignored
//   default = tor                      # the app default network (optional)
//   clearnet = deny                    # or `allow`: may a call go out with no overlay?
//   network tor socks5 127.0.0.1:9050 user=alice password=secret
//   network lan direct bind=127.0.0.7
//
// clang-format off
// Example:
//   auto networks = std::make_shared<framekit::net::NetworkRegistry>();
//   FRAMEKIT_RETURN_IF_ERROR(
//       networks->Add(framekit::net::Network::Socks5("tor", "127.0.0.1", 9050)));
//   FRAMEKIT_RETURN_IF_ERROR(
//       networks->Add(framekit::net::Network::Direct("lan").WithBindAddress("127.0.0.7")));
//   networks->Contains("tor");            // true
//   networks->Find("lan")->bind_address;  // "127.0.0.7"
//
//   absl::StatusOr<framekit::net::NetworkConfig> config =
//       framekit::net::ParseNetworkConfig("default = tor\nnetwork tor socks5 127.0.0.1:9050\n");
// clang-format on
#ifndef FRAMEKIT_NET_NETWORK_H_
#define FRAMEKIT_NET_NETWORK_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace framekit::net {

// The reserved selection meaning "no overlay": never a network id.
inline constexpr std::string_view kClearnet = "clearnet";
// Longest network id accepted.
inline constexpr std::size_t kMaxNetworkIdLength = 64;

// Whether `id` is a valid network id: 1 to 64 characters, each a lower-case ASCII letter, a
// digit, '.', '_' or '-', and not the reserved "clearnet".
bool IsValidNetworkId(std::string_view id);

// Whether `address` is a numeric IPv4 (dotted quad) or IPv6 address, as accepted for a bind
// address. Host names are refused: a bind address must not need a DNS lookup.
bool IsValidIpAddress(std::string_view address);

// Whether `host` is acceptable as a SOCKS5 proxy host: a numeric IP address, or a DNS name of
// 1 to 253 characters of letters, digits, '-' and '.' (no empty labels).
bool IsValidHost(std::string_view host);

// One network. Build with the factories and the With* methods; Add() validates.
//
// Thread-safety: a plain value type (thread-compatible).
struct Network {
  enum class Kind { kDirect, kSocks5 };

  // A direct (clearnet) route: connections go straight to the destination.
  static Network Direct(std::string id);
  // A direct route whose connections are bound to the source address `bind_address`.
  static Network Direct(std::string id, std::string bind_address);
  // An overlay reached through the SOCKS5 proxy at host:port. Destination names are sent to
  // the proxy unresolved (socks5h).
  static Network Socks5(std::string id, std::string host, std::uint16_t port);
  // As above, authenticating to the proxy with username/password (RFC 1929).
  static Network Socks5(std::string id, std::string host, std::uint16_t port, std::string username,
                        std::string password);

  // Builder-style setters; they return the network for chaining.
  Network& WithBindAddress(std::string address) &;
  Network&& WithBindAddress(std::string address) &&;
  Network& WithCredentials(std::string user, std::string pass) &;
  Network&& WithCredentials(std::string user, std::string pass) &&;

  // "direct" or "socks5".
  std::string_view kind_name() const;

  friend bool operator==(const Network&, const Network&) = default;

  std::string id;
  Kind kind = Kind::kDirect;
  std::string bind_address;  // kDirect: source address to bind; empty for the default
  std::string proxy_host;    // kSocks5
  std::uint16_t proxy_port = 0;
  std::string username;  // kSocks5: empty for no authentication
  std::string password;
};

// Whether a call may go out with no overlay.
enum class ClearnetPolicy {
  kDeny,   // a call with no network selected does not connect; `network=clearnet` is refused
  kAllow,  // a call with no network, or with `network=clearnet`, connects directly
};

// The networks of one application, by id, and its clearnet policy.
//
// Thread-safety: thread-compatible. Fill it at boot, then share it as
// `std::shared_ptr<const NetworkRegistry>`: const methods may run concurrently.
class NetworkRegistry {
 public:
  explicit NetworkRegistry(ClearnetPolicy clearnet = ClearnetPolicy::kDeny) : clearnet_(clearnet) {}

  // Adds `network`. InvalidArgument when the id is malformed (see IsValidNetworkId), a bind
  // address is not a numeric IP address, a SOCKS5 host is malformed or its port is 0, a
  // password is given without a username, or a direct network carries proxy settings;
  // AlreadyExists for an id added already.
  absl::Status Add(Network network);
  // Whether a network with this id was added.
  bool Contains(std::string_view id) const { return Find(id) != nullptr; }
  // The network with this id, or nullptr. The pointer stays valid while the registry lives
  // and is not modified.
  const Network* Find(std::string_view id) const;

  ClearnetPolicy clearnet_policy() const { return clearnet_; }
  bool clearnet_allowed() const { return clearnet_ == ClearnetPolicy::kAllow; }
  void set_clearnet_policy(ClearnetPolicy policy) { clearnet_ = policy; }

  // Ids in the order they were added.
  const std::vector<std::string>& ids() const { return ids_; }
  std::size_t size() const { return ids_.size(); }

 private:
  absl::flat_hash_map<std::string, Network> networks_;
  std::vector<std::string> ids_;
  ClearnetPolicy clearnet_;
};

// The network configuration of an application, as the network boot component reads it.
struct NetworkConfig {
  std::vector<Network> networks;
  std::string app_default;  // empty: no default
  ClearnetPolicy clearnet = ClearnetPolicy::kDeny;

  friend bool operator==(const NetworkConfig&, const NetworkConfig&) = default;
};

// Parses the configuration text described in the file comment. InvalidArgument naming the
// line and the key (`line 3: key "clearnet": expected allow or deny, got "maybe"`) for a
// malformed line, an unknown key or option, a repeated setting, or a network Add() would
// refuse (including a duplicate id). The default is not checked against the networks here;
// BuildNetworkRegistry and RegisterNetworkOverlay do that.
absl::StatusOr<NetworkConfig> ParseNetworkConfig(std::string_view text);

// The configuration as text that ParseNetworkConfig reads back to an equal configuration.
std::string FormatNetworkConfig(const NetworkConfig& config);

// A registry holding the configuration's networks and policy. Errors as for Add(), plus
// NotFound (IsNetworkNotFound) when the app default names no configured network.
absl::StatusOr<std::shared_ptr<const NetworkRegistry>> BuildNetworkRegistry(
    const NetworkConfig& config);

}  // namespace framekit::net

#endif  // FRAMEKIT_NET_NETWORK_H_
