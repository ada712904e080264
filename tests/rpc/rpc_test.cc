// The rpc module: the wire format, the arrival policy, and calls between in-process nodes on
// loopback (frame propagation, deadlines, cancellation, trust, traces, statuses, bad peers).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/function_executor.h"
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
using ::framekit::rpc_testing::Describe;
using ::framekit::rpc_testing::kRoute;
using ::framekit::rpc_testing::kTenant;
using ::framekit::rpc_testing::Portable;
using ::framekit::rpc_testing::RawPeer;
using ::framekit::rpc_testing::StringSink;
using ::framekit::rpc_testing::TestNode;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::MatchesRegex;

constexpr char kW3CTrace[] = "4bf92f3577b34da6a3ce929d0e0e4736";
constexpr char kToken[] = "node-a-token";

// A frame as node A's caller would have it: caller, tenant, route and trace.
Frame CallerFrame(std::string trace = kW3CTrace) {
  Frame frame = WithCaller(Frame(), {.user_id = "alice"});
  return frame.With({Pair::Of(kTenant, std::string("acme")),
                     Pair::Of(kRoute, std::string("via-tor")),
                     Pair::Of(dispatch::TraceIdKey(), std::move(trace))});
}

ServerOptions TrustingA() {
  ServerOptions options;
  options.trusted.push_back(
      {.token = kToken,
       .policy = {.name = "node-a", .accepted_keys = {"app.tenant"}, .identity = true}});
  return options;
}

std::shared_ptr<RemoteNode> Connect(const std::string& target, std::string token = "",
                                    std::shared_ptr<const PortableKeys> portable = Portable()) {
  absl::StatusOr<std::shared_ptr<RemoteNode>> node =
      RemoteNode::Connect({.target = target,
                           .portable = std::move(portable),
                           .peer_token = std::move(token),
                           .connect_timeout = std::chrono::seconds(2) * rpc_testing::kSlowdown});
  EXPECT_THAT(node, IsOk());
  return node.ok() ? *node : nullptr;
}

// ---- wire ------------------------------------------------------------------------------------

TEST(Wire, FramePairsRoundTrip) {
  const WirePairs pairs = {{"a", ""}, {"app.tenant", std::string("ac\0me", 5)}, {"b", "x"}};
  absl::StatusOr<WirePairs> back = DecodeFramePairs(EncodeFramePairs(pairs), {});
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(*back, pairs);
  EXPECT_THAT(DecodeFramePairs("", {}), IsOk());
}

