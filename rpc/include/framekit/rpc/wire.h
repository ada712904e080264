// How a frame crosses a gRPC call: the metadata framekit writes and reads, and the mapping of
// absl statuses to gRPC statuses and back. RemoteNode and Server use these; they are public so
// that other runtimes (and tests) can speak the same wire.
//
// On the wire, a call carries
//   "framekit-frame-bin"  the frame's portable pairs (PortableKeys::Encode), packed by
//                         EncodeFramePairs: version byte 1, then for each pair a 4-byte
//                         little-endian name length, the name, a 4-byte little-endian value
//                         length, the value (gRPC base64-encodes "-bin" values itself);
//   "traceparent"         the W3C trace context, when the frame's trace id is a W3C trace id
//                         (32 lowercase hex digits, not all zero); other trace ids travel as
//   "tracestate"          W3C vendor trace state, forwarded with "traceparent" (see
//                         ParseTraceState); the traceparent's flags are forwarded too;
//   "framekit-trace-id"   the trace id as it is (1-128 of [A-Za-z0-9._:-]);
//   "framekit-peer-token" the caller node's token, when it has one for this peer;
//   "framekit-hops"       how many calls between nodes this call is, itself included (the
//                         caller's HopsKey + 1, in decimal: see FormatHops and ParseHops); a
//                         server refuses a call beyond its max_hops (a loop between nodes);
//                         left out on the first hop (a frame without HopsKey), which a server
//                         reads as hop 1, as it reads a call without the header;
//   gRPC's own deadline   the frame's remaining time (gRPC sends it as "grpc-timeout", a
//                         duration: clocks of two nodes never meet).
// A status travels as gRPC's code (the numeric values agree) and message, and its payloads as
// "grpc-status-details-bin", a message wire-compatible with google.rpc.Status whose details
// are google.protobuf.Any (type URL = the absl payload's URL, value = its bytes).
//
// Example:
//   std::string header = framekit::rpc::EncodeFramePairs({{"app.tenant", "acme"}});
//   FRAMEKIT_ASSIGN_OR_RETURN(framekit::rpc::WirePairs pairs,
//                             framekit::rpc::DecodeFramePairs(header, {}));
//   // pairs == {{"app.tenant", "acme"}}
//   FRAMEKIT_ASSIGN_OR_RETURN(framekit::rpc::TraceParent trace,
//       framekit::rpc::ParseTraceParent(
//           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
//   // trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
#ifndef FRAMEKIT_RPC_WIRE_H_
#define FRAMEKIT_RPC_WIRE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "boost/container/small_vector.hpp"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/portable.h"

