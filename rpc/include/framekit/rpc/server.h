// Server: serves a FunctionExecutor's functions over gRPC (unary and server-streaming Invoke,
// List) with the caller's frame intact, under this node's own policy.
//
// On arrival a call's frame is rebuilt, never trusted:
//   1. the peer is identified: a "framekit-peer-token" header must match one of the trusted
//      peers' tokens (compared in constant time), and when that peer names a certificate
//      identity the call must come over mutual TLS from a client certificate with that
//      identity, or the call is refused with Unauthenticated; a call without a token comes
//      from the trusted peer that names its certificate's identity and no token, if any, and
//      otherwise from the anonymous peer;
//   2. the portable pairs of "framekit-frame-bin" are filtered by the peer's policy: a pair
//      whose key the policy does not accept is dropped and counted; the caller identity
//      (CallerKey) from a peer whose policy does not allow identity fails the call with
//      PermissionDenied (a claimed identity the node cannot believe is refused, not ignored);
//      the rest are decoded (PortableKeys::Decode) and arrive as ValueOrigin::kInherited.
//      The server keeps what its latest distinct headers (64, of up to 1 KiB each) decoded to,
//      each with the policy it was decoded under: a call repeating a header's bytes under the
//      same policy is not decoded again (a host's calls mostly carry the same caller and
//      pairs), so a codec's decode must be a pure function of its bytes (PortableCodec);
//   3. the trace id comes from "traceparent" (or "framekit-trace-id"); a malformed one is
//      ignored and counted, as W3C asks;
//   4. gRPC's deadline (the caller's remaining time) becomes the frame's deadline; a call with
//      no deadline gets `default_timeout`, so that every call can be cancelled (a deadline more
//      than a year away counts as none: gRPC reports "none" as a time far in the future);
//   5. the frame gets a cancellation scope that the client's cancellation (or the gRPC
//      deadline, or Shutdown) cancels;
//   6. the executor invokes the function with that frame as the parent: it forks it and
//      re-resolves through this node's own FrameResolvers, as for a local call. A unary call
//      that returns by its deadline (preemptive code, or any code under a deadline) runs on the
//      gRPC thread that delivered it (up to max_inline_calls at once); every other call runs on
//      one of the server's call threads.
// The default policy (anonymous peers, and trusted peers that name no keys) accepts the trace
// id and the deadline only. List arrives the same way (steps 1-4, the hop count, a slot of
// max_concurrent_calls): a call that would be refused is refused, and counted, for List too.
//
// Example:
//   framekit::rpc::ServerOptions options;
//   options.address = "127.0.0.1:0";  // any free port
//   options.portable = portable_keys;  // std::shared_ptr<const framekit::PortableKeys>
//   options.trusted.push_back({.token = "s3cret",
//                              .policy = {.name = "node-a",
//                                         .accepted_keys = {"app.tenant"},
//                                         .identity = true}});
//   // Mutual TLS: node B is trusted by its client certificate, no token needed.
//   options.tls = framekit::rpc::ServerTls{.cert_chain_file = "server.pem",
//                                          .private_key_file = "server.key",
//                                          .client_ca_file = "ca.pem"};
//   options.trusted.push_back({.certificate_identity = "spiffe://example.org/node-b",
//                              .policy = {.name = "node-b", .identity = true}});
//   FRAMEKIT_ASSIGN_OR_RETURN(std::unique_ptr<framekit::rpc::Server> server,
//                             framekit::rpc::Server::Start(*executor, std::move(options)));
//   int port = server->port();
#ifndef FRAMEKIT_RPC_SERVER_H_
#define FRAMEKIT_RPC_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/function_executor.h"