TEST(Wire, FramePairsRejectGarbage) {
  const std::string good = EncodeFramePairs({{"app.tenant", "acme"}});
  EXPECT_THAT(DecodeFramePairs(std::string("\x02") + good.substr(1), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("unknown version 2")));
  for (std::size_t cut = 2; cut < good.size(); ++cut) {
    EXPECT_THAT(DecodeFramePairs(good.substr(0, cut), {}),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("truncated")))
        << cut;
  }
  // A length that claims 4 GiB allocates nothing and fails.
  EXPECT_THAT(DecodeFramePairs(std::string("\x01\xff\xff\xff\xff", 5), {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeFramePairs(EncodeFramePairs({{"", "v"}}), {}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty key name")));
  EXPECT_THAT(DecodeFramePairs(EncodeFramePairs({{"a", "1"}, {"b", "2"}}), {.max_pairs = 1}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than 1 pairs")));
  EXPECT_THAT(DecodeFramePairs(EncodeFramePairs({{"a", "12345"}}), {.max_value_bytes = 4}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      DecodeFramePairs(EncodeFramePairs({{"a", "123"}, {"b", "123"}}), {.max_total_bytes = 6}),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("exceed 6 bytes")));
}

TEST(Wire, TraceParentParsesAndFormats) {
  const std::string header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  absl::StatusOr<TraceParent> trace = ParseTraceParent(header);
  ASSERT_THAT(trace, IsOk());
  EXPECT_EQ(trace->trace_id, kW3CTrace);
  EXPECT_EQ(trace->span_id, "00f067aa0ba902b7");
  EXPECT_EQ(trace->flags, 1);
  EXPECT_EQ(FormatTraceParent(trace->trace_id, trace->span_id, trace->flags), header);
  // A later version is read by its first 55 characters.
  EXPECT_THAT(ParseTraceParent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what"),
              IsOk());
  for (const char* bad : {
           "", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  // 00 is exact
           "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // forbidden version
           "00-00000000000000000000000000000000-00f067aa0ba902b7-01",       // zero trace
           "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",       // zero span
           "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",       // uppercase
           "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",       // separator
           "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",       // flags
       }) {
    EXPECT_THAT(ParseTraceParent(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  EXPECT_TRUE(IsW3CTraceId(kW3CTrace));
  EXPECT_FALSE(IsW3CTraceId("job:42"));
  EXPECT_TRUE(IsTraceId("job:42"));
  EXPECT_FALSE(IsTraceId("bad id\n"));
}

TEST(Wire, StatusKeepsCodeMessageAndPayloads) {
  absl::Status status = absl::FailedPreconditionError("quota \"x\" spent");
  status.SetPayload("type.test/A", absl::Cord(std::string("\0\1bytes", 7)));
  WireStatus wire = ToWireStatus(status);
  EXPECT_EQ(wire.code, 9);
  absl::Status back = FromWireStatus(wire.code, wire.message, wire.details);
  EXPECT_EQ(back, status);
  // A message that is not UTF-8 keeps its payloads.
  absl::Status binary(absl::StatusCode::kAborted, std::string("bad \xff\xfe bytes", 13));
  binary.SetPayload("type.test/B", absl::Cord("b"));
  const WireStatus binary_wire = ToWireStatus(binary);
  EXPECT_EQ(FromWireStatus(binary_wire.code, binary_wire.message, binary_wire.details), binary);
  // Without payloads no details travel.
  EXPECT_TRUE(ToWireStatus(absl::NotFoundError("x")).details.empty());
  // An unknown code is Unknown; details that do not parse are ignored, the rest is kept.
  EXPECT_THAT(FromWireStatus(99, "odd", ""), StatusIs(absl::StatusCode::kUnknown, "odd"));
  absl::Status garbage = FromWireStatus(5, "missing", "\xff\xff garbage");
  EXPECT_THAT(garbage, StatusIs(absl::StatusCode::kNotFound, "missing"));
  EXPECT_FALSE(garbage.GetPayload("type.test/A").has_value());
  EXPECT_THAT(FromWireStatus(0, "ignored", ""), IsOk());
  for (int code = 1; code <= 16; ++code) {
    EXPECT_EQ(static_cast<int>(FromWireStatus(code, "m", "").code()), code);
  }
}

// ---- arrival policy (no network) ------------------------------------------------------------

using Metadata = std::vector<rpc_internal::MetadataEntry>;

TEST(AcceptFrame, DefaultPolicyKeepsTraceAndDeadlineOnly) {
  ServerOptions options;
  options.portable = Portable();
  const std::string pairs = EncodeFramePairs({{"app.route", "via-tor"}, {"app.tenant", "acme"}});
  const std::string parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  const Metadata metadata = {{kFrameHeader, pairs}, {kTraceParentHeader, parent}};
  absl::StatusOr<rpc_internal::Accepted> in =
      rpc_internal::AcceptFrame(options, metadata, std::chrono::milliseconds(700));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->peer->name, "anonymous");
  EXPECT_EQ(in->dropped_pairs, 2u);
  EXPECT_EQ(in->frame.Find(kTenant), nullptr);
  EXPECT_EQ(in->frame.Find(kRoute), nullptr);
  ASSERT_NE(in->frame.Find(dispatch::TraceIdKey()), nullptr);
  EXPECT_EQ(*in->frame.Find(dispatch::TraceIdKey()), kW3CTrace);
  EXPECT_EQ(in->frame.Origin(dispatch::TraceIdKey()), ValueOrigin::kInherited);
  ASSERT_TRUE(in->frame.deadline().has_value());
  EXPECT_LE(*in->frame.deadline() - Clock::now(), std::chrono::milliseconds(700));
  EXPECT_GT(*in->frame.deadline() - Clock::now(), std::chrono::milliseconds(500));
}

TEST(AcceptFrame, IdentityOnlyFromTrustedPeers) {
  ServerOptions options = TrustingA();
  options.portable = Portable();
  absl::StatusOr<PortableFrame> wire = Portable()->Encode(CallerFrame());
  ASSERT_THAT(wire, IsOk());
  const std::string pairs = EncodeFramePairs(wire->pairs);
  // Anonymous: a claimed identity is refused, not ignored.
  EXPECT_THAT(rpc_internal::AcceptFrame(options, Metadata{{kFrameHeader, pairs}}, std::nullopt),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("\"anonymous\"")));
  // A wrong token, or two tokens, are refused whatever else the call carries.
  EXPECT_THAT(rpc_internal::AcceptFrame(
                  options, Metadata{{kPeerTokenHeader, "node-a-tokeN"}, {kFrameHeader, pairs}},
                  std::nullopt),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(
      rpc_internal::AcceptFrame(
          options, Metadata{{kPeerTokenHeader, kToken}, {kPeerTokenHeader, kToken}}, std::nullopt),
      StatusIs(absl::StatusCode::kUnauthenticated));
  // The trusted peer: identity and tenant accepted (inherited), route not in its policy.
  absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
      options, Metadata{{kPeerTokenHeader, kToken}, {kFrameHeader, pairs}}, std::nullopt);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->peer->name, "node-a");
  ASSERT_NE(CallerOf(in->frame), nullptr);
  EXPECT_EQ(CallerOf(in->frame)->user_id, "alice");
  EXPECT_EQ(in->frame.Origin(CallerKey()), ValueOrigin::kInherited);
  EXPECT_EQ(*in->frame.Find(kTenant), "acme");
  EXPECT_EQ(in->frame.Find(kRoute), nullptr);
  EXPECT_EQ(in->dropped_pairs, 1u);
  // No deadline on the wire: the server's default applies.
  ASSERT_TRUE(in->frame.deadline().has_value());
  EXPECT_GT(*in->frame.deadline() - Clock::now(), std::chrono::seconds(20));
}

TEST(AcceptFrame, MalformedInputIsInvalidArgumentOrIgnoredTrace) {
  ServerOptions options;
  options.portable = Portable();
  options.anonymous.accepted_keys = {"app.tenant"};
  EXPECT_THAT(
      rpc_internal::AcceptFrame(options, Metadata{{kFrameHeader, "\x01\x05"}}, std::nullopt),
      StatusIs(absl::StatusCode::kInvalidArgument));
  const std::string twice = EncodeFramePairs({{"app.tenant", "a"}, {"app.tenant", "b"}});
  EXPECT_THAT(rpc_internal::AcceptFrame(options, Metadata{{kFrameHeader, twice}}, std::nullopt),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("app.tenant")));
  absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
      options, Metadata{{kTraceParentHeader, "00-garbage"}}, std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_TRUE(in->bad_trace);
  EXPECT_EQ(in->frame.Find(dispatch::TraceIdKey()), nullptr);
  in = rpc_internal::AcceptFrame(options, Metadata{{kTraceIdHeader, "job:42"}},
                                 std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(*in->frame.Find(dispatch::TraceIdKey()), "job:42");
}

TEST(Server, StartRejectsBadOptions) {
  TestNode node;
  ServerOptions identity;
  identity.anonymous.identity = true;
  EXPECT_THAT(Server::Start(*node.executor, identity),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("anonymous")));
  ServerOptions empty_token;
  empty_token.trusted.push_back({.token = "", .policy = {}});
  EXPECT_THAT(Server::Start(*node.executor, empty_token),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("neither a token nor a certificate identity")));
  ServerOptions twice = TrustingA();
  twice.trusted.push_back(twice.trusted[0]);
  EXPECT_THAT(Server::Start(*node.executor, twice), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Server::Start(*node.executor, {.address = "256.0.0.1:1"}),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(RemoteNode::Connect({.target = ""}), StatusIs(absl::StatusCode::kInvalidArgument));
}

// A server's port is its own: neither a second server nor another socket asking for
// SO_REUSEPORT (as any process of the same user could) can bind it and take a share of its
// connections, with the peer tokens and frames they carry.
TEST(Server, ItsPortCannotBeSharedBySO_REUSEPORT) {
  TestNode a;
  ASSERT_THAT(a.start_status, IsOk());
  const std::string address = absl::StrCat("127.0.0.1:", a.server->port());
  TestNode b;
  EXPECT_THAT(Server::Start(*b.executor, {.address = address}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr(address)));
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  const int on = 1;
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on), 0);
  ASSERT_EQ(::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on), 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(a.server->port()));
  EXPECT_NE(::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(errno, EADDRINUSE);
  ::close(fd);
  // The first server still serves every call.
  EXPECT_THAT(Call(*Connect(a.target()), "echo", Frame(), "still here"), IsOk());
}

// ---- two nodes on loopback --------------------------------------------------------------------

TEST(Rpc, TrustedPeerCarriesFrameAndReceiverReResolves) {
  TestNode b(TrustingA());
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target(), kToken);
  absl::StatusOr<std::string> seen = Call(
      *to_b, "whoami", CallerFrame().WithTimeout(std::chrono::seconds(5) * rpc_testing::kSlowdown));
  ASSERT_THAT(seen, IsOk());
  // Caller and tenant arrive inherited; the route is not in B's policy for A; B's own resolver
  // derived the region from the tenant it accepted; the trace is intact with A's span as parent.
  EXPECT_THAT(*seen, HasSubstr("caller=alice caller_origin=inherited"));
  EXPECT_THAT(*seen, HasSubstr(std::string("trace=") + kW3CTrace));
  EXPECT_THAT(*seen, MatchesRegex(".* span=[0-9a-f]{16} .*"));
  EXPECT_THAT(*seen, HasSubstr("tenant=acme tenant_origin=inherited route=- region=acme-eu"));
  EXPECT_GE(b.server->counters().dropped_pairs, 1u);
}

TEST(Rpc, AnonymousPeerGetsTraceAndDeadlineOnly) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  // No caller on the frame: nothing claims identity; tenant and route are dropped.
  Frame frame = Frame().With({Pair::Of(kTenant, std::string("acme")),
                              Pair::Of(dispatch::TraceIdKey(), std::string(kW3CTrace))});
  absl::StatusOr<std::string> seen =
      Call(*Connect(b.target()), "whoami",
           frame.WithTimeout(std::chrono::seconds(5) * rpc_testing::kSlowdown));
  ASSERT_THAT(seen, IsOk());
  EXPECT_THAT(*seen, HasSubstr("caller=- "));
  EXPECT_THAT(*seen, HasSubstr(std::string("trace=") + kW3CTrace));
  EXPECT_THAT(*seen, HasSubstr("tenant=- tenant_origin=absent route=- region=-"));
}

