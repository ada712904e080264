#include "framekit/rpc/internal/accept.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/hash/hash.h"
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

const Key<std::int64_t>& TraceFlagsKey() {
  static const Key<std::int64_t> key{"framekit.rpc.trace_flags"};
  return key;
}

const Key<std::int64_t>& HopsKey() {
  static const Key<std::int64_t> key{"framekit.rpc.hops"};
  return key;
}

const Key<std::string>& TraceStateKey() {
  static const Key<std::string> key{"framekit.rpc.trace_state"};
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

bool HasIdentity(std::span<const std::string_view> identities, std::string_view wanted) {
  return std::find(identities.begin(), identities.end(), wanted) != identities.end();
}

// The trusted peer a call comes from (see Server, step 1), or the anonymous policy.
absl::StatusOr<const rpc::PeerPolicy*> IdentifyPeer(
    const rpc::ServerOptions& options, std::span<const MetadataEntry> metadata,
    std::span<const std::string_view> certificate_identities) {
  bool repeated = false;
  std::optional<std::string_view> token = Single(metadata, rpc::kPeerTokenHeader, &repeated);
  if (repeated) return absl::UnauthenticatedError("more than one peer token");
  if (!token.has_value()) {
    // A certificate alone names only a peer that has no token: a token is never optional.
    for (const rpc::TrustedPeer& peer : options.trusted) {
      if (peer.token.empty() && HasIdentity(certificate_identities, peer.certificate_identity)) {
        return &peer.policy;
      }
    }
    return &options.anonymous;
  }
  const rpc::TrustedPeer* found = nullptr;
  for (const rpc::TrustedPeer& peer : options.trusted) {  // no early exit: constant time
    if (!peer.token.empty() && ConstantTimeEquals(*token, peer.token)) found = &peer;
  }
  if (found == nullptr) return absl::UnauthenticatedError("unknown peer token");
  if (!found->certificate_identity.empty() &&
      !HasIdentity(certificate_identities, found->certificate_identity)) {
    return absl::UnauthenticatedError(
        absl::StrCat("the token of peer \"", found->policy.name,
                     "\" came without that peer's client certificate"));
  }
  return &found->policy;
}

bool Accepts(const rpc::PeerPolicy& policy, std::string_view name) {
  return std::find(policy.accepted_keys.begin(), policy.accepted_keys.end(), name) !=
         policy.accepted_keys.end();
}

// The pairs of `header` that `policy` accepts, decoded into an inherited frame; identity from a
// peer that may not assert it is PermissionDenied.
absl::StatusOr<FrameHeaderCache::Entry> DecodeHeader(const rpc::ServerOptions& options,
                                                     const rpc::PeerPolicy& policy,
                                                     std::string_view header) {
  FrameHeaderCache::Entry out;
  const PortableLimits limits =
      options.portable != nullptr ? options.portable->limits() : PortableLimits{};
  absl::StatusOr<rpc::WirePairViews> pairs = rpc::DecodeFramePairViews(header, limits);
  if (!pairs.ok()) return pairs.status();
  const std::string_view caller = CallerKey().name();
  const std::string_view hops = rpc::HopsKey().name();
  rpc::WirePairViews accepted;
  for (const auto& [name, value] : *pairs) {
    if (name == hops) {  // only "framekit-hops" sets it: a peer may not lower it here
      ++out.dropped_pairs;
      continue;
    }
    if (name == caller) {
      if (!policy.identity) {
        return absl::PermissionDeniedError(
            absl::StrCat("peer \"", policy.name, "\" may not assert the caller identity"));
      }
    } else if (!Accepts(policy, name)) {
      ++out.dropped_pairs;
      continue;
    }
    if (options.portable == nullptr) {
      ++out.dropped_pairs;
      continue;
    }
    accepted.emplace_back(name, value);
  }
  if (accepted.empty()) return out;  // also without portable keys: nothing was accepted
  absl::StatusOr<DecodedFrame> decoded = options.portable->DecodeView(
      {.pairs = std::span<const PortablePairView>(accepted.data(), accepted.size()),
       .remaining = std::nullopt});
  if (!decoded.ok()) return decoded.status();
  out.pairs = std::move(decoded->frame);
  out.dropped_pairs += decoded->dropped_unknown;
  return out;
}

// The trace pairs from "traceparent" (with its flags and any "tracestate") or
// "framekit-trace-id"; `bad` when one did not parse.
PairList ReadTrace(std::span<const MetadataEntry> metadata, bool& bad) {
  PairList out;
  bool repeated = false;
  if (std::optional<std::string_view> parent =
          Single(metadata, rpc::kTraceParentHeader, &repeated)) {
    absl::StatusOr<rpc::TraceParent> trace = rpc::ParseTraceParent(*parent);
    if (repeated || !trace.ok()) {
      bad = true;  // W3C: a malformed traceparent is ignored, and its tracestate with it
      return out;
    }
    out.push_back(Pair::Of(dispatch::TraceIdKey(), std::move(trace->trace_id)));
    out.push_back(Pair::Of(rpc::ParentSpanKey(), std::move(trace->span_id)));
    out.push_back(Pair::Of(rpc::TraceFlagsKey(), std::int64_t{trace->flags}));
    // Repeated tracestate headers form one list, in order (as HTTP joins them).
    std::string state;
    bool any = false;
    for (const auto& [key, value] : metadata) {
      if (key != rpc::kTraceStateHeader) continue;
      if (any) state.push_back(',');
      state.append(value);
      any = true;
    }
    if (any) {
      absl::StatusOr<std::string> parsed = rpc::ParseTraceState(state);
      if (!parsed.ok()) {
        bad = true;  // W3C: an invalid tracestate is dropped; the traceparent still holds
      } else if (!parsed->empty()) {
        out.push_back(Pair::Of(rpc::TraceStateKey(), *std::move(parsed)));
      }
    }
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

// The call's hop count from "framekit-hops" (1 without it), refused beyond options.max_hops.
absl::StatusOr<std::int64_t> ReadHops(const rpc::ServerOptions& options,
                                      std::span<const MetadataEntry> metadata) {
  bool repeated = false;
  std::optional<std::string_view> header = Single(metadata, rpc::kHopsHeader, &repeated);
  if (repeated) return absl::InvalidArgumentError("more than one framekit-hops header");
  if (!header.has_value()) return 1;
  absl::StatusOr<std::int64_t> hops = rpc::ParseHops(*header);
  if (!hops.ok()) return hops.status();
  if (*hops > options.max_hops) {
    return absl::FailedPreconditionError(
        absl::StrCat("refused: the call has crossed ", *hops,
                     " calls between nodes (framekit-hops), more than this node's max_hops of ",
                     options.max_hops, "; a loop of remote functions between nodes?"));
  }
  return *hops;
}

}  // namespace

absl::StatusOr<Accepted> AcceptFrame(const rpc::ServerOptions& options,
                                     std::span<const MetadataEntry> metadata,
                                     std::optional<Clock::duration> remaining,
                                     std::span<const std::string_view> certificate_identities,
                                     FrameHeaderCache* cache) {
  absl::StatusOr<const rpc::PeerPolicy*> peer =
      IdentifyPeer(options, metadata, certificate_identities);
  if (!peer.ok()) return peer.status();
  Accepted out{.frame = Frame(), .peer = *peer};
  absl::StatusOr<std::int64_t> hops = ReadHops(options, metadata);
  if (!hops.ok()) return hops.status();
  out.hops = *hops;

  // default_timeout capped in milliseconds first: near its maximum it overflows nanoseconds.
  Clock::duration remaining_time = remaining.value_or(std::min<std::chrono::milliseconds>(
      options.default_timeout,
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::duration::max() / 2)));
  if (remaining_time < Clock::duration::zero()) remaining_time = Clock::duration::zero();

  Frame pairs;  // the header's accepted pairs, inherited
  bool repeated = false;
  std::optional<std::string_view> header = Single(metadata, rpc::kFrameHeader, &repeated);
  if (repeated) return absl::InvalidArgumentError("more than one frame header");
  if (header.has_value()) {
    std::optional<FrameHeaderCache::Entry> kept =
        cache != nullptr ? cache->Find(*peer, *header) : std::nullopt;
    if (!kept.has_value()) {
      absl::StatusOr<FrameHeaderCache::Entry> decoded = DecodeHeader(options, **peer, *header);
      if (!decoded.ok()) return decoded.status();
      if (cache != nullptr) cache->Insert(*peer, *header, *decoded);
      kept = *std::move(decoded);
    }
    pairs = std::move(kept->pairs);
    out.dropped_pairs = kept->dropped_pairs;
  }
  // The trace and the hop count arrive as inherited, like every value the node was sent (and
  // over the header's pairs: the trace headers are the trace).
  PairList trace = ReadTrace(metadata, out.bad_trace);
  trace.push_back(Pair::Of(rpc::HopsKey(), out.hops));
  out.frame = pairs.With(std::move(trace)).WithTimeout(remaining_time).Fork();
  return out;
}

std::optional<FrameHeaderCache::Entry> FrameHeaderCache::Find(const rpc::PeerPolicy* policy,
                                                              std::string_view header) const {
  if (header.size() > kMaxHeaderBytes) return std::nullopt;
  const Slot& slot = slots_[SlotOf(policy, header)];
  std::lock_guard<std::mutex> lock(slot.mu);
  if (slot.policy != policy || slot.header != header) return std::nullopt;
  return slot.entry;
}

void FrameHeaderCache::Insert(const rpc::PeerPolicy* policy, std::string_view header, Entry entry) {
  if (header.size() > kMaxHeaderBytes) return;
  Slot& slot = slots_[SlotOf(policy, header)];
  Entry old;  // released outside the lock
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.policy = policy;
  slot.header.assign(header);
  old = std::exchange(slot.entry, std::move(entry));
}

std::size_t FrameHeaderCache::SlotOf(const rpc::PeerPolicy* policy, std::string_view header) {
  return absl::HashOf(policy, absl::string_view(header.data(), header.size())) % kSlots;
}

}  // namespace framekit::rpc_internal
