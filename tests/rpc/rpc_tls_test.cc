// TLS and mutual TLS between nodes: PEM files checked at start, handshakes that fail for the
// wrong reasons (plaintext against TLS, another CA, an expired or missing client certificate),
// and trust by client certificate identity instead of, or on top of, the peer token. The
// certificates are in certs/ (regenerate.sh says what each is).
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/rpc/internal/accept.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"
#include "framekit/rpc/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/rpc_support.h"
#include "support/status_matchers.h"

namespace framekit::rpc {
namespace {

using ::framekit::rpc_testing::Call;
using ::framekit::rpc_testing::kSlowdown;
using ::framekit::rpc_testing::kTenant;
using ::framekit::rpc_testing::Portable;
using ::framekit::rpc_testing::TestNode;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr char kNodeA[] = "spiffe://framekit.test/node-a";
constexpr char kNodeB[] = "spiffe://framekit.test/node-b";
constexpr char kToken[] = "node-a-token";

std::string CertPath(const std::string& name) {
  return absl::StrCat(FRAMEKIT_RPC_CERTS_DIR, "/", name);
}

// The test server's certificate; with `client_ca`, clients' certificates are verified against
// the test CA (mutual TLS).
ServerTls ServerCert(bool client_ca = true, bool require = true) {
  return {.cert_chain_file = CertPath("server.pem"),
          .private_key_file = CertPath("server.key"),
          .client_ca_file = client_ca ? CertPath("ca.pem") : "",
          .require_client_certificate = require};
}

// A client trusting the test CA, with the certificate `who` (certs/WHO.pem and .key) if any.
ClientTls ClientCert(const std::string& who = "", const std::string& ca = "ca.pem") {
  ClientTls tls{.server_ca_file = CertPath(ca)};
  if (!who.empty()) {
    tls.cert_chain_file = CertPath(absl::StrCat(who, ".pem"));
    tls.private_key_file = CertPath(absl::StrCat(who, ".key"));
  }
  return tls;
}

std::shared_ptr<RemoteNode> ConnectTo(const TestNode& b, std::optional<ClientTls> tls,
                                      std::string token = "") {
  absl::StatusOr<std::shared_ptr<RemoteNode>> node =
      RemoteNode::Connect({.target = b.target(),
                           .tls = std::move(tls),
                           .portable = Portable(),
                           .peer_token = token,
                           .connect_timeout = 2s * kSlowdown});
  EXPECT_THAT(node, IsOk());
  return node.ok() ? *node : nullptr;
}

// A frame with a caller, a tenant and a deadline.
Frame CallerFrame(Clock::duration timeout = 3s * kSlowdown) {
  return WithCaller(Frame(), {.user_id = "alice"})
      .With(kTenant, std::string("acme"))
      .WithTimeout(timeout);
}

// Node A trusted by its certificate's identity alone; node B's certificate is valid but names
// no trusted peer.
ServerOptions TrustingCertA() {
  ServerOptions options;
  options.tls = ServerCert();
  options.trusted.push_back(
      {.certificate_identity = kNodeA,
       .policy = {.name = "node-a", .accepted_keys = {"app.tenant"}, .identity = true}});
  return options;
}

// ---- arrival policy (no network) ------------------------------------------------------------

using Metadata = std::vector<rpc_internal::MetadataEntry>;

TEST(AcceptFrameTls, CertificateIdentityNamesTheTrustedPeer) {
  ServerOptions options = TrustingCertA();
  options.portable = Portable();
  options.trusted.push_back(
      {.token = kToken, .certificate_identity = kNodeB, .policy = {.name = "node-b-pinned"}});
  const std::vector<std::string_view> a = {"node-a.example", kNodeA};
  const std::vector<std::string_view> b = {kNodeB};
  absl::StatusOr<rpc_internal::Accepted> in =
      rpc_internal::AcceptFrame(options, Metadata{}, std::nullopt, a);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->peer->name, "node-a");
  // No certificate, or one naming no token-less peer: the anonymous peer.
  in = rpc_internal::AcceptFrame(options, Metadata{}, std::nullopt);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->peer->name, "anonymous");
  in = rpc_internal::AcceptFrame(options, Metadata{}, std::nullopt, b);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->peer->name, "anonymous");
  // A token pinned to a certificate: only with that certificate.
  in = rpc_internal::AcceptFrame(options, Metadata{{kPeerTokenHeader, kToken}}, std::nullopt, b);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->peer->name, "node-b-pinned");
  EXPECT_THAT(
      rpc_internal::AcceptFrame(options, Metadata{{kPeerTokenHeader, kToken}}, std::nullopt, a),
      StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("node-b-pinned")));
  EXPECT_THAT(
      rpc_internal::AcceptFrame(options, Metadata{{kPeerTokenHeader, kToken}}, std::nullopt),
      StatusIs(absl::StatusCode::kUnauthenticated));
  // A certificate never makes an unknown token good.
  EXPECT_THAT(
      rpc_internal::AcceptFrame(options, Metadata{{kPeerTokenHeader, "guess"}}, std::nullopt, a),
      StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("unknown peer token")));
}

