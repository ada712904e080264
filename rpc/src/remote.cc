#include "framekit/rpc/remote.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <stop_token>
#include <string>
#include <utility>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/name.h"
#include "framekit/base/status_macros.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/rpc/internal/tls.h"
#include "framekit/rpc/wire.h"
#include "framekit_rpc.grpc.pb.h"

namespace framekit::rpc {

struct RemoteNode::Impl {
  RemoteOptions options;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Functions::Stub> stub;
};

namespace {

using Impl = RemoteNode::Impl;

// A far deadline is no deadline: gRPC gets at most this much.
constexpr auto kLongestTimeout = std::chrono::hours(24 * 365);
// W3C trace flags: sampled.
constexpr std::int64_t kSampledFlag = 0x01;

// A new random span id (W3C: 16 lowercase hex digits, not all zero), in place.
struct SpanId {
  SpanId() {
    thread_local absl::BitGen gen;
    std::uint64_t id = 0;
    while (id == 0) id = absl::Uniform<std::uint64_t>(gen);
    constexpr char kHex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; --i, id >>= 4) digits[i] = kHex[id & 0xf];
  }
  std::string_view view() const { return std::string_view(digits, sizeof digits); }
  char digits[16];
};

// A header's name as the std::string gRPC's AddMetadata takes, made once per name (most are
// longer than a short string's inline room: a temporary would allocate on every call).
template <const std::string_view& kName>
const std::string& HeaderName() {
  static const std::string name(kName);
  return name;
}

// Fills `ctx` for a call under `frame`: the remaining time as the gRPC deadline (never waiting
// for a connection past it), the portable pairs, the trace and the peer token.
absl::Status PrepareContext(const Impl& node, const Frame& frame, grpc::ClientContext& ctx) {
  if (frame.cancelled()) {
    if (frame.deadline().has_value() && Clock::now() >= *frame.deadline()) {
      return absl::DeadlineExceededError("the deadline passed before the remote call");
    }
    return absl::CancelledError("the call was cancelled before the remote call");
  }
  // Capped in milliseconds first: a default_timeout near its maximum overflows nanoseconds.
  Clock::duration remaining = std::min<std::chrono::milliseconds>(
      node.options.default_timeout,
      std::chrono::duration_cast<std::chrono::milliseconds>(kLongestTimeout));
  if (std::optional<Deadline> deadline = frame.deadline()) remaining = *deadline - Clock::now();
  remaining = std::min<Clock::duration>(remaining, kLongestTimeout);
  ctx.set_wait_for_ready(false);
  ctx.set_deadline(std::chrono::system_clock::now() +
                   std::chrono::duration_cast<std::chrono::system_clock::duration>(remaining));

  if (node.options.portable != nullptr) {
    // The trace and the hop count travel in their own headers.
    // Looked up once: the skip runs for every portable pair of every call.
    static const std::array<std::string_view, 5> kOwnHeaders = {
        dispatch::TraceIdKey().name(), ParentSpanKey().name(), TraceFlagsKey().name(),
        TraceStateKey().name(), HopsKey().name()};
    absl::StatusOr<std::string> header =
        EncodeFrameHeader(*node.options.portable, frame, [](std::string_view name) {
          return std::find(kOwnHeaders.begin(), kOwnHeaders.end(), name) != kOwnHeaders.end();
        });
    if (!header.ok()) return header.status();
    if (!header->empty()) {
      if (header->size() > node.options.max_frame_header_bytes) {
        return absl::ResourceExhaustedError(absl::StrCat("the frame's portable pairs take ",
                                                         header->size(), " bytes; the limit is ",
                                                         node.options.max_frame_header_bytes));
      }
      ctx.AddMetadata(HeaderName<kFrameHeader>(), *std::move(header));
    }
  }
  if (const std::string* trace = frame.Find(dispatch::TraceIdKey())) {
    if (IsW3CTraceId(*trace)) {
      // The incoming flags go on (sampled when the trace started here or came without them).
      const std::int64_t* flags = frame.Find(TraceFlagsKey());
      const auto sent_flags =
          static_cast<std::uint8_t>(flags != nullptr ? (*flags & 0xff) : kSampledFlag);
      ctx.AddMetadata(HeaderName<kTraceParentHeader>(),
                      FormatTraceParent(*trace, SpanId().view(), sent_flags));
      // A tracestate goes with it when it is valid (the application may have set it).
      if (const std::string* state = frame.Find(TraceStateKey()); state != nullptr) {
        absl::StatusOr<std::string> valid = ParseTraceState(*state);
        if (valid.ok() && !valid->empty()) {
          ctx.AddMetadata(HeaderName<kTraceStateHeader>(), *std::move(valid));
        }
      }
    } else if (IsTraceId(*trace)) {
      ctx.AddMetadata(HeaderName<kTraceIdHeader>(), *trace);
    }
  }
  if (!node.options.peer_token.empty()) {
    ctx.AddMetadata(HeaderName<kPeerTokenHeader>(), node.options.peer_token);
  }
  // The first hop sends no count: a server reads a call without one as hop 1, the count it
  // would carry (one header less on every call that starts at this node).
  if (const std::int64_t* hops = frame.Find(HopsKey()); hops != nullptr && *hops > 0) {
    ctx.AddMetadata(HeaderName<kHopsHeader>(), FormatHops(*hops));
  }
  return absl::OkStatus();
}

// The status of a finished call; a local cancellation reads as the frame's.
absl::Status FromGrpc(const grpc::Status& status, const Frame& frame) {
  if (status.error_code() == grpc::StatusCode::CANCELLED && frame.cancelled()) {
    return absl::CancelledError("the remote call was cancelled with its frame");
  }
  return FromWireStatus(static_cast<int>(status.error_code()), status.error_message(),
                        status.error_details());
}

class RemoteCode final : public dispatch::Code {
 public:
  RemoteCode(std::shared_ptr<Impl> node, std::string function, CallMode mode)
      : node_(std::move(node)), function_(std::move(function)), mode_(mode) {}

