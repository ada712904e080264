// Fuzzes what a node reads from a call's metadata before any function runs: the frame header,
// the trace headers (traceparent, tracestate), the peer token, the hop count and the status
// details, through the server's arrival step (AcceptFrame) and the wire decoders. Properties: no
// crash; AcceptFrame fails only with Unauthenticated, PermissionDenied, InvalidArgument or
// FailedPrecondition (only for one well-formed hop count beyond max_hops); an accepted frame
// holds only inherited values, a caller only from a peer allowed to assert one, a tracestate only
// in its normal form, a hop count from 0 to max_hops (1 without the header), and a deadline no
// later than the time the call had left; a parsed hop count prints back to its header;
// a decoded frame header re-encodes to the same bytes, and the borrowing decoder agrees with the
// copying one; a parsed traceparent formats back to its first 55 characters; a parsed tracestate
// is at most 512 characters and parses to itself; a trusted peer's policy applies only when its
// token was presented and its certificate identity verified; the server's frame header cache,
// kept across inputs, changes no outcome.
//
// Input: records of [1 byte header selector][2 bytes little-endian length][value]; the first
// byte picks the time left (none, or 0-254 ms). One selector adds the value to the identities
// the TLS handshake verified instead of to the metadata.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/portable.h"
#include "framekit/rpc/internal/accept.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"
#include "framekit/rpc/wire.h"

