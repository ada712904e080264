// The server's arrival step as a pure function of the call's metadata, so that it can be tested
// and fuzzed without a gRPC server: identify the peer, filter and decode the pairs, read the
// trace, set the deadline.
#ifndef FRAMEKIT_RPC_INTERNAL_ACCEPT_H_
#define FRAMEKIT_RPC_INTERNAL_ACCEPT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>
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

// The frame headers a server decoded lately, each with the peer policy it was decoded under:
// a call whose frame header has the same bytes as an earlier call's, from a peer under the same
// policy, gets that call's decoded pairs without decoding them again (a host's calls mostly
// carry the same caller and the same few pairs). What is kept is what decoding the bytes under
// that policy gave: a header refused under one policy is refused again under it, whatever
// another policy accepted. Codecs are pure functions of their bytes (see PortableCodec), so a
// kept result is the one decoding again would give.
//
// Bounded: kSlots entries, each of a header of at most kMaxHeaderBytes (a longer one is decoded
// every time), chosen by a hash of the policy and the bytes; a new header takes the slot of the
// one before it. Memory: at most kSlots headers and their decoded pairs.
//
// Thread-safety: thread-safe; each slot has its own lock.
class FrameHeaderCache {
 public:
  static constexpr std::size_t kSlots = 64;
  static constexpr std::size_t kMaxHeaderBytes = 1024;

  struct Entry {
    Frame pairs;                    // the accepted pairs, inherited; no deadline, no scope
    std::size_t dropped_pairs = 0;  // pairs of the header the policy or the keys left out
  };

  // The entry of `header` decoded under `policy`, nullopt when none is kept.
  std::optional<Entry> Find(const rpc::PeerPolicy* policy, std::string_view header) const;
  // Keeps `entry` for `header` under `policy` (a header over kMaxHeaderBytes is not kept).
  void Insert(const rpc::PeerPolicy* policy, std::string_view header, Entry entry);

 private:
  struct Slot {
    mutable std::mutex mu;
    const rpc::PeerPolicy* policy = nullptr;  // null: empty
    std::string header;
    Entry entry;
  };
  static std::size_t SlotOf(const rpc::PeerPolicy* policy, std::string_view header);

  std::array<Slot, kSlots> slots_;
};

// Builds the parent frame of an incoming call from its metadata, the time left (nullopt: the
// call has none, and options.default_timeout applies) and the identities of the client
// certificate the TLS handshake verified (empty: none). Fails with Unauthenticated (unknown or
// repeated peer token, or a token whose peer names a certificate identity the call's
// certificate does not have), PermissionDenied (identity from a peer not allowed to assert it),
// InvalidArgument (a frame header that does not decode, or more than one; a "framekit-hops"
// that ParseHops refuses, or more than one) or FailedPrecondition (more hops than
// options.max_hops). A call without "framekit-hops" is hop 1. Counts nothing itself. With a
// `cache`, the frame header is looked up there first, and kept there once decoded.
absl::StatusOr<Accepted> AcceptFrame(const rpc::ServerOptions& options,
                                     std::span<const MetadataEntry> metadata,
                                     std::optional<Clock::duration> remaining,
                                     std::span<const std::string_view> certificate_identities = {},
                                     FrameHeaderCache* cache = nullptr);

}  // namespace framekit::rpc_internal

#endif  // FRAMEKIT_RPC_INTERNAL_ACCEPT_H_