  bool preemptive() const override { return true; }

  absl::Status Run(const Frame& frame, std::string_view payload, dispatch::Sink& out,
                   dispatch::RunStats& stats) override {
    // A name no executor can serve never leaves: a non-UTF-8 one would not even parse there
    // (the request's function is a proto3 string).
    if (!base_internal::IsValidName(function_)) {
      return absl::InvalidArgumentError(base_internal::InvalidNameMessage("function", function_));
    }
    grpc::ClientContext ctx;
    if (absl::Status s = PrepareContext(*node_, frame, ctx); !s.ok()) return s;
    v1::InvokeRequest request;
    request.set_function(function_);
    request.set_payload(std::string(payload));
    // TryCancel is safe from any thread, before or during the call.
    std::stop_callback cancel(frame.stop_token(), [&ctx] { ctx.TryCancel(); });
    if (mode_ == CallMode::kUnary) {
      v1::InvokeReply reply;
      grpc::Status status = node_->stub->Invoke(&ctx, request, &reply);
      if (!status.ok()) return FromGrpc(status, frame);
      stats.output_bytes += reply.output().size();
      return out.Write(reply.output());
    }
    std::unique_ptr<grpc::ClientReader<v1::Chunk>> reader =
        node_->stub->InvokeStream(&ctx, request);
    v1::Chunk chunk;
    while (reader->Read(&chunk)) {
      stats.output_bytes += chunk.data().size();
      if (absl::Status s = out.Write(chunk.data()); !s.ok()) {
        ctx.TryCancel();
        reader->Finish();
        return s;
      }
    }
    return FromGrpc(reader->Finish(), frame);
  }