TEST(Rpc, UntrustedIdentityIsRejected) {
  TestNode b(TrustingA());
  ASSERT_THAT(b.start_status, IsOk());
  // No token: the caller identity on the frame is refused.
  EXPECT_THAT(Call(*Connect(b.target()), "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("caller identity")));
  // A wrong token is refused before anything else.
  EXPECT_THAT(Call(*Connect(b.target(), "guess"), "whoami", CallerFrame()),
              StatusIs(absl::StatusCode::kUnauthenticated));
  ServerCounters counters = b.server->counters();
  EXPECT_EQ(counters.identity_rejected, 1u);
  EXPECT_EQ(counters.unauthenticated, 1u);
  EXPECT_EQ(counters.calls, 0u);
}

TEST(Rpc, ChainedCallSeesRemainingTimeNotAFreshTimeout) {
  // client -> A ("front": waits 600 ms, then calls B) -> B ("whoami").
  TestNode b(TrustingA());
  ASSERT_THAT(b.start_status, IsOk());
  TestNode a(TrustingA());
  ASSERT_THAT(a.start_status, IsOk());
  std::shared_ptr<RemoteNode> a_to_b = Connect(b.target(), kToken);
  ASSERT_THAT(a.executor->Register("b.whoami", a_to_b->Function("whoami")), IsOk());
  ASSERT_THAT(a.executor->Register(
                  "front",
                  [&a](const Frame& frame, std::string_view, dispatch::Sink& out) -> absl::Status {
                    std::this_thread::sleep_for(std::chrono::milliseconds(600));
                    absl::StatusOr<std::string> r = a.executor->Invoke(frame, "b.whoami", "");
                    if (!r.ok()) return r.status();
                    return out.Write(*r);
                  }),
              IsOk());
  // Sanitizer builds get a longer budget (kSlowdown); the checks below are relative to it.
  const std::chrono::milliseconds budget = std::chrono::seconds(2) * rpc_testing::kSlowdown;
  absl::StatusOr<std::string> seen =
      Call(*Connect(a.target(), kToken), "front", CallerFrame().WithTimeout(budget));
  ASSERT_THAT(seen, IsOk());
  EXPECT_THAT(*seen, HasSubstr("caller=alice"));
  EXPECT_THAT(*seen, HasSubstr(std::string("trace=") + kW3CTrace));
  // B's servers default to 30 s for calls without a deadline: B saw what was left of the
  // budget after A's 600 ms, not a fresh budget. (gRPC's deadline arithmetic may gain a few ms
  // per hop: it reads a cached clock on arrival.)
  const std::string ms = seen->substr(seen->find("remaining_ms=") + 13);
  const int remaining = std::stoi(ms);
  EXPECT_GT(remaining, 400) << *seen;
  EXPECT_LE(remaining, budget.count() - 600 + 50) << *seen;
}

TEST(Rpc, DeadlineEndsTheRemoteCallOnTime) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  // Connected first: a sanitizer build can take longer than the deadline to connect.
  EXPECT_THAT(Call(*to_b, "echo", Frame().WithTimeout(std::chrono::seconds(10))), IsOk());
  const auto start = Clock::now();
  EXPECT_THAT(Call(*to_b, "wait", Frame().WithTimeout(std::chrono::milliseconds(300))),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(2) * rpc_testing::kSlowdown);
  // B's handler was stopped through its frame, not left running.
  for (int i = 0; i < 500 * rpc_testing::kSlowdown && b.stopped.load() < b.started.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(b.stopped.load(), b.started.load());
  // In a sanitizer build the call may run out of time before it reaches B.
  if (rpc_testing::kSlowdown == 1) {
    EXPECT_EQ(b.started.load(), 1);
  }
}

TEST(Rpc, CancellingTheFrameCancelsTheRemoteCall) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  auto [frame, canceller] = Frame().WithTimeout(std::chrono::seconds(20)).WithCancel();
  std::thread cancel([&b, canceller = canceller] {
    EXPECT_TRUE(rpc_testing::WaitUntil([&] { return b.started.load() > 0; }));
    canceller.Cancel();
  });
  const auto start = Clock::now();
  EXPECT_THAT(Call(*to_b, "wait", frame), StatusIs(absl::StatusCode::kCancelled));
  cancel.join();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
  for (int i = 0; i < 500 * rpc_testing::kSlowdown && b.stopped.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(b.stopped.load(), 1);
  // A frame cancelled before the call never leaves the process.
  EXPECT_THAT(Call(*to_b, "echo", frame), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_EQ(b.server->counters().calls, 1u);
}

TEST(Rpc, TraceParentRoundTripAndOtherTraceIds) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  Frame w3c = Frame().With(dispatch::TraceIdKey(), std::string(kW3CTrace));
  absl::StatusOr<std::string> first = Call(*to_b, "whoami", w3c);
  absl::StatusOr<std::string> second = Call(*to_b, "whoami", w3c);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(second, IsOk());
  EXPECT_THAT(*first, HasSubstr(std::string("trace=") + kW3CTrace));
  // Each call is a new span of the same trace.
  auto span = [](const std::string& s) { return s.substr(s.find("span=") + 5, 16); };
  EXPECT_NE(span(*first), span(*second));
  absl::StatusOr<std::string> job =
      Call(*to_b, "whoami", Frame().With(dispatch::TraceIdKey(), std::string("job:42")));
  ASSERT_THAT(job, IsOk());
  EXPECT_THAT(*job, HasSubstr("trace=job:42 span=- "));
  EXPECT_EQ(b.server->counters().bad_trace, 0u);
}

TEST(Rpc, StatusesMapBothWaysWithPayloads) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  absl::StatusOr<std::string> fail = Call(*to_b, "fail", Frame());
  EXPECT_THAT(fail, StatusIs(absl::StatusCode::kNotFound, "no such order: 42"));
  ASSERT_TRUE(fail.status().GetPayload("type.test/Detail").has_value());
  EXPECT_EQ(std::string(*fail.status().GetPayload("type.test/Detail")), "detail bytes");

  absl::StatusOr<std::string> thrown = Call(*to_b, "throw", Frame());
  EXPECT_THAT(thrown, StatusIs(absl::StatusCode::kInternal, HasSubstr("handler exploded")));
  std::optional<ExtensionPanic> panic = GetExtensionPanic(thrown.status());
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->type, "std::runtime_error");
  EXPECT_EQ(panic->message, "handler exploded");
  EXPECT_EQ(panic->phase, Phase::kInvoke);

  EXPECT_THAT(Call(*to_b, "missing", Frame()), StatusIs(absl::StatusCode::kNotFound));
}