namespace framekit::rpc {

inline constexpr std::string_view kFrameHeader = "framekit-frame-bin";
inline constexpr std::string_view kTraceParentHeader = "traceparent";
inline constexpr std::string_view kTraceStateHeader = "tracestate";
inline constexpr std::string_view kTraceIdHeader = "framekit-trace-id";
inline constexpr std::string_view kPeerTokenHeader = "framekit-peer-token";
inline constexpr std::string_view kHopsHeader = "framekit-hops";

// The largest hop count on the wire: "framekit-hops" has at most 9 decimal digits.
inline constexpr std::int64_t kMaxWireHops = 999'999'999;

using WirePairs = std::vector<std::pair<std::string, std::string>>;
// Pairs borrowed from a header value: views into it, valid while it is.
using WirePairViews = boost::container::small_vector<PortablePairView, 8>;

// Packs (name, bytes) pairs into the "framekit-frame-bin" value (see the file comment).
std::string EncodeFramePairs(const WirePairs& pairs);

// The "framekit-frame-bin" value of `frame`'s portable pairs (PortableKeys::EncodeEach, so in
// name order), packed as EncodeFramePairs packs them, leaving out every pair whose name `skip`
// returns true for. Empty when no pair is left. The errors of PortableKeys::Encode.
absl::StatusOr<std::string> EncodeFrameHeader(const PortableKeys& portable, const Frame& frame,
                                              absl::FunctionRef<bool(std::string_view)> skip);

// Unpacks a "framekit-frame-bin" value. InvalidArgument for an unknown version byte, a
// truncated or over-long record, trailing bytes, or more pairs / longer names, values or total
// than `limits` allow. Never allocates more than the input's size. Duplicate names are left for
// PortableKeys::Decode to refuse.
absl::StatusOr<WirePairs> DecodeFramePairs(std::string_view bytes, const PortableLimits& limits);
// As DecodeFramePairs, without copying: the pairs are views into `bytes`.
absl::StatusOr<WirePairViews> DecodeFramePairViews(std::string_view bytes,
                                                   const PortableLimits& limits);

// A parsed W3C "traceparent" (version 00).
struct TraceParent {
  std::string trace_id;  // 32 lowercase hex digits, not all zero
  std::string span_id;   // 16 lowercase hex digits, not all zero: the caller's span
  std::uint8_t flags = 0;
};

// Parses a traceparent header. InvalidArgument for anything but version 00's exact layout
// ("00-" 32 hex "-" 16 hex "-" 2 hex, lowercase), an all-zero trace or span id, or version ff.
// A later version (01-fe) is read by its first 55 characters, as the W3C recommendation says.
absl::StatusOr<TraceParent> ParseTraceParent(std::string_view header);

// "00-TRACE-SPAN-FLAGS". Precondition: IsW3CTraceId(trace_id) and span_id is 16 lowercase hex.
std::string FormatTraceParent(std::string_view trace_id, std::string_view span_id,
                              std::uint8_t flags);

// The longest tracestate forwarded (W3C: at least 512 characters must be propagated).
inline constexpr std::size_t kMaxTraceStateBytes = 512;

// Parses a W3C "tracestate" value (repeated headers joined by "," first, as HTTP joins them):
// the list members with their optional whitespace removed, joined by ","; empty members are
// skipped. When the result exceeds kMaxTraceStateBytes, members longer than 128 characters are
// removed first, then members from the end, as W3C recommends. InvalidArgument for more than
// 32 members, a member that is not key=value in W3C's grammar, or a key that appears twice
// (a receiver then ignores the whole tracestate).
absl::StatusOr<std::string> ParseTraceState(std::string_view header);

// Whether `id` is a W3C trace id: 32 lowercase hex digits, not all zero.
bool IsW3CTraceId(std::string_view id);

// Whether `id` is a trace id the executor accepts (1-128 of [A-Za-z0-9._:-]), the grammar of
// "framekit-trace-id".
bool IsTraceId(std::string_view id);

// Whether `token` can be a "framekit-peer-token": 1-1024 printable ASCII characters (0x20-0x7E),
// what gRPC allows in a text header value. gRPC aborts the process on any other value.
bool IsPeerToken(std::string_view token);

// Parses a "framekit-hops" value: "0" or a decimal number without leading zeros, at most 9
// digits (0 to kMaxWireHops). InvalidArgument for anything else (a sign, a space, a leading
// zero, more digits), naming the header.
absl::StatusOr<std::int64_t> ParseHops(std::string_view header);

// The "framekit-hops" value of the next call from a frame whose hop count (HopsKey, remote.h)
// is `hops`: hops + 1, with a negative count read as 0 and the result capped at kMaxWireHops.
std::string FormatHops(std::int64_t hops);

// A status as it travels: gRPC's code, message and "grpc-status-details-bin" value.
struct WireStatus {
  int code = 0;
  std::string message;
  std::string details;  // empty when the status has no payload
};

// `status` for the wire: the same code and message; payloads packed into `details`.
WireStatus ToWireStatus(const absl::Status& status);

// The status a wire status stands for: a code outside 0-16 becomes Unknown, details that do
// not parse are ignored (the code and message are kept), and each detail becomes a payload
// under its type URL. Code 0 gives OK whatever the message.
absl::Status FromWireStatus(int code, std::string_view message, std::string_view details);

}  // namespace framekit::rpc

#endif  // FRAMEKIT_RPC_WIRE_H_