namespace {

inline const framekit::Key<std::string> kTenant{"app.tenant"};
inline const framekit::Key<std::int64_t> kQuota{"app.quota"};
inline const framekit::Key<bool> kDebug{"app.debug"};
inline const framekit::Key<double> kWeight{"app.weight"};

const framekit::rpc::ServerOptions& Options() {
  static const framekit::rpc::ServerOptions* options = [] {
    auto portable = std::make_shared<framekit::PortableKeys>(
        framekit::PortableLimits{.max_pairs = 16, .max_value_bytes = 512});
    (void)portable->Add(kTenant);
    (void)portable->Add(kQuota);
    (void)portable->Add(kDebug);
    (void)portable->Add(kWeight);
    (void)portable->Add(framekit::CallerKey());
    auto* o = new framekit::rpc::ServerOptions;
    o->portable = portable;
    o->max_hops = 5;
    o->anonymous.accepted_keys = {"app.tenant", "app.quota"};
    o->trusted.push_back(
        {.token = "tok",
         .policy = {
             .name = "peer", .accepted_keys = {"app.debug", "app.weight"}, .identity = true}});
    // Recognised by the certificate alone, and a token pinned to a certificate.
    o->trusted.push_back({.certificate_identity = "spiffe://n/a",
                          .policy = {.name = "cert", .accepted_keys = {"app.debug"}}});
    o->trusted.push_back(
        {.token = "pin",
         .certificate_identity = "node-b",
         .policy = {.name = "pinned", .accepted_keys = {"app.weight"}, .identity = true}});
    return o;
  }();
  return *options;
}

// Not a header: the selector that adds a verified certificate identity.
constexpr std::string_view kIdentitySlot = "(verified identity)";

constexpr std::string_view kHeaders[] = {framekit::rpc::kFrameHeader,
                                         framekit::rpc::kTraceParentHeader,
                                         framekit::rpc::kTraceIdHeader,
                                         framekit::rpc::kPeerTokenHeader,
                                         "user-agent",
                                         framekit::rpc::kTraceStateHeader,
                                         kIdentitySlot,
                                         framekit::rpc::kHopsHeader};

// A trusted peer's policy was applied only to a call that presented its token and whose
// handshake verified its certificate identity (each where the peer names one).
void CheckPeer(const framekit::rpc_internal::Accepted& in,
               std::span<const framekit::rpc_internal::MetadataEntry> metadata,
               std::span<const std::string_view> identities) {
  for (const framekit::rpc::TrustedPeer& peer : Options().trusted) {
    if (in.peer != &peer.policy) continue;
    if (!peer.token.empty() &&
        std::find(metadata.begin(), metadata.end(),
                  framekit::rpc_internal::MetadataEntry(framekit::rpc::kPeerTokenHeader,
                                                        peer.token)) == metadata.end()) {
      std::abort();
    }
    if (!peer.certificate_identity.empty() &&
        std::find(identities.begin(), identities.end(), peer.certificate_identity) ==
            identities.end()) {
      std::abort();
    }
  }
}

void CheckAccepted(const framekit::rpc_internal::Accepted& in,
                   std::optional<framekit::Clock::duration> remaining,
                   framekit::Clock::time_point before) {
  in.frame.ForEach([](const framekit::Pair&, framekit::ValueOrigin origin) {
    if (origin != framekit::ValueOrigin::kInherited) std::abort();
  });
  if (framekit::CallerOf(in.frame) != nullptr && !in.peer->identity) std::abort();
  if (!in.frame.deadline().has_value()) std::abort();
  const auto allowed = remaining.value_or(Options().default_timeout);
  if (*in.frame.deadline() > framekit::Clock::now() + allowed) std::abort();
  if (*in.frame.deadline() < before) std::abort();
  const std::int64_t* hops = in.frame.Find(framekit::rpc::HopsKey());
  if (hops == nullptr || *hops != in.hops || *hops < 0 || *hops > Options().max_hops) std::abort();
  if (const std::string* state = in.frame.Find(framekit::rpc::TraceStateKey())) {
    absl::StatusOr<std::string> again = framekit::rpc::ParseTraceState(*state);
    if (state->empty() || !again.ok() || *again != *state) std::abort();
  }
}

// A tracestate the parser returns is normal: short enough, and parsing it changes nothing.
void CheckTraceState(std::string_view value) {
  absl::StatusOr<std::string> state = framekit::rpc::ParseTraceState(value);
  if (!state.ok()) return;
  if (state->size() > framekit::rpc::kMaxTraceStateBytes) std::abort();
  absl::StatusOr<std::string> again = framekit::rpc::ParseTraceState(*state);
  if (!again.ok() || *again != *state) std::abort();
}

void CheckDecoders(std::string_view value) {
  absl::StatusOr<framekit::rpc::WirePairs> pairs =
      framekit::rpc::DecodeFramePairs(value, framekit::PortableLimits{});
  if (pairs.ok() && !value.empty() && framekit::rpc::EncodeFramePairs(*pairs) != value) {
    std::abort();
  }
  absl::StatusOr<framekit::rpc::WirePairViews> views =
      framekit::rpc::DecodeFramePairViews(value, framekit::PortableLimits{});
  if (views.status() != pairs.status()) std::abort();
  if (views.ok()) {
    if (views->size() != pairs->size()) std::abort();
    for (std::size_t i = 0; i < views->size(); ++i) {
      if ((*views)[i].first != (*pairs)[i].first || (*views)[i].second != (*pairs)[i].second) {
        std::abort();
      }
    }
  }
  CheckTraceState(value);
  absl::StatusOr<framekit::rpc::TraceParent> trace = framekit::rpc::ParseTraceParent(value);
  if (trace.ok() &&
      framekit::rpc::FormatTraceParent(trace->trace_id, trace->span_id, trace->flags) !=
          value.substr(0, 55) &&
      value.substr(0, 2) == "00") {
    std::abort();
  }
  absl::StatusOr<std::int64_t> hops = framekit::rpc::ParseHops(value);
  if (hops.ok()) {
    if (*hops < 0 || *hops > framekit::rpc::kMaxWireHops || absl::StrCat(*hops) != value) {
      std::abort();
    }
    absl::StatusOr<std::int64_t> next = framekit::rpc::ParseHops(framekit::rpc::FormatHops(*hops));
    if (!next.ok() || *next != std::min(*hops + 1, framekit::rpc::kMaxWireHops)) std::abort();
  }
  absl::Status status = framekit::rpc::FromWireStatus(13, "m", value);
  if (status.code() != absl::StatusCode::kInternal || status.message() != "m") std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::optional<framekit::Clock::duration> remaining;
  if (data[0] != 0xff) remaining = std::chrono::milliseconds(data[0]);
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::vector<framekit::rpc_internal::MetadataEntry> metadata;
  std::vector<std::string_view> identities;
  while (in.size() >= 3) {
    const std::string_view header =
        kHeaders[static_cast<unsigned char>(in[0]) % std::size(kHeaders)];
    const std::size_t n = static_cast<unsigned char>(in[1]) |
                          static_cast<std::size_t>(static_cast<unsigned char>(in[2])) << 8;
    in.remove_prefix(3);
    const std::string_view value = in.substr(0, n);
    in.remove_prefix(value.size());
    if (header == kIdentitySlot) {
      identities.push_back(value);
      continue;
    }
    metadata.emplace_back(header, value);
    CheckDecoders(value);
  }
  const auto before = framekit::Clock::now();
  absl::StatusOr<framekit::rpc_internal::Accepted> accepted =
      framekit::rpc_internal::AcceptFrame(Options(), metadata, remaining, identities);
  // The server's header cache (kept across inputs, like a server's across calls) changes
  // nothing: the same status, or the same frame, peer and counts.
  static framekit::rpc_internal::FrameHeaderCache cache;
  for (int pass = 0; pass < 2; ++pass) {  // the first may fill the slot, the second reads it
    absl::StatusOr<framekit::rpc_internal::Accepted> cached =
        framekit::rpc_internal::AcceptFrame(Options(), metadata, remaining, identities, &cache);
    if (cached.ok() != accepted.ok()) std::abort();
    if (!cached.ok()) {
      if (cached.status() != accepted.status()) std::abort();
      continue;
    }
    if (cached->frame.DebugString() != accepted->frame.DebugString() ||
        cached->peer != accepted->peer || cached->dropped_pairs != accepted->dropped_pairs ||
        cached->bad_trace != accepted->bad_trace || cached->hops != accepted->hops) {
      std::abort();
    }
  }
  if (accepted.ok()) {
    CheckAccepted(*accepted, remaining, before);
    CheckPeer(*accepted, metadata, identities);
    return 0;
  }
  switch (accepted.status().code()) {
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kInvalidArgument:
      return 0;
    case absl::StatusCode::kFailedPrecondition: {
      // Only one well-formed hop count, beyond the limit.
      int seen = 0;
      for (const auto& [key, value] : metadata) {
        if (key != framekit::rpc::kHopsHeader) continue;
        ++seen;
        absl::StatusOr<std::int64_t> hops = framekit::rpc::ParseHops(value);
        if (!hops.ok() || *hops <= Options().max_hops) std::abort();
      }
      if (seen != 1) std::abort();
      return 0;
    }
    default:
      std::abort();
  }
}