TEST(Rpc, StreamingDeliversChunksAndListNamesFunctions) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  StringSink sink;
  dispatch::RunStats stats;
  ASSERT_THAT(to_b->Function("chunks", CallMode::kStreaming)
                  ->Run(Frame().WithTimeout(std::chrono::seconds(5) * rpc_testing::kSlowdown), "",
                        sink, stats),
              IsOk());
  EXPECT_THAT(sink.chunks(), ElementsAre("one", "two", "three"));
  EXPECT_EQ(stats.output_bytes, 11u);
  EXPECT_THAT(Call(*to_b, "fail", Frame(), "", CallMode::kStreaming),
              StatusIs(absl::StatusCode::kNotFound, "no such order: 42"));
  absl::StatusOr<std::vector<std::string>> names = to_b->List();
  ASSERT_THAT(names, IsOk());
  EXPECT_THAT(*names, ElementsAre("chunks", "echo", "fail", "throw", "wait", "whoami"));
}

// List is admitted like a call: a wrong token, an identity the peer may not assert and a hop
// count beyond the limit are refused and counted, as for Invoke.
TEST(Rpc, ListIsAdmittedLikeACall) {
  TestNode b(TrustingA());
  ASSERT_THAT(b.start_status, IsOk());
  absl::StatusOr<std::vector<std::string>> names = Connect(b.target(), kToken)->List();
  ASSERT_THAT(names, IsOk());
  EXPECT_THAT(*names, ::testing::Contains("echo"));
  EXPECT_THAT(Connect(b.target(), "not-the-token")->List(),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("unknown peer token")));
  EXPECT_THAT(Connect(b.target())->List(WithCaller(Frame(), {.user_id = "mallory"})),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Connect(b.target(), kToken)->List(Frame().With(HopsKey(), std::int64_t{999})),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  const ServerCounters counters = b.server->counters();
  EXPECT_EQ(counters.unauthenticated, 1u);
  EXPECT_EQ(counters.identity_rejected, 1u);
  EXPECT_EQ(counters.hops_exceeded, 1u);
  EXPECT_EQ(counters.refused, 3u);
  EXPECT_EQ(counters.running, 0u);  // the admitted List gave its slot back
}

TEST(Rpc, RemoteFunctionBehindTheLocalExecutor) {
  // Every executor feature applies to remote Code: records carry the caller and trace.
  TestNode b(TrustingA());
  ASSERT_THAT(b.start_status, IsOk());
  TestNode a;
  ASSERT_THAT(a.executor->Register("b.echo", Connect(b.target(), kToken)->Function("echo")),
              IsOk());
  EXPECT_EQ(*a.executor->Invoke(CallerFrame(), "b.echo", "ping", {{"timeout_ms", 5000}}), "ping");
  absl::StatusOr<std::vector<dispatch::InvocationRecord>> on_b =
      b.executor->ListInvocations("echo");
  ASSERT_THAT(on_b, IsOk());
  ASSERT_EQ(on_b->size(), 1u);
  EXPECT_EQ((*on_b)[0].caller, "alice");
  EXPECT_EQ((*on_b)[0].trace_id, kW3CTrace);
}

TEST(Rpc, PeerThatNeverAnswersFailsByTheDeadline) {
  RawPeer silent;
  std::shared_ptr<RemoteNode> node = Connect(silent.target());
  const auto start = Clock::now();
  EXPECT_THAT(Call(*node, "echo", Frame().WithTimeout(std::chrono::milliseconds(300))),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(1500) * rpc_testing::kSlowdown);
  // A frame without a deadline gets the node's default, never an endless wait.
  absl::StatusOr<std::shared_ptr<RemoteNode>> short_default = RemoteNode::Connect(
      {.target = silent.target(), .default_timeout = std::chrono::milliseconds(300)});
  ASSERT_THAT(short_default, IsOk());
  const auto second = Clock::now();
  EXPECT_THAT(Call(**short_default, "echo", Frame()),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - second, std::chrono::milliseconds(1500) * rpc_testing::kSlowdown);
  EXPECT_GE(silent.accepted(), 1);
}

