// RemoteNode: another node's functions as local Code. A function registered with
// `node->Function("name")` runs on the other node, and every local executor feature (options,
// resolvers, interceptors, bulkheads, records, fault policy) applies to it as to any Code.
//
// An outgoing call carries the frame's portable pairs ("framekit-frame-bin"), its trace as W3C
// "traceparent" (a new span id per call, the incoming flags) and "tracestate", the node's token
// for that peer, and the frame's remaining time as the gRPC deadline. It never waits for a
// connection past that deadline (wait-for-ready is off, and a frame without a deadline gets
// `default_timeout`), and the frame's cancellation cancels the call. One channel per node is reused
// by every call. It also carries its hop count ("framekit-hops", see HopsKey), which ends a
// loop of calls between nodes at the first server whose max_hops it exceeds.
//
// Example:
//   FRAMEKIT_ASSIGN_OR_RETURN(
//       std::shared_ptr<framekit::rpc::RemoteNode> node_b,
//       framekit::rpc::RemoteNode::Connect({.target = "127.0.0.1:50051",
//                                           .portable = portable_keys,
//                                           .peer_token = "s3cret"}));
//   // Calls of "lookup" here run "lookup" on node B, with the frame intact.
//   FRAMEKIT_RETURN_IF_ERROR(executor->Register("lookup", node_b->Function("lookup")));
#ifndef FRAMEKIT_RPC_REMOTE_H_
#define FRAMEKIT_RPC_REMOTE_H_

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/code.h"

namespace framekit::rpc {

// TLS to the peer, through gRPC's SSL credentials. The files are read and checked once, by
// RemoteNode::Connect.
struct ClientTls {
  // The CA certificates (PEM) the server's certificate must be signed by. Empty: gRPC's
  // default roots (the system's, or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
  std::string server_ca_file = {};
  // Mutual TLS: this node's certificate chain and its key (PEM), both or neither. The server
  // may trust this node by the certificate's identity (TrustedPeer::certificate_identity).
  std::string cert_chain_file = {};
  std::string private_key_file = {};
  // The name the server's certificate must carry when it is not the target's host (e.g. the
  // target is an IP address and the certificate names a host). Empty: the target's host.
  std::string server_name = {};
};

struct RemoteOptions {
  // gRPC target, e.g. "127.0.0.1:50051" or "dns:///node-b:50051".
  std::string target;
  // TLS (and mutual TLS) to the peer. nullopt: plaintext. A TLS node cannot talk to a
  // plaintext server, nor the reverse: the call fails with Unavailable within its deadline.
  std::optional<ClientTls> tls = std::nullopt;
  // Which pairs leave for this peer. nullptr: none (the trace id and the deadline still go).
  std::shared_ptr<const PortableKeys> portable = nullptr;
  // Sent as "framekit-peer-token" when non-empty: the token the peer trusts this node by.
  // NOTE: over a plaintext channel the token is readable on the network; use it with `tls`,
  // or on loopback or a private link.
  std::string peer_token = {};
  // The deadline of a call whose frame has none (> 0).
  std::chrono::milliseconds default_timeout{30000};
  // Longest wait for one connection attempt (> 0), and the longest reconnect backoff.
  std::chrono::milliseconds connect_timeout{2000};
  // Largest "framekit-frame-bin" value sent (bytes, > 0); a frame that encodes larger fails
  // the call with ResourceExhausted. gRPC's default limit for all metadata is 8 KiB.
  std::size_t max_frame_header_bytes = 4096;
  // Largest reply accepted (bytes, > 0).
  int max_message_bytes = 4 << 20;
};

// How a remote function is called.
enum class CallMode {
  kUnary,      // one reply with the whole output
  kStreaming,  // chunks reach the Sink as the remote function writes them
};

// One peer node and its channel.
//
// Thread-safety: thread-safe; any number of calls may run at once over the one channel.
class RemoteNode {
 public:
  // A node for `options.target`. No I/O happens here: the channel connects on first use.
  // InvalidArgument for an empty target, a non-positive timeout or limit, or a peer_token that
  // is not a header value (IsPeerToken, wire.h). For `tls`: NotFound for a file that does not
  // exist, InvalidArgument for one that cannot be read or is not PEM, a certificate without its
  // key (or the reverse) or a key that is not its certificate's, FailedPrecondition for this
  // node's certificate out of its validity period.
  static absl::StatusOr<std::shared_ptr<RemoteNode>> Connect(RemoteOptions options);
  ~RemoteNode();
  RemoteNode(const RemoteNode&) = delete;
  RemoteNode& operator=(const RemoteNode&) = delete;

  // Code that runs `function` on this node. The Code is preemptive: Run returns by the
  // frame's deadline and promptly after its cancellation, so the executor runs it on the
  // caller's thread. It holds the node (and its channel) alive.
  // Run fails with the remote status (code, message and payloads, an ExtensionPanic
  // included), DeadlineExceeded at the deadline, Cancelled when the frame was cancelled,
  // Unavailable when the peer cannot be reached, ResourceExhausted when the frame's pairs
  // exceed max_frame_header_bytes, InvalidArgument (before sending) for a `function` that is
  // not a function name (1-128 of [A-Za-z0-9_.-]), or the Sink's status when a Write failed.
  std::shared_ptr<dispatch::Code> Function(std::string function, CallMode mode = CallMode::kUnary);

  // The functions the peer serves, sorted; `frame` gives the deadline and cancellation.
  absl::StatusOr<std::vector<std::string>> List(const Frame& frame = Frame());

  const RemoteOptions& options() const;

  struct Impl;

 private:
  explicit RemoteNode(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;  // shared with the Code it makes
};

// How many calls between nodes the call that built this frame is, itself included (1 for a
// call from a node that was not serving one): set by Server from "framekit-hops" on the frames
// it builds; RemoteNode sends this + 1 on every call (1 from a frame without it). Servers refuse
// a call beyond their ServerOptions::max_hops, which ends a loop between nodes (A's function
// backed by B's, backed by A's) within that many hops. It never travels in "framekit-frame-bin":
// a peer sets it only through "framekit-hops".
const Key<std::int64_t>& HopsKey();

// The span id of the caller's span, taken from an incoming "traceparent" (16 lowercase hex
// digits): set by Server on the frames it builds, so that a handler can log the parent span.
const Key<std::string>& ParentSpanKey();

// The trace flags of an incoming "traceparent" (its last two hex digits as a number; bit 0 is
// "sampled"), set by Server; RemoteNode sends them on in the next hop's traceparent (01, sampled,
// when the frame has none: a trace started on this node).
const Key<std::int64_t>& TraceFlagsKey();

// The W3C "tracestate" that arrived with a valid traceparent, as ParseTraceState normalises it,
// set by Server; RemoteNode sends it on with the next hop's traceparent (only if it is valid:
// an application may set it too). Neither key travels in "framekit-frame-bin".
const Key<std::string>& TraceStateKey();

}  // namespace framekit::rpc

#endif  // FRAMEKIT_RPC_REMOTE_H_
