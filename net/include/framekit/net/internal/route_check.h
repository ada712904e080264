// The kernel's view of a connected socket, checked against the route its network promises.
#ifndef FRAMEKIT_NET_INTERNAL_ROUTE_CHECK_H_
#define FRAMEKIT_NET_INTERNAL_ROUTE_CHECK_H_

#include "absl/status/status.h"
#include "framekit/net/network.h"

namespace framekit::net_internal {

// Checks, with getpeername/getsockname rather than anything libcurl reports, that the
// connected socket `fd` takes the route `network` promises:
//  - a SOCKS5 network: the peer is the proxy (its port, and its address when the proxy host is
//    a numeric address);
//  - a direct network with a bind address: the local address is the bind address.
// Defence in depth behind the pinned libcurl options: should any library default or
// environment variable ever take the proxy out of the path, the dial fails here (Internal,
// naming the network, the expected and the actual endpoint) instead of leaking the connection.
// A direct network without a bind address has nothing to check.
absl::Status VerifyRoute(int fd, const net::Network& network);

}  // namespace framekit::net_internal

#endif  // FRAMEKIT_NET_INTERNAL_ROUTE_CHECK_H_