TEST(Rpc, PeerThatAnswersGarbageFailsClearly) {
  RawPeer garbage(std::string(64, '\x7f') + "HTTP/1.1 200 OK\r\n\r\nnot grpc");
  std::shared_ptr<RemoteNode> node = Connect(garbage.target());
  const auto start = Clock::now();
  absl::StatusOr<std::string> r =
      Call(*node, "echo", Frame().WithTimeout(std::chrono::milliseconds(1000)));
  // gRPC reads the bytes as a broken HTTP/2 connection: the peer is unavailable.
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(2500) * rpc_testing::kSlowdown);
}

TEST(Rpc, NobodyListeningIsUnavailableAtOnce) {
  int port = 0;
  {
    RawPeer closed;  // a port that was free a moment ago
    port = std::stoi(closed.target().substr(10));
  }
  std::shared_ptr<RemoteNode> node = Connect(absl::StrCat("127.0.0.1:", port));
  const auto start = Clock::now();
  EXPECT_THAT(Call(*node, "echo", Frame().WithTimeout(std::chrono::seconds(10))),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
}

TEST(Rpc, OversizedFrameFailsBeforeLeaving) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  absl::StatusOr<std::shared_ptr<RemoteNode>> node = RemoteNode::Connect(
      {.target = b.target(), .portable = Portable(), .max_frame_header_bytes = 64});
  ASSERT_THAT(node, IsOk());
  Frame big = Frame().With(kTenant, std::string(100, 'x'));
  EXPECT_THAT(Call(**node, "echo", big),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("limit is 64")));
  EXPECT_EQ(b.server->counters().calls, 0u);
}

TEST(Rpc, ServerRefusesCallsBeyondItsBound) {
  ServerOptions options;
  options.max_concurrent_calls = 1;
  TestNode b(options);
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  auto [frame, canceller] = Frame().WithTimeout(std::chrono::seconds(20)).WithCancel();
  absl::Status waited;
  std::thread waiting([&] { waited = Call(*to_b, "wait", frame).status(); });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return b.started.load() > 0; }));
  EXPECT_THAT(Call(*to_b, "echo", Frame()), StatusIs(absl::StatusCode::kResourceExhausted));
  canceller.Cancel();
  waiting.join();
  EXPECT_THAT(waited, StatusIs(absl::StatusCode::kCancelled));
  // The slot is free again once B's side of the cancelled call has ended.
  absl::StatusOr<std::string> again = Call(*to_b, "echo", Frame(), "again");
  for (int i = 0; i < 200 * rpc_testing::kSlowdown && !again.ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    again = Call(*to_b, "echo", Frame(), "again");
  }
  EXPECT_THAT(again, IsOk());
}

TEST(Rpc, ConcurrentCallsOverOneNode) {
  TestNode b(TrustingA());
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target(), kToken);
  std::shared_ptr<dispatch::Code> echo = to_b->Function("echo");
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        StringSink sink;
        dispatch::RunStats stats;
        const std::string payload = absl::StrCat(t, ":", i);
        if (echo->Run(CallerFrame().WithTimeout(std::chrono::seconds(10)), payload, sink, stats)
                .ok() &&
            sink.text() == payload) {
          ok.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(ok.load(), 100);
  EXPECT_EQ(b.server->counters().calls, 100u);
}

TEST(Rpc, ShutdownCancelsRunningCalls) {
  auto b = std::make_unique<TestNode>();
  ASSERT_THAT(b->start_status, IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b->target());
  absl::Status status;
  std::thread waiting([&] { status = Call(*to_b, "wait", Frame()).status(); });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return b->started.load() > 0; }));
  const auto start = Clock::now();
  b->server->Shutdown(std::chrono::milliseconds(100));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
  for (int i = 0; i < 500 * rpc_testing::kSlowdown && b->stopped.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(b->stopped.load(), 1);
  waiting.join();
  EXPECT_FALSE(status.ok());
}

// ---- tracestate, trace flags, the borrowed codec and inline calls ------------------------------

// An OK StatusOr holding `expected`.
MATCHER_P(OkWith, expected, "") {
  if (!arg.ok()) {
    *result_listener << "status " << arg.status();
    return false;
  }
  *result_listener << "value \"" << *arg << "\"";
  return *arg == expected;
}