 private:
  const std::shared_ptr<Impl> node_;
  const std::string function_;
  const CallMode mode_;
};

absl::Status CheckOptions(const RemoteOptions& options) {
  if (options.target.empty()) return absl::InvalidArgumentError("empty target");
  if (options.default_timeout <= std::chrono::milliseconds::zero()) {
    return absl::InvalidArgumentError("default_timeout must be > 0");
  }
  if (options.connect_timeout <= std::chrono::milliseconds::zero()) {
    return absl::InvalidArgumentError("connect_timeout must be > 0");
  }
  if (options.max_frame_header_bytes == 0) {
    return absl::InvalidArgumentError("max_frame_header_bytes must be > 0");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes must be > 0");
  }
  if (!options.peer_token.empty() && !IsPeerToken(options.peer_token)) {
    return absl::InvalidArgumentError(
        "peer_token must be at most 1024 printable ASCII characters (a gRPC header value)");
  }
  return absl::OkStatus();
}

// The channel's credentials: plaintext, or TLS from the checked PEM files of `options.tls`.
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(
    const RemoteOptions& options) {
  if (!options.tls.has_value()) return grpc::InsecureChannelCredentials();
  const ClientTls& tls = *options.tls;
  grpc::SslCredentialsOptions ssl;
  if (!tls.server_ca_file.empty()) {
    FRAMEKIT_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                              rpc_internal::ReadPemFile("tls.server_ca_file", tls.server_ca_file));
    FRAMEKIT_RETURN_IF_ERROR(
        rpc_internal::CheckCertificates("tls.server_ca_file", ssl.pem_root_certs));
  }
  if (tls.cert_chain_file.empty() != tls.private_key_file.empty()) {
    return absl::InvalidArgumentError(
        "tls.cert_chain_file and tls.private_key_file go together: both or neither");
  }
  if (!tls.cert_chain_file.empty()) {
    FRAMEKIT_ASSIGN_OR_RETURN(
        ssl.pem_cert_chain, rpc_internal::ReadPemFile("tls.cert_chain_file", tls.cert_chain_file));
    FRAMEKIT_ASSIGN_OR_RETURN(ssl.pem_private_key, rpc_internal::ReadPemFile("tls.private_key_file",
                                                                             tls.private_key_file));
    FRAMEKIT_RETURN_IF_ERROR(rpc_internal::CheckKeyPair(
        "tls.cert_chain_file", ssl.pem_cert_chain, "tls.private_key_file", ssl.pem_private_key));
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::shared_ptr<RemoteNode>> RemoteNode::Connect(RemoteOptions options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  FRAMEKIT_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                            Credentials(options));
  auto impl = std::make_shared<Impl>();
  impl->options = std::move(options);
  grpc::ChannelArguments args;
  const int connect_ms =
      static_cast<int>(std::min<std::int64_t>(impl->options.connect_timeout.count(), INT32_MAX));
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, connect_ms);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, connect_ms);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, std::min(connect_ms, 100));
  args.SetMaxReceiveMessageSize(impl->options.max_message_bytes);
  // One channel per node object: gRPC would otherwise share subchannels between channels with
  // equal arguments, and a node's connection settings are its own.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  if (impl->options.tls.has_value() && !impl->options.tls->server_name.empty()) {
    args.SetSslTargetNameOverride(impl->options.tls->server_name);
  }
  impl->channel = grpc::CreateCustomChannel(impl->options.target, std::move(credentials), args);
  impl->stub = v1::Functions::NewStub(impl->channel);
  return std::shared_ptr<RemoteNode>(new RemoteNode(std::move(impl)));
}

RemoteNode::RemoteNode(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteNode::~RemoteNode() = default;

std::shared_ptr<dispatch::Code> RemoteNode::Function(std::string function, CallMode mode) {
  return std::make_shared<RemoteCode>(impl_, std::move(function), mode);
}

absl::StatusOr<std::vector<std::string>> RemoteNode::List(const Frame& frame) {
  grpc::ClientContext ctx;
  if (absl::Status s = PrepareContext(*impl_, frame, ctx); !s.ok()) return s;
  std::stop_callback cancel(frame.stop_token(), [&ctx] { ctx.TryCancel(); });
  v1::ListReply reply;
  grpc::Status status = impl_->stub->List(&ctx, v1::ListRequest(), &reply);
  if (!status.ok()) return FromGrpc(status, frame);
  return std::vector<std::string>(reply.functions().begin(), reply.functions().end());
}

const RemoteOptions& RemoteNode::options() const { return impl_->options; }

}  // namespace framekit::rpc
