// The server's arrival step as a pure function of the call's metadata, so that it can be tested
// and fuzzed without a gRPC server: identify the peer, filter and decode the pairs, read the
// trace, set the deadline.
#ifndef FRAMEKIT_RPC_INTERNAL_ACCEPT_H_
#define FRAMEKIT_RPC_INTERNAL_ACCEPT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "framekit/ctx/frame.h"
#include "framekit/rpc/server.h"

namespace framekit::rpc_internal {

using MetadataEntry = std::pair<std::string_view, std::string_view>;

struct Accepted {
  Frame frame;                    // the parent frame: pairs kInherited, deadline set
  const rpc::PeerPolicy* peer;    // the policy applied (points into the options)
  std::size_t dropped_pairs = 0;  // not accepted by the policy, or unknown keys
  bool bad_trace = false;         // a trace header that did not parse (ignored)
  std::int64_t hops = 1;          // this call's hop count (HopsKey), also on the frame
};

// Builds the parent frame of an incoming call from its metadata, the time left (nullopt: the
// call has none, and options.default_timeout applies) and the identities of the client
// certificate the TLS handshake verified (empty: none). Fails with Unauthenticated (unknown or
// repeated peer token, or a token whose peer names a certificate identity the call's
// certificate does not have), PermissionDenied (identity from a peer not allowed to assert it),
// InvalidArgument (a frame header that does not decode, or more than one; a "framekit-hops"
// that ParseHops refuses, or more than one) or FailedPrecondition (more hops than
// options.max_hops). A call without "framekit-hops" is hop 1. Counts nothing itself.
absl::StatusOr<Accepted> AcceptFrame(const rpc::ServerOptions& options,
                                     std::span<const MetadataEntry> metadata,
                                     std::optional<Clock::duration> remaining,
                                     std::span<const std::string_view> certificate_identities = {});

}  // namespace framekit::rpc_internal

#endif  // FRAMEKIT_RPC_INTERNAL_ACCEPT_H_