TEST(Wire, TraceStateParsesAndNormalises) {
  EXPECT_THAT(ParseTraceState("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
              OkWith(std::string("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")));
  // Optional whitespace and empty members go; a value may hold inner spaces.
  EXPECT_THAT(ParseTraceState(" a=1 ,\t, b@sys=x y  ,"), OkWith(std::string("a=1,b@sys=x y")));
  EXPECT_THAT(ParseTraceState(""), OkWith(std::string()));
  for (const char* bad : {"a", "=1", "A=1", "1a=1", "a=", "a=1,a=2", "a=x,b", "a=,", "a=1=2",
                          "a=\x7f", "t@=1", "@s=1", "t@Sys=1", "t@abcdefghijklmno=1"}) {
    EXPECT_THAT(ParseTraceState(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
  std::string many;
  for (int i = 0; i < 33; ++i) absl::StrAppend(&many, i == 0 ? "" : ",", "k", i, "=v");
  EXPECT_THAT(ParseTraceState(many), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("32")));
  // Over 512 characters: members over 128 go first, then members from the end.
  const std::string long_member = "long=" + std::string(200, 'x');
  std::string big = long_member;
  for (int i = 0; i < 30; ++i) absl::StrAppend(&big, ",k", i, "=", std::string(20, 'v'));
  absl::StatusOr<std::string> cut = ParseTraceState(big);
  ASSERT_THAT(cut, IsOk());
  EXPECT_LE(cut->size(), kMaxTraceStateBytes);
  EXPECT_THAT(*cut, ::testing::StartsWith("k0="));
  EXPECT_THAT(*cut, ::testing::Not(HasSubstr("long=")));
  EXPECT_THAT(ParseTraceState(*cut), OkWith(*cut));
}

TEST(Wire, FrameHeaderMatchesTheCopyingCodec) {
  const Frame frame = CallerFrame().WithTimeout(std::chrono::seconds(5));
  absl::StatusOr<PortableFrame> copied = Portable()->Encode(frame);
  ASSERT_THAT(copied, IsOk());
  absl::StatusOr<std::string> direct =
      EncodeFrameHeader(*Portable(), frame, [](std::string_view) { return false; });
  ASSERT_THAT(direct, IsOk());
  EXPECT_EQ(*direct, EncodeFramePairs(copied->pairs));
  // Skipped names are left out; nothing left is an empty header.
  absl::StatusOr<std::string> without_route = EncodeFrameHeader(
      *Portable(), frame, [](std::string_view name) { return name == "app.route"; });
  ASSERT_THAT(without_route, IsOk());
  absl::StatusOr<WirePairs> pairs = DecodeFramePairs(*without_route, {});
  ASSERT_THAT(pairs, IsOk());
  EXPECT_EQ(pairs->size(), 2u);
  EXPECT_THAT(EncodeFrameHeader(*Portable(), frame, [](std::string_view) { return true; }),
              OkWith(std::string()));
  // The views decoder reads what the copying one reads, and refuses what it refuses.
  absl::StatusOr<WirePairViews> views = DecodeFramePairViews(*direct, {});
  ASSERT_THAT(views, IsOk());
  ASSERT_EQ(views->size(), copied->pairs.size());
  for (std::size_t i = 0; i < views->size(); ++i) {
    EXPECT_EQ((*views)[i].first, copied->pairs[i].first);
    EXPECT_EQ((*views)[i].second, copied->pairs[i].second);
  }
  for (std::size_t cut = 1; cut < direct->size(); ++cut) {
    const std::string_view prefix = std::string_view(*direct).substr(0, cut);
    EXPECT_EQ(DecodeFramePairViews(prefix, {}).status(), DecodeFramePairs(prefix, {}).status());
  }
  // A value over the limit fails the direct encoding as it fails Encode.
  PortableKeys small(PortableLimits{.max_value_bytes = 3});
  ASSERT_THAT(small.Add(kTenant), IsOk());
  EXPECT_THAT(EncodeFrameHeader(small, frame, [](std::string_view) { return false; }),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("app.tenant")));
}

TEST(AcceptFrame, TraceFlagsAndStateArriveInherited) {
  ServerOptions options;
  options.portable = Portable();
  const std::string parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
  // Repeated tracestate headers are one list, in order.
  absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
      options,
      Metadata{
          {kTraceParentHeader, parent}, {kTraceStateHeader, "a=1 "}, {kTraceStateHeader, "b=2"}},
      std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_FALSE(in->bad_trace);
  ASSERT_NE(in->frame.Find(TraceFlagsKey()), nullptr);
  EXPECT_EQ(*in->frame.Find(TraceFlagsKey()), 0);
  EXPECT_EQ(in->frame.Origin(TraceFlagsKey()), ValueOrigin::kInherited);
  ASSERT_NE(in->frame.Find(TraceStateKey()), nullptr);
  EXPECT_EQ(*in->frame.Find(TraceStateKey()), "a=1,b=2");
  EXPECT_EQ(in->frame.Origin(TraceStateKey()), ValueOrigin::kInherited);
  // A bad tracestate is dropped and counted; the traceparent still holds.
  in = rpc_internal::AcceptFrame(
      options, Metadata{{kTraceParentHeader, parent}, {kTraceStateHeader, "a=1,a=2"}},
      std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_TRUE(in->bad_trace);
  EXPECT_EQ(*in->frame.Find(dispatch::TraceIdKey()), kW3CTrace);
  EXPECT_EQ(in->frame.Find(TraceStateKey()), nullptr);
  // Without a (valid) traceparent a tracestate means nothing.
  in = rpc_internal::AcceptFrame(options, Metadata{{kTraceStateHeader, "a=1"}},
                                 std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->frame.Find(TraceStateKey()), nullptr);
  EXPECT_EQ(in->frame.Find(TraceFlagsKey()), nullptr);
  in = rpc_internal::AcceptFrame(
      options, Metadata{{kTraceParentHeader, "00-bad"}, {kTraceStateHeader, "a=1"}},
      std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->frame.Find(TraceStateKey()), nullptr);
}

// Reports the trace flags and state it sees.
std::shared_ptr<dispatch::Code> TraceReporter() {
  return dispatch::NativeCode([](const Frame& frame, std::string_view, dispatch::Sink& out) {
    const std::int64_t* flags = frame.Find(TraceFlagsKey());
    const std::string* state = frame.Find(TraceStateKey());
    return out.Write(absl::StrCat("flags=", flags == nullptr ? -1 : *flags,
                                  " state=", state == nullptr ? "-" : *state));
  });
}

TEST(Rpc, TraceFlagsAndStateCrossTwoHops) {
  TestNode c;
  ASSERT_THAT(c.start_status, IsOk());
  ASSERT_THAT(c.executor->Register("trace", TraceReporter()), IsOk());
  // B backs "trace" by C's: what B received goes on to C.
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> b_to_c = Connect(c.target());
  ASSERT_THAT(b.executor->Register("trace", b_to_c->Function("trace")), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  const Frame unsampled =
      Frame().With({Pair::Of(dispatch::TraceIdKey(), std::string(kW3CTrace)),
                    Pair::Of(TraceFlagsKey(), std::int64_t{0}),
                    Pair::Of(TraceStateKey(), std::string("congo=t61,rojo=1"))});
  EXPECT_THAT(Call(*to_b, "trace", unsampled),
              OkWith(std::string("flags=0 state=congo=t61,rojo=1")));
  // A trace started here is sampled and has no state; an invalid state set by the application
  // does not leave.
  EXPECT_THAT(Call(*to_b, "trace", Frame().With(dispatch::TraceIdKey(), std::string(kW3CTrace))),
              OkWith(std::string("flags=1 state=-")));
  const Frame bad_state =
      Frame().With({Pair::Of(dispatch::TraceIdKey(), std::string(kW3CTrace)),
                    Pair::Of(TraceStateKey(), std::string("x=1\nInjected: 2"))});
  EXPECT_THAT(Call(*to_b, "trace", bad_state), OkWith(std::string("flags=1 state=-")));
  EXPECT_EQ(b.server->counters().bad_trace, 0u);
  EXPECT_EQ(c.server->counters().bad_trace, 0u);
}

// Preemptive code that waits for its frame to end (cancellation or deadline), counting.
class PreemptiveWait final : public dispatch::Code {
 public:
  bool preemptive() const override { return true; }
  absl::Status Run(const Frame& frame, std::string_view, dispatch::Sink&,
                   dispatch::RunStats&) override {
    started.fetch_add(1);
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!frame.cancelled() && Clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    if (frame.stop_token().stop_requested()) stopped.fetch_add(1);
    return frame.stop_token().stop_requested() ? absl::CancelledError("stopped")
                                               : absl::DeadlineExceededError("deadline");
  }
  std::atomic<int> started{0};
  std::atomic<int> stopped{0};
};

// Preemptive echo.
class PreemptiveEcho final : public dispatch::Code {
 public:
  bool preemptive() const override { return true; }
  absl::Status Run(const Frame&, std::string_view payload, dispatch::Sink& out,
                   dispatch::RunStats&) override {
    return out.Write(payload);
  }
};

TEST(Rpc, CallsRunInlineWithinTheirBound) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(b.executor->Register("pecho", std::make_shared<PreemptiveEcho>()), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  EXPECT_THAT(Call(*to_b, "pecho", Frame(), "hi"), OkWith(std::string("hi")));
  // A native handler too: the executor runs it on a worker, the gRPC thread waits at most
  // until the deadline (the server's default_timeout when the caller sets none).
  EXPECT_THAT(Call(*to_b, "echo", Frame(), "native"), OkWith(std::string("native")));
  EXPECT_EQ(b.server->counters().inline_calls, 2u);
  EXPECT_EQ(b.server->counters().calls, 2u);
  // With the bound at 0 nothing runs inline.
  ServerOptions none;
  none.max_inline_calls = 0;
  TestNode d(std::move(none));
  ASSERT_THAT(d.start_status, IsOk());
  ASSERT_THAT(d.executor->Register("pecho", std::make_shared<PreemptiveEcho>()), IsOk());
  EXPECT_THAT(Call(*Connect(d.target()), "pecho", Frame(), "hi"), OkWith(std::string("hi")));
  EXPECT_EQ(d.server->counters().inline_calls, 0u);
}

// A native handler that ignores its frame, run inline: the gRPC thread waits for it only until
// the deadline, a call of another function is served meanwhile, and the cancellation of a second
// such call reaches its caller, whether it ran inline or on a call thread.
TEST(Rpc, AnInlineNativeCallThatHangsEndsAtItsDeadline) {
  // Shared with the handler: an abandoned worker may outlive the test's frame.
  struct Hang {
    std::atomic<bool> release{false};
    std::atomic<int> started{0};
  };
  auto hang = std::make_shared<Hang>();
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(b.executor->Register("hang",
                                   [hang](const Frame&, std::string_view, dispatch::Sink&) {
                                     hang->started.fetch_add(1);
                                     while (!hang->release.load()) {
                                       std::this_thread::sleep_for(std::chrono::milliseconds(5));
                                     }
                                     return absl::OkStatus();
                                   }),
              IsOk());
  ASSERT_THAT(b.executor->Register("pecho", std::make_shared<PreemptiveEcho>()), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  const auto start = Clock::now();
  absl::Status hung;
  std::thread calling([&] {
    hung = Call(*to_b, "hang", Frame().WithTimeout(std::chrono::milliseconds(300))).status();
  });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return hang->started.load() == 1; }));
  EXPECT_EQ(b.server->counters().inline_calls, 1u);  // the hanging call holds the gRPC thread
  EXPECT_THAT(Call(*to_b, "pecho", Frame().WithTimeout(std::chrono::seconds(5)), "hi"),
              OkWith(std::string("hi")));
  auto [frame, canceller] = Frame().WithTimeout(std::chrono::seconds(20)).WithCancel();
  absl::Status cancelled;
  std::thread second([&, frame = frame] { cancelled = Call(*to_b, "hang", frame).status(); });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return hang->started.load() == 2; }));
  canceller.Cancel();
  calling.join();
  second.join();
  EXPECT_THAT(hung, StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(cancelled, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3) * rpc_testing::kSlowdown);
  EXPECT_GE(b.server->counters().inline_calls, 1u);
  hang->release.store(true);
}