namespace framekit::rpc {

// What the node accepts from one peer, besides the trace id and the deadline (always accepted).
struct PeerPolicy {
  std::string name = "anonymous";               // for logs and counters
  std::vector<std::string> accepted_keys = {};  // portable key names accepted from this peer
  bool identity = false;                        // may assert the caller (CallerKey)
};

// A peer the application trusts, recognised by the token it presents, by the identity of its
// client certificate (mutual TLS, see ServerTls), or by both (then both must match). At least
// one of the two is set.
struct TrustedPeer {
  // Presented in "framekit-peer-token". Empty: the peer is recognised by its certificate only.
  // NOTE: without TLS the token crosses the network in clear text.
  std::string token = {};
  // The identity of the peer's client certificate, verified against ServerTls::client_ca_file:
  // one of its subject alternative names as gRPC reports them (a DNS name, a URI such as
  // "spiffe://example.org/node-a", an email address or an IP address), or its common name when
  // it has none. Empty: any certificate, or none. Needs ServerTls with a client_ca_file.
  std::string certificate_identity = {};
  PeerPolicy policy = {};
};

// TLS for the server's port, through gRPC's SSL credentials. The files are read and checked
// once, by Server::Start.
struct ServerTls {
  std::string cert_chain_file = {};   // the server's certificate chain (PEM), its own first
  std::string private_key_file = {};  // the key of that certificate (PEM)
  // Mutual TLS: the CA certificates (PEM) that sign the clients' certificates, which are then
  // verified during the handshake (a certificate of another CA, expired or not yet valid fails
  // it). Empty: clients present no certificate.
  std::string client_ca_file = {};
  // With client_ca_file: a client without a certificate fails the handshake. false: such a
  // client is served, as the anonymous peer or by its token (one that presents a certificate
  // still has it verified).
  bool require_client_certificate = true;
};

struct ServerOptions {
  // "host:port" to listen on; port 0 picks a free one (see Server::port()). The port is the
  // server's alone (no SO_REUSEPORT): an address another server, of this process or any other,
  // listens on already cannot be bound (Start fails with Unavailable).
  std::string address = "127.0.0.1:0";
  // TLS (and mutual TLS) on the port. nullopt: plaintext, where a peer token is readable by
  // anyone on the network (loopback or a private link only).
  std::optional<ServerTls> tls = std::nullopt;
  // The keys this node reads from the wire (names must match the callers'). nullptr: no pair
  // is decoded, whatever the policy.
  std::shared_ptr<const PortableKeys> portable = nullptr;
  // The policy of a caller that presents no token. It may not allow identity.
  PeerPolicy anonymous = {};
  std::vector<TrustedPeer> trusted = {};
  // The deadline of a call that arrives without one (> 0).
  std::chrono::milliseconds default_timeout{30000};
  // Calls run at once at most (> 0); more are refused with ResourceExhausted.
  int max_concurrent_calls = 64;
  // Unary calls run at once on gRPC's own threads at most (>= 0), without a hand-off to one of
  // the server's call threads: such a call returns by its frame's deadline and promptly after
  // its cancellation. Preemptive code (Code::preemptive(): Lua, a remote function) returns by
  // them itself; native code runs on the executor's worker, and the gRPC thread waits for it
  // no longer than that (every admitted call has a deadline: its own, or default_timeout). A
  // native call whose timeout is too large to be a deadline never runs inline. Beyond this
  // many, a call thread runs the call. 0: every call goes to a call thread. While an inline call
  // runs, its close (the client's cancellation, Shutdown) reaches its frame's scope within ~2 ms
  // (a watcher thread polls the running inline calls; it sleeps while none has run for a while);
  // its deadline is the frame's own. The process bounds them too, over all its servers (see
  // ProcessInlineLimit): a call beyond that bound runs on a call thread.
  int max_inline_calls = 1;
  // Largest request message accepted (bytes, > 0).
  int max_message_bytes = 4 << 20;
  // Calls between nodes a call may have crossed to arrive here, itself included (> 0): its
  // "framekit-hops" (see HopsKey, remote.h; a call without one is hop 1). A call beyond it is
  // refused at once with FailedPrecondition naming the count and the limit: a loop between
  // nodes (A's function backed by B's, backed by A's) ends there instead of holding a thread
  // on each node per hop until its deadline. FailedPrecondition, not ResourceExhausted: the
  // call fails the same way until the nodes' configuration changes, so it is not retried. A
  // malformed "framekit-hops" (ParseHops, wire.h) is refused with InvalidArgument.
  // NOTE: loop protection, not security: the count is the caller's word, and a hostile peer can
  // always send 0 (the node then counts on from there).
  int max_hops = 16;
};

// Counters, a snapshot of relaxed atomics.
struct ServerCounters {
  std::uint64_t calls = 0;              // calls that reached the executor
  std::uint64_t inline_calls = 0;       // of those, run on gRPC's own thread (max_inline_calls)
  std::uint64_t refused = 0;            // refused before the executor (any reason below)
  std::uint64_t unauthenticated = 0;    // an unknown peer token, or one from the wrong certificate
  std::uint64_t identity_rejected = 0;  // a caller identity from a peer not allowed to assert it
  std::uint64_t malformed = 0;      // a "framekit-frame-bin" or "framekit-hops" that did not decode
  std::uint64_t dropped_pairs = 0;  // pairs the peer's policy does not accept, or unknown keys
  std::uint64_t bad_trace = 0;      // a traceparent / framekit-trace-id that did not parse
  std::uint64_t hops_exceeded = 0;  // refused: more hops than max_hops (a loop between nodes?)
  std::uint64_t running = 0;        // calls admitted and not yet returned by the executor
};

// The most calls that run inline (ServerOptions::max_inline_calls) at once in this process,
// over all its servers: one less than the threads on which gRPC runs the callbacks of every
// call of the process (clamp(cores / 2, 2, 16) in gRPC 1.51), so that one is always free. While
// inline calls held all of them, no callback would run, not even the one that records a call's
// close: a client's cancellation would not reach an inline call blocked in a remote call of its
// own (a chain of nodes), nor would any new call start. Computed once; at least 1.
int ProcessInlineLimit();

// A running gRPC server over one executor.
//
// Thread-safety: thread-safe. Lifecycle: Start listens at once; Shutdown (or the destructor)
// stops accepting, cancels the calls in flight through their frames' scopes and waits for them.
// NOTE: the executor must outlive the server; destroy the server first.
class Server {
 public:
  // Starts serving `executor`. InvalidArgument for a trusted peer with neither a token nor a
  // certificate identity, a malformed (not IsPeerToken, wire.h) token, a token that repeats
  // another's, two trusted peers without a token that name the same certificate identity, a
  // certificate identity without ServerTls::client_ca_file, an
  // anonymous policy that allows identity, default_timeout <= 0, max_inline_calls < 0,
  // max_concurrent_calls <= 0, max_message_bytes <= 0 or max_hops <= 0. For `tls`: NotFound for a
  // file that does not exist, InvalidArgument for one that cannot be read or is not PEM, or a key
  // that is not its certificate's, FailedPrecondition for a server certificate out of its validity
  // period. Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(dispatch::FunctionExecutor& executor,
                                                       ServerOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The bound port.
  int port() const;
  // Refuses new calls, cancels the running ones after `grace` and waits for them. Idempotent.
  void Shutdown(std::chrono::milliseconds grace = std::chrono::milliseconds(500));
  ServerCounters counters() const;

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace framekit::rpc

#endif  // FRAMEKIT_RPC_SERVER_H_