// ---- options and files ----------------------------------------------------------------------

TEST(ServerTls, StartRejectsBadTrustAndFiles) {
  TestNode node;
  ASSERT_THAT(node.start_status, IsOk());
  auto start = [&](ServerOptions options) {
    options.portable = Portable();
    return Server::Start(*node.executor, std::move(options)).status();
  };
  ServerOptions neither;
  neither.trusted.push_back({.policy = {.name = "nobody"}});
  EXPECT_THAT(start(neither), StatusIs(absl::StatusCode::kInvalidArgument,
                                       HasSubstr("neither a token nor a certificate identity")));
  ServerOptions plaintext_identity;
  plaintext_identity.trusted.push_back({.certificate_identity = kNodeA});
  EXPECT_THAT(start(plaintext_identity),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("client_ca_file")));
  ServerOptions no_client_ca = plaintext_identity;
  no_client_ca.tls = ServerCert(/*client_ca=*/false);
  EXPECT_THAT(start(no_client_ca),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("client_ca_file")));
  ServerOptions twice = TrustingCertA();
  twice.trusted.push_back({.certificate_identity = kNodeA, .policy = {.name = "again"}});
  EXPECT_THAT(start(twice), StatusIs(absl::StatusCode::kInvalidArgument,
                                     HasSubstr("repeats another's certificate identity")));

  auto with_files = [&](std::string chain, std::string key, std::string ca = "") {
    ServerOptions options;
    options.tls = ServerTls{.cert_chain_file = std::move(chain),
                            .private_key_file = std::move(key),
                            .client_ca_file = std::move(ca)};
    return start(std::move(options));
  };
  EXPECT_THAT(with_files(CertPath("missing.pem"), CertPath("server.key")),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tls.cert_chain_file")));
  EXPECT_THAT(with_files(CertPath("server.pem"), ""),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.private_key_file")));
  EXPECT_THAT(with_files(CertPath("regenerate.sh"), CertPath("server.key")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a PEM certificate")));
  EXPECT_THAT(with_files(CertPath("server.key"), CertPath("server.key")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a PEM certificate")));
  EXPECT_THAT(with_files(CertPath("server.pem"), CertPath("server.pem")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a PEM private key")));
  EXPECT_THAT(with_files(CertPath("server.pem"), CertPath("node-a.key")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not the key of")));
  EXPECT_THAT(with_files(CertPath("expired.pem"), CertPath("expired.key")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("expired")));
  EXPECT_THAT(with_files(CertPath("server.pem"), CertPath("server.key"), CertPath("server.key")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.client_ca_file")));
  EXPECT_THAT(with_files(CertPath(""), CertPath("server.key")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.cert_chain_file")));
  // The files, right: the server starts.
  EXPECT_THAT(with_files(CertPath("server.pem"), CertPath("server.key"), CertPath("ca.pem")),
              IsOk());
}

TEST(RemoteTls, ConnectRejectsBadFiles) {
  auto connect = [](ClientTls tls) {
    return RemoteNode::Connect({.target = "127.0.0.1:1", .tls = std::move(tls)}).status();
  };
  EXPECT_THAT(connect({.server_ca_file = CertPath("missing.pem")}),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("tls.server_ca_file")));
  EXPECT_THAT(connect({.server_ca_file = CertPath("node-a.key")}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("tls.server_ca_file")));
  EXPECT_THAT(
      connect({.server_ca_file = CertPath("ca.pem"), .cert_chain_file = CertPath("node-a.pem")}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("both or neither")));
  EXPECT_THAT(connect({.cert_chain_file = CertPath("node-a.pem"),
                       .private_key_file = CertPath("node-b.key")}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("is not the key of")));
  EXPECT_THAT(connect(ClientCert("expired")),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("expired")));
  EXPECT_THAT(connect(ClientCert("node-a")), IsOk());
  EXPECT_THAT(connect({}), IsOk());  // gRPC's default roots
}

// ---- calls ----------------------------------------------------------------------------------

TEST(RpcTls, CallOverTlsCarriesTheFrame) {
  ServerOptions options;
  options.tls = ServerCert(/*client_ca=*/false);
  options.trusted.push_back(
      {.token = kToken,
       .policy = {.name = "node-a", .accepted_keys = {"app.tenant"}, .identity = true}});
  TestNode b(options);
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> a = ConnectTo(b, ClientCert(), kToken);
  absl::StatusOr<std::string> seen = Call(*a, "whoami", CallerFrame());
  ASSERT_THAT(seen, IsOk());
  EXPECT_THAT(*seen, HasSubstr("caller=alice caller_origin=inherited"));
  EXPECT_THAT(*seen, HasSubstr("tenant=acme tenant_origin=inherited"));
  // The server's certificate names "localhost" too: a server name the target does not give.
  ClientTls named = ClientCert();
  named.server_name = "localhost";
  absl::StatusOr<std::shared_ptr<RemoteNode>> by_name =
      RemoteNode::Connect({.target = b.target(), .tls = named, .connect_timeout = 2s * kSlowdown});
  ASSERT_THAT(by_name, IsOk());
  EXPECT_THAT(Call(**by_name, "echo", Frame().WithTimeout(3s * kSlowdown), "hi"), IsOk());
}

TEST(RpcTls, PlaintextAndTlsDoNotMixAndFailWithinTheDeadline) {
  ServerOptions tls_options;
  tls_options.tls = ServerCert(/*client_ca=*/false);
  TestNode tls_server(tls_options);
  ASSERT_THAT(tls_server.start_status, IsOk());
  TestNode plain_server;
  ASSERT_THAT(plain_server.start_status, IsOk());
  struct Case {
    const char* what;
    std::shared_ptr<RemoteNode> node;
  };
  const Case cases[] = {
      {"plaintext client, TLS server", ConnectTo(tls_server, std::nullopt)},
      {"TLS client, plaintext server", ConnectTo(plain_server, ClientCert())},
      {"server certificate of another CA", ConnectTo(tls_server, ClientCert("", "rogue-ca.pem"))},
  };
  for (const Case& c : cases) {
    const auto start = Clock::now();
    absl::StatusOr<std::string> r = Call(*c.node, "echo", Frame().WithTimeout(2s));
    // Unavailable when the handshake fails; a TLS hello to a plaintext server can also go
    // unanswered until the deadline.
    EXPECT_THAT(r.status().code(), ::testing::AnyOf(absl::StatusCode::kUnavailable,
                                                    absl::StatusCode::kDeadlineExceeded))
        << c.what << ": " << r.status();
    EXPECT_LT(Clock::now() - start, 2s + 500ms * kSlowdown) << c.what;
  }
  // A server name the certificate does not carry.
  absl::StatusOr<std::shared_ptr<RemoteNode>> wrong_name = RemoteNode::Connect(
      {.target = tls_server.target(),
       .tls = ClientTls{.server_ca_file = CertPath("ca.pem"), .server_name = "node-z.example"}});
  ASSERT_THAT(wrong_name, IsOk());
  EXPECT_THAT(Call(**wrong_name, "echo", Frame().WithTimeout(2s)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(tls_server.server->counters().calls, 0u);
  EXPECT_EQ(plain_server.server->counters().calls, 0u);
}

TEST(RpcTls, IdentityOnlyFromThePeerWhoseCertificateIsTrusted) {
  TestNode b(TrustingCertA());
  ASSERT_THAT(b.start_status, IsOk());
  // Node A: trusted by its certificate, no token.
  absl::StatusOr<std::string> seen =
      Call(*ConnectTo(b, ClientCert("node-a")), "whoami", CallerFrame());
  ASSERT_THAT(seen, IsOk());
  EXPECT_THAT(*seen, HasSubstr("caller=alice caller_origin=inherited"));
  EXPECT_THAT(*seen, HasSubstr("tenant=acme tenant_origin=inherited"));
  // Node B: a good certificate of the same CA, but no trusted peer names it.
  std::shared_ptr<RemoteNode> node_b = ConnectTo(b, ClientCert("node-b"));
  EXPECT_THAT(Call(*node_b, "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"anonymous\"")));
  seen = Call(*node_b, "whoami",
              Frame().With(kTenant, std::string("acme")).WithTimeout(3s * kSlowdown));
  ASSERT_THAT(seen, IsOk());
  EXPECT_THAT(*seen, HasSubstr("caller=- caller_origin=absent"));
  EXPECT_THAT(*seen, HasSubstr("tenant=- "));
  EXPECT_EQ(b.server->counters().identity_rejected, 1u);
}

TEST(RpcTls, CommonNameIsTheIdentityOfACertificateWithoutSan) {
  ServerOptions options;
  options.tls = ServerCert();
  options.trusted.push_back({.certificate_identity = "node-c.framekit.test",
                             .policy = {.name = "node-c", .identity = true}});
  TestNode b(options);
  ASSERT_THAT(b.start_status, IsOk());
  EXPECT_THAT(Call(*ConnectTo(b, ClientCert("cn-only")), "whoami", CallerFrame()), IsOk());
  // Node A's certificate carries CN=node-a beside its SAN: only the SAN is its identity.
  ServerOptions by_cn = options;
  by_cn.trusted[0].certificate_identity = "node-a";
  TestNode c(by_cn);
  ASSERT_THAT(c.start_status, IsOk());
  EXPECT_THAT(Call(*ConnectTo(c, ClientCert("node-a")), "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST(RpcTls, TokenPinnedToACertificate) {
  ServerOptions options;
  options.tls = ServerCert(/*client_ca=*/true, /*require=*/false);
  options.trusted.push_back({.token = kToken,
                             .certificate_identity = kNodeA,
                             .policy = {.name = "node-a", .identity = true}});
  TestNode b(options);
  ASSERT_THAT(b.start_status, IsOk());
  EXPECT_THAT(Call(*ConnectTo(b, ClientCert("node-a"), kToken), "whoami", CallerFrame()), IsOk());
  // The token stolen by node B, or sent without a certificate: refused.
  EXPECT_THAT(Call(*ConnectTo(b, ClientCert("node-b"), kToken), "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("node-a")));
  EXPECT_THAT(Call(*ConnectTo(b, ClientCert(), kToken), "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // The certificate without the token: the anonymous peer (certificates are optional here).
  EXPECT_THAT(Call(*ConnectTo(b, ClientCert("node-a")), "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"anonymous\"")));
  EXPECT_THAT(Call(*ConnectTo(b, ClientCert()), "echo", Frame().WithTimeout(3s * kSlowdown)),
              IsOk());
  EXPECT_EQ(b.server->counters().unauthenticated, 2u);
}

TEST(RpcTls, MutualTlsRefusesUntrustedOrMissingClientCertificates) {
  TestNode b(TrustingCertA());
  ASSERT_THAT(b.start_status, IsOk());
  // node A's identity, signed by another CA; and no certificate at all.
  for (const std::string who : {"rogue", ""}) {
    const auto start = Clock::now();
    EXPECT_THAT(Call(*ConnectTo(b, ClientCert(who)), "whoami", CallerFrame(2s)),
                StatusIs(absl::StatusCode::kUnavailable))
        << who;
    EXPECT_LT(Clock::now() - start, 2s + 500ms * kSlowdown) << who;
  }
  EXPECT_EQ(b.server->counters().calls, 0u);
}

// A hostile client skips RemoteNode's own checks: an expired certificate (or a certificate of
// another CA) fails the handshake on the server.
TEST(RpcTls, ServerRefusesAnExpiredClientCertificateAtTheHandshake) {
  TestNode b(TrustingCertA());
  ASSERT_THAT(b.start_status, IsOk());
  auto read = [](const std::string& name) {
    absl::StatusOr<std::string> pem = [&]() -> absl::StatusOr<std::string> {
      std::FILE* f = std::fopen(CertPath(name).c_str(), "rb");
      if (f == nullptr) return absl::NotFoundError(name.c_str());
      std::string out;
      char buf[4096];
      std::size_t n = 0;
      while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
      std::fclose(f);
      return out;
    }();
    EXPECT_THAT(pem, IsOk());
    return pem.value_or("");
  };
  auto connects = [&](const std::string& who) {
    grpc::SslCredentialsOptions ssl{.pem_root_certs = read("ca.pem"),
                                    .pem_private_key = read(absl::StrCat(who, ".key")),
                                    .pem_cert_chain = read(absl::StrCat(who, ".pem"))};
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateChannel(b.target(), grpc::SslCredentials(ssl));
    // Connected, or refused: a failed handshake leaves the channel in TRANSIENT_FAILURE at
    // once, so the refused cases need not wait out the whole timeout.
    const auto deadline = std::chrono::system_clock::now() + 1500ms * kSlowdown;
    grpc_connectivity_state state = channel->GetState(/*try_to_connect=*/true);
    while (state != GRPC_CHANNEL_READY && state != GRPC_CHANNEL_TRANSIENT_FAILURE &&
           channel->WaitForStateChange(state, deadline)) {
      state = channel->GetState(/*try_to_connect=*/true);
    }
    return state == GRPC_CHANNEL_READY;
  };
  EXPECT_TRUE(connects("node-a"));  // the control: a good certificate connects
  EXPECT_FALSE(connects("expired"));
  EXPECT_FALSE(connects("rogue"));
}

TEST(RpcTls, HugeMetadataFailsClearlyAndTheServerKeepsServing) {
  TestNode b(TrustingCertA());
  ASSERT_THAT(b.start_status, IsOk());
  absl::StatusOr<std::shared_ptr<RemoteNode>> a =
      RemoteNode::Connect({.target = b.target(),
                           .tls = ClientCert("node-a"),
                           .portable = Portable(),
                           .connect_timeout = 2s * kSlowdown,
                           .max_frame_header_bytes = 1 << 20});
  ASSERT_THAT(a, IsOk());
  // Beyond gRPC's metadata limit (8 KiB by default): refused, not a crash or a hang.
  const Frame huge = CallerFrame().With(kTenant, std::string(60000, 'x'));
  absl::StatusOr<std::string> r = Call(**a, "whoami", huge);
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.status().code(),
              ::testing::AnyOf(absl::StatusCode::kResourceExhausted, absl::StatusCode::kInternal,
                               absl::StatusCode::kUnavailable))
      << r.status();
  // The server may close that connection; a new one is served (sanitizer builds connect slowly).
  absl::StatusOr<std::shared_ptr<RemoteNode>> again =
      RemoteNode::Connect({.target = b.target(),
                           .tls = ClientCert("node-a"),
                           .portable = Portable(),
                           .connect_timeout = 10s});
  ASSERT_THAT(again, IsOk());
  EXPECT_THAT(Call(**again, "whoami", CallerFrame(15s)), IsOk());
}

}  // namespace
}  // namespace framekit::rpc