// A native handler run inline that calls back into its own server (a careless re-entrant
// handler): the gRPC thread it holds waits on the executor's worker, and the nested call finds
// gRPC's other thread free (the process bound), so both finish well within the deadline.
TEST(Rpc, AnInlineNativeCallThatCallsItsOwnServerFinishes) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  std::shared_ptr<RemoteNode> self = Connect(b.target());
  ASSERT_THAT(b.executor->Register("relay",
                                   [self](const Frame& frame, std::string_view payload,
                                          dispatch::Sink& out) -> absl::Status {
                                     absl::StatusOr<std::string> echoed =
                                         Call(*self, "echo", frame, payload);
                                     if (!echoed.ok()) return echoed.status();
                                     return out.Write(*echoed);
                                   }),
              IsOk());
  const auto start = Clock::now();
  EXPECT_THAT(Call(*Connect(b.target()), "relay",
                   Frame().WithTimeout(std::chrono::seconds(10) * rpc_testing::kSlowdown), "x"),
              OkWith(std::string("x")));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
  EXPECT_EQ(b.server->counters().calls, 2u);
  EXPECT_GE(b.server->counters().inline_calls, 1u);
}

TEST(Rpc, InlineCallsStayCancellable) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  auto wait = std::make_shared<PreemptiveWait>();
  ASSERT_THAT(b.executor->Register("pwait", wait), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  // Two at once: one inline (the bound is 1), one on a call thread; cancelling the caller's
  // frame reaches both while they run.
  auto [frame, canceller] = Frame().WithTimeout(std::chrono::seconds(20)).WithCancel();
  absl::Status first;
  absl::Status second;
  const auto start = Clock::now();
  std::thread one([&, frame = frame] { first = Call(*to_b, "pwait", frame).status(); });
  std::thread two([&, frame = frame] { second = Call(*to_b, "pwait", frame).status(); });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return wait->started.load() >= 2; }));
  canceller.Cancel();
  one.join();
  two.join();
  EXPECT_THAT(first, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_THAT(second, StatusIs(absl::StatusCode::kCancelled));
  for (int i = 0; i < 500 * rpc_testing::kSlowdown && wait->stopped.load() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(wait->stopped.load(), 2);
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
  EXPECT_EQ(b.server->counters().inline_calls, 1u);
  // The caller's deadline ends an inline call on time.
  const auto deadline_start = Clock::now();
  EXPECT_THAT(Call(*to_b, "pwait", Frame().WithTimeout(std::chrono::milliseconds(200))),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_LT(Clock::now() - deadline_start, std::chrono::seconds(2) * rpc_testing::kSlowdown);
}

// Calls `function` on `node` with a cancellable frame, cancels it once `wait` has started at the
// end of the chain, and expects the caller to see Cancelled and `wait` to stop, in time.
void ExpectCancellingTheCallerStops(RemoteNode& node, const std::string& function,
                                    const PreemptiveWait& wait) {
  auto [frame, canceller] = Frame().WithTimeout(std::chrono::seconds(20)).WithCancel();
  absl::Status status;
  const auto start = Clock::now();
  std::thread calling([&, frame = frame] { status = Call(node, function, frame).status(); });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return wait.started.load() > 0; }));
  canceller.Cancel();
  calling.join();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return wait.stopped.load() == 1; }));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
}

