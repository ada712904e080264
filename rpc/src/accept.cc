#include "framekit/rpc/internal/accept.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/ctx/caller.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/wire.h"

namespace framekit::rpc {

const Key<std::string>& ParentSpanKey() {
  static const Key<std::string> key{"framekit.rpc.parent_span"};
  return key;
}

}  // namespace framekit::rpc

namespace framekit::rpc_internal {
namespace {

// Equal strings, in time that depends on the lengths only.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

// The only value of header `name`, nullopt when absent; `*repeated` when it appears twice.
std::optional<std::string_view> Single(std::span<const MetadataEntry> metadata,
                                       std::string_view name, bool* repeated) {
  std::optional<std::string_view> out;
  *repeated = false;
  for (const auto& [key, value] : metadata) {
    if (key != name) continue;
    if (out.has_value()) *repeated = true;
    out = value;
  }
  return out;
}

absl::StatusOr<const rpc::PeerPolicy*> IdentifyPeer(const rpc::ServerOptions& options,
                                                    std::span<const MetadataEntry> metadata) {
  bool repeated = false;
  std::optional<std::string_view> token = Single(metadata, rpc::kPeerTokenHeader, &repeated);
  if (repeated) return absl::UnauthenticatedError("more than one peer token");
  if (!token.has_value()) return &options.anonymous;
  const rpc::PeerPolicy* found = nullptr;
  for (const rpc::TrustedPeer& peer : options.trusted) {  // no early exit: constant time
    if (ConstantTimeEquals(*token, peer.token)) found = &peer.policy;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown peer token");
  return found;
}

bool Accepts(const rpc::PeerPolicy& policy, std::string_view name) {
  return std::find(policy.accepted_keys.begin(), policy.accepted_keys.end(), name) !=
         policy.accepted_keys.end();
}

// The pairs of the frame header that `policy` accepts; identity from a peer that may not
// assert it is PermissionDenied.
absl::Status FilterPairs(const rpc::ServerOptions& options, const rpc::PeerPolicy& policy,
                         std::span<const MetadataEntry> metadata, PortableFrame& in,
                         std::size_t& dropped) {
  bool repeated = false;
  std::optional<std::string_view> header = Single(metadata, rpc::kFrameHeader, &repeated);
  if (repeated) return absl::InvalidArgumentError("more than one frame header");
  if (!header.has_value()) return absl::OkStatus();
  const PortableLimits limits =
      options.portable != nullptr ? options.portable->limits() : PortableLimits{};
  absl::StatusOr<rpc::WirePairs> pairs = rpc::DecodeFramePairs(*header, limits);
  if (!pairs.ok()) return pairs.status();
  const std::string_view caller = CallerKey().name();
  for (auto& [name, value] : *pairs) {
    if (name == caller) {
      if (!policy.identity) {
        return absl::PermissionDeniedError(
            absl::StrCat("peer \"", policy.name, "\" may not assert the caller identity"));
      }
    } else if (!Accepts(policy, name)) {
      ++dropped;
      continue;
    }
    if (options.portable == nullptr) {
      ++dropped;
      continue;
    }
    in.pairs.emplace_back(std::move(name), std::move(value));
  }
  return absl::OkStatus();
}

// The trace pairs from "traceparent" or "framekit-trace-id"; `bad` when one did not parse.
PairList ReadTrace(std::span<const MetadataEntry> metadata, bool& bad) {
  PairList out;
  bool repeated = false;
  if (std::optional<std::string_view> parent =
          Single(metadata, rpc::kTraceParentHeader, &repeated)) {
    absl::StatusOr<rpc::TraceParent> trace = rpc::ParseTraceParent(*parent);
    if (repeated || !trace.ok()) {
      bad = true;  // W3C: a malformed traceparent is ignored
      return out;
    }
    out.push_back(Pair::Of(dispatch::TraceIdKey(), std::move(trace->trace_id)));
    out.push_back(Pair::Of(rpc::ParentSpanKey(), std::move(trace->span_id)));
    return out;
  }
  if (std::optional<std::string_view> id = Single(metadata, rpc::kTraceIdHeader, &repeated)) {
    if (repeated || !rpc::IsTraceId(*id)) {
      bad = true;
      return out;
    }
    out.push_back(Pair::Of(dispatch::TraceIdKey(), std::string(*id)));
  }
  return out;
}

}  // namespace

absl::StatusOr<Accepted> AcceptFrame(const rpc::ServerOptions& options,
                                     std::span<const MetadataEntry> metadata,
                                     std::optional<Clock::duration> remaining) {
  absl::StatusOr<const rpc::PeerPolicy*> peer = IdentifyPeer(options, metadata);
  if (!peer.ok()) return peer.status();
  Accepted out{.frame = Frame(), .peer = *peer};

  PortableFrame in;
  // default_timeout capped in milliseconds first: near its maximum it overflows nanoseconds.
  in.remaining = remaining.value_or(std::min<std::chrono::milliseconds>(
      options.default_timeout,
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::duration::max() / 2)));
  if (*in.remaining < Clock::duration::zero()) in.remaining = Clock::duration::zero();
  absl::Status filtered = FilterPairs(options, **peer, metadata, in, out.dropped_pairs);
  if (!filtered.ok()) return filtered;
  if (options.portable != nullptr) {
    absl::StatusOr<DecodedFrame> decoded = options.portable->Decode(in);
    if (!decoded.ok()) return decoded.status();
    out.frame = std::move(decoded->frame);
    out.dropped_pairs += decoded->dropped_unknown;
  } else {
    out.frame = Frame().WithTimeout(*in.remaining);
  }
  PairList trace = ReadTrace(metadata, out.bad_trace);
  // Fork: the trace arrives as inherited, like every value the node was sent.
  if (!trace.empty()) out.frame = out.frame.With(trace).Fork();
  return out;
}

}  // namespace framekit::rpc_internal
