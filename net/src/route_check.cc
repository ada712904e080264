#include "framekit/net/internal/route_check.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace framekit::net_internal {
namespace {

struct Endpoint {
  std::string address;  // numeric, as inet_ntop prints it
  std::uint16_t port = 0;
};

// The endpoint of `fd` from getpeername (peer) or getsockname (local); nullopt on error.
std::optional<Endpoint> SocketEndpoint(int fd, bool peer) {
  sockaddr_storage storage{};
  socklen_t length = sizeof(storage);
  auto* addr = reinterpret_cast<sockaddr*>(&storage);
  if ((peer ? ::getpeername(fd, addr, &length) : ::getsockname(fd, addr, &length)) != 0) {
    return std::nullopt;
  }
  char text[INET6_ADDRSTRLEN] = {0};
  Endpoint out;
  if (storage.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&storage);
    inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
    out.port = ntohs(in->sin_port);
  } else if (storage.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&storage);
    inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text));
    out.port = ntohs(in6->sin6_port);
  } else {
    return std::nullopt;
  }
  out.address = text;
  return out;
}

// `address` in the canonical text inet_ntop prints ("::1" for "0:0::1"); empty when it is not
// a numeric address.
std::string CanonicalAddress(const std::string& address) {
  unsigned char bytes[sizeof(in6_addr)];
  char text[INET6_ADDRSTRLEN] = {0};
  if (inet_pton(AF_INET, address.c_str(), bytes) == 1) {
    return inet_ntop(AF_INET, bytes, text, sizeof(text)) != nullptr ? text : "";
  }
  if (inet_pton(AF_INET6, address.c_str(), bytes) == 1) {
    return inet_ntop(AF_INET6, bytes, text, sizeof(text)) != nullptr ? text : "";
  }
  return "";
}

absl::Status Mismatch(const net::Network& network, std::string_view what,
                      const std::string& expected, const Endpoint& actual) {
  return absl::InternalError(absl::StrCat(
      "network \"", network.id, "\": route check failed: the socket's ", std::string(what), " is ",
      actual.address, ":", actual.port, ", not ", expected, "; the connection was closed"));
}

}  // namespace

absl::Status VerifyRoute(int fd, const net::Network& network) {
  const bool socks = network.kind == net::Network::Kind::kSocks5;
  if (!socks && network.bind_address.empty()) return absl::OkStatus();
  const std::optional<Endpoint> actual = SocketEndpoint(fd, /*peer=*/socks);
  if (!actual) {
    return absl::InternalError(
        absl::StrCat("network \"", network.id, "\": route check failed: cannot read the socket's ",
                     socks ? "peer" : "local", " address: ", std::strerror(errno)));
  }
  if (socks) {
    const std::string proxy = CanonicalAddress(network.proxy_host);
    const std::string expected =
        absl::StrCat("the SOCKS5 proxy ", network.proxy_host, ":", network.proxy_port);
    if (actual->port != network.proxy_port || (!proxy.empty() && actual->address != proxy)) {
      return Mismatch(network, "peer", expected, *actual);
    }
    return absl::OkStatus();
  }
  if (actual->address != CanonicalAddress(network.bind_address)) {
    return Mismatch(network, "local address",
                    absl::StrCat("the bind address ", network.bind_address), *actual);
  }
  return absl::OkStatus();
}

}  // namespace framekit::net_internal