// B serves a remote function of C inline (a RemoteCode is preemptive): the caller's
// cancellation reaches B's inline call while its handler is blocked in its call to C, and from
// its frame C's call. gRPC runs the callbacks of every call of the process on a few threads of
// its own (2 on a machine of up to 5 cores); with B's and C's calls both inline they held all of
// them, so the callback that records the close of B's call never ran and C's call ran to its
// own limit. The process now bounds inline calls to leave one of those threads free.
TEST(Rpc, CancellationReachesAChainedCallThroughAnInlineCall) {
  TestNode c;
  ASSERT_THAT(c.start_status, IsOk());
  auto wait = std::make_shared<PreemptiveWait>();
  ASSERT_THAT(c.executor->Register("pwait", wait), IsOk());
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(b.executor->Register("c.pwait", Connect(c.target())->Function("pwait")), IsOk());
  ExpectCancellingTheCallerStops(*Connect(b.target()), "c.pwait", *wait);
  // B's call ran inline; C's too where the process has room for two (6 cores or more).
  EXPECT_EQ(b.server->counters().inline_calls, 1u);
  EXPECT_EQ(c.server->counters().inline_calls, ProcessInlineLimit() >= 2 ? 1u : 0u);
  EXPECT_EQ(c.server->counters().calls, 1u);
}

// The same through two forwarding nodes: A's caller -> B -> C -> D; cancelling at A stops D.
TEST(Rpc, CancellationReachesTheEndOfALongerChain) {
  TestNode d;
  ASSERT_THAT(d.start_status, IsOk());
  auto wait = std::make_shared<PreemptiveWait>();
  ASSERT_THAT(d.executor->Register("pwait", wait), IsOk());
  TestNode c;
  ASSERT_THAT(c.start_status, IsOk());
  ASSERT_THAT(c.executor->Register("d.pwait", Connect(d.target())->Function("pwait")), IsOk());
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(b.executor->Register("c.d.pwait", Connect(c.target())->Function("d.pwait")), IsOk());
  ExpectCancellingTheCallerStops(*Connect(b.target()), "c.d.pwait", *wait);
  const std::uint64_t inline_calls = b.server->counters().inline_calls +
                                     c.server->counters().inline_calls +
                                     d.server->counters().inline_calls;
  EXPECT_EQ(inline_calls, static_cast<std::uint64_t>(std::min(3, ProcessInlineLimit())));
}

// Servers that each allow many inline calls still leave gRPC a thread: a new call is served,
// and a cancellation reaches every waiting call.
TEST(Rpc, InlineCallsOfAllServersStayWithinTheProcessLimit) {
  ASSERT_GE(ProcessInlineLimit(), 1);
  ServerOptions many;
  many.max_inline_calls = 16;
  TestNode b(many);
  TestNode c(many);
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(c.start_status, IsOk());
  auto wait = std::make_shared<PreemptiveWait>();
  ASSERT_THAT(b.executor->Register("pwait", wait), IsOk());
  ASSERT_THAT(c.executor->Register("pwait", wait), IsOk());
  ASSERT_THAT(c.executor->Register("pecho", std::make_shared<PreemptiveEcho>()), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  std::shared_ptr<RemoteNode> to_c = Connect(c.target());
  auto [frame, canceller] = Frame().WithTimeout(std::chrono::seconds(20)).WithCancel();
  constexpr int kCalls = 6;
  std::vector<absl::Status> statuses(kCalls);
  std::vector<std::thread> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.emplace_back([&, i, frame = frame] {
      statuses[i] = Call(i % 2 == 0 ? *to_b : *to_c, "pwait", frame).status();
    });
  }
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return wait->started.load() == kCalls; }));
  const std::uint64_t inline_calls =
      b.server->counters().inline_calls + c.server->counters().inline_calls;
  EXPECT_EQ(inline_calls, static_cast<std::uint64_t>(std::min(kCalls, ProcessInlineLimit())));
  // A new call still starts and finishes while they wait.
  EXPECT_THAT(Call(*to_c, "pecho",
                   Frame().WithTimeout(std::chrono::seconds(5) * rpc_testing::kSlowdown), "hi"),
              OkWith(std::string("hi")));
  canceller.Cancel();
  for (std::thread& t : calls) t.join();
  for (const absl::Status& s : statuses) EXPECT_THAT(s, StatusIs(absl::StatusCode::kCancelled));
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return wait->stopped.load() == kCalls; }));
}

TEST(Rpc, ShutdownCancelsARunningInlineCall) {
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  auto wait = std::make_shared<PreemptiveWait>();
  ASSERT_THAT(b.executor->Register("pwait", wait), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  absl::Status status;
  std::thread waiting([&] { status = Call(*to_b, "pwait", Frame()).status(); });
  EXPECT_TRUE(rpc_testing::WaitUntil([&] { return wait->started.load() > 0; }));
  const auto start = Clock::now();
  b.server->Shutdown(std::chrono::milliseconds(100));
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(5) * rpc_testing::kSlowdown);
  waiting.join();
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(wait->stopped.load(), 1);
  EXPECT_EQ(b.server->counters().inline_calls, 1u);
}

}  // namespace
}  // namespace framekit::rpc
