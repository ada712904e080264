// The hop count of calls between nodes ("framekit-hops", HopsKey, ServerOptions::max_hops): its
// wire form, the arrival step's reading of it, and loops and chains of real nodes on loopback.
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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
using ::framekit::rpc_testing::Portable;
using ::framekit::rpc_testing::TestNode;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using Metadata = std::vector<rpc_internal::MetadataEntry>;
using namespace std::chrono_literals;

std::shared_ptr<RemoteNode> Connect(const std::string& target) {
  absl::StatusOr<std::shared_ptr<RemoteNode>> node = RemoteNode::Connect(
      {.target = target, .portable = Portable(), .connect_timeout = 2s * rpc_testing::kSlowdown});
  EXPECT_THAT(node, IsOk());
  return node.ok() ? *node : nullptr;
}

// A function that reports the hop count of its frame ("-" without one).
absl::Status ReportHops(const Frame& frame, std::string_view, dispatch::Sink& out) {
  const std::int64_t* hops = frame.Find(HopsKey());
  return out.Write(hops == nullptr ? std::string("-") : absl::StrCat(*hops));
}

ServerOptions WithMaxHops(int max_hops) {
  ServerOptions options;
  options.max_hops = max_hops;
  return options;
}

// ---- wire and arrival (no network) -----------------------------------------------------------

TEST(Hops, ParseAcceptsCanonicalDecimalOnly) {
  EXPECT_THAT(ParseHops("0"), IsOk());
  EXPECT_EQ(ParseHops("0").value_or(-1), 0);
  EXPECT_EQ(ParseHops("1").value_or(-1), 1);
  EXPECT_EQ(ParseHops("16").value_or(-1), 16);
  EXPECT_EQ(ParseHops("999999999").value_or(-1), kMaxWireHops);
  for (std::string_view bad : std::vector<std::string_view>{
           "", "-1", "+1", " 1", "1 ", "01", "00", "1e3", "0x10", "abc", "1.5", "1000000000",
           "99999999999999999999999", std::string_view("1\0", 2), "\xff"}) {
    EXPECT_THAT(ParseHops(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("framekit-hops")))
        << bad;
  }
  // The message echoes a bounded, printable rendering of what came.
  absl::Status long_bad = ParseHops(std::string(5000, 'x')).status();
  EXPECT_LT(long_bad.message().size(), 400u);
}

TEST(Hops, FormatCountsOneMoreWithinTheWireRange) {
  EXPECT_EQ(FormatHops(0), "1");
  EXPECT_EQ(FormatHops(15), "16");
  EXPECT_EQ(FormatHops(-7), "1");
  EXPECT_EQ(FormatHops(std::numeric_limits<std::int64_t>::min()), "1");
  EXPECT_EQ(FormatHops(kMaxWireHops - 1), "999999999");
  EXPECT_EQ(FormatHops(kMaxWireHops), "999999999");
  EXPECT_EQ(FormatHops(std::numeric_limits<std::int64_t>::max()), "999999999");
  for (std::int64_t hops : {std::int64_t{-1}, std::int64_t{0}, std::int64_t{41}, kMaxWireHops}) {
    EXPECT_THAT(ParseHops(FormatHops(hops)), IsOk());
  }
}

TEST(Hops, ArrivalReadsTheCountAndRefusesBeyondTheLimit) {
  ServerOptions options = WithMaxHops(16);
  options.portable = Portable();
  // No header: the first hop.
  absl::StatusOr<rpc_internal::Accepted> in =
      rpc_internal::AcceptFrame(options, Metadata{}, std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->hops, 1);
  ASSERT_NE(in->frame.Find(HopsKey()), nullptr);
  EXPECT_EQ(*in->frame.Find(HopsKey()), 1);
  EXPECT_EQ(in->frame.Origin(HopsKey()), ValueOrigin::kInherited);
  // The edge: 16 arrives, 17 is refused, naming both numbers.
  in = rpc_internal::AcceptFrame(options, Metadata{{kHopsHeader, "16"}}, std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(*in->frame.Find(HopsKey()), 16);
  EXPECT_THAT(
      rpc_internal::AcceptFrame(options, Metadata{{kHopsHeader, "17"}}, std::chrono::seconds(1)),
      StatusIs(absl::StatusCode::kFailedPrecondition, AllOf(HasSubstr("17"), HasSubstr("16"))));
  EXPECT_THAT(rpc_internal::AcceptFrame(options, Metadata{{kHopsHeader, "999999999"}},
                                        std::chrono::seconds(1)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // A peer may send 0 (loop protection, not security): it is taken as it is.
  in = rpc_internal::AcceptFrame(options, Metadata{{kHopsHeader, "0"}}, std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(*in->frame.Find(HopsKey()), 0);
  // Malformed or repeated: InvalidArgument.
  for (std::string_view bad : {"-1", "abc", "1e9", "12345678901234567890", ""}) {
    EXPECT_THAT(
        rpc_internal::AcceptFrame(options, Metadata{{kHopsHeader, bad}}, std::chrono::seconds(1)),
        StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("framekit-hops")))
        << bad;
  }
  EXPECT_THAT(rpc_internal::AcceptFrame(options, Metadata{{kHopsHeader, "1"}, {kHopsHeader, "1"}},
                                        std::chrono::seconds(1)),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("more than one")));
}

TEST(Hops, APeerCannotSetTheCountThroughItsPortablePairs) {
  // Even a node that made the hop key portable and accepts it from everyone reads the count from
  // "framekit-hops" only: a pair of that name is dropped.
  auto portable = std::make_shared<PortableKeys>();
  ASSERT_THAT(portable->Add(HopsKey()), IsOk());
  ServerOptions options = WithMaxHops(16);
  options.portable = portable;
  options.anonymous.accepted_keys = {std::string(HopsKey().name())};
  absl::StatusOr<PortableFrame> wire = portable->Encode(Frame().With(HopsKey(), std::int64_t{0}));
  ASSERT_THAT(wire, IsOk());
  const std::string pairs = EncodeFramePairs(wire->pairs);
  absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
      options, Metadata{{kFrameHeader, pairs}, {kHopsHeader, "9"}}, std::chrono::seconds(1));
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(*in->frame.Find(HopsKey()), 9);
  EXPECT_EQ(in->dropped_pairs, 1u);
}

TEST(Hops, ServerRefusesANonPositiveLimit) {
  TestNode node;
  ASSERT_THAT(node.start_status, IsOk());
  for (int bad : {0, -1}) {
    EXPECT_THAT(Server::Start(*node.executor, WithMaxHops(bad)).status(),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_hops")));
  }
}

// ---- nodes on loopback -----------------------------------------------------------------------

// A's "loop" is backed by B's, which is backed by A's: the call crosses nodes until a server's
// limit refuses it, and every node lets go of it at once.
TEST(Hops, ALoopBetweenTwoNodesEndsAtTheLimitAndHoldsNothing) {
  TestNode a;
  TestNode b;
  ASSERT_THAT(a.start_status, IsOk());
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(a.executor->Register("loop", Connect(b.target())->Function("loop")), IsOk());
  ASSERT_THAT(b.executor->Register("loop", Connect(a.target())->Function("loop")), IsOk());
  const auto start = Clock::now();
  absl::StatusOr<std::string> out = Call(*Connect(a.target()), "loop", Frame().WithTimeout(20s));
  // Hop 17 arrives at A (the odd hops do): refused there, and the refusal comes back unchanged.
  EXPECT_THAT(out.status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("crossed 17 calls"), HasSubstr("max_hops of 16"))));
  EXPECT_LT(Clock::now() - start, 5s * rpc_testing::kSlowdown);
  EXPECT_EQ(a.server->counters().hops_exceeded, 1u);
  EXPECT_EQ(b.server->counters().hops_exceeded, 0u);
  EXPECT_EQ(a.server->counters().calls, 8u);  // hops 1, 3, ..., 15
  EXPECT_EQ(b.server->counters().calls, 8u);  // hops 2, 4, ..., 16
  // No call runs any more on either node.
  EXPECT_TRUE(rpc_testing::WaitUntil(
      [&] { return a.server->counters().running == 0 && b.server->counters().running == 0; }));
  // And both still serve.
  EXPECT_THAT(Call(*Connect(b.target()), "echo", Frame().WithTimeout(5s), "still"), IsOk());
}

// A chain shorter than the limit works, each node seeing its hop; the limit's edge is exact.
TEST(Hops, AChainWorksUpToTheLimitAndNotOneHopMore) {
  TestNode d(WithMaxHops(3));  // reached as hop 3: served
  TestNode e(WithMaxHops(2));  // reached as hop 3: refused
  ASSERT_THAT(d.start_status, IsOk());
  ASSERT_THAT(e.start_status, IsOk());
  ASSERT_THAT(d.executor->Register("hops", ReportHops), IsOk());
  ASSERT_THAT(e.executor->Register("hops", ReportHops), IsOk());
  TestNode c;
  ASSERT_THAT(c.start_status, IsOk());
  ASSERT_THAT(c.executor->Register("d.hops", Connect(d.target())->Function("hops")), IsOk());
  ASSERT_THAT(c.executor->Register("e.hops", Connect(e.target())->Function("hops")), IsOk());
  ASSERT_THAT(c.executor->Register("hops", ReportHops), IsOk());
  TestNode b;
  ASSERT_THAT(b.start_status, IsOk());
  ASSERT_THAT(b.executor->Register("c.d.hops", Connect(c.target())->Function("d.hops")), IsOk());
  ASSERT_THAT(b.executor->Register("c.e.hops", Connect(c.target())->Function("e.hops")), IsOk());
  ASSERT_THAT(b.executor->Register("c.hops", Connect(c.target())->Function("hops")), IsOk());
  std::shared_ptr<RemoteNode> to_b = Connect(b.target());
  const Frame frame = Frame().WithTimeout(10s);
  EXPECT_EQ(Call(*to_b, "c.hops", frame).value_or("error"), "2");
  EXPECT_EQ(Call(*to_b, "c.d.hops", frame).value_or("error"), "3");
  EXPECT_THAT(Call(*to_b, "c.e.hops", frame).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       AllOf(HasSubstr("crossed 3 calls"), HasSubstr("max_hops of 2"))));
  EXPECT_EQ(e.server->counters().hops_exceeded, 1u);
  EXPECT_EQ(e.server->counters().calls, 0u);
  EXPECT_EQ(d.server->counters().hops_exceeded, 0u);
  // A frame's own count goes on, one more per call: the edge without a chain.
  std::shared_ptr<RemoteNode> to_d = Connect(d.target());
  EXPECT_EQ(Call(*to_d, "hops", Frame().With(HopsKey(), std::int64_t{2})).value_or("error"), "3");
  EXPECT_THAT(Call(*to_d, "hops", Frame().With(HopsKey(), std::int64_t{3})).status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  // A count set out of range by local code: negative starts over, huge is capped (and refused).
  EXPECT_EQ(Call(*to_d, "hops", Frame().With(HopsKey(), std::int64_t{-5})).value_or("error"), "1");
  // A count of 0 sends no header (as a frame without one): the server still reads hop 1.
  EXPECT_EQ(Call(*to_d, "hops", Frame().With(HopsKey(), std::int64_t{0})).value_or("error"), "1");
  EXPECT_THAT(Call(*to_d, "hops", Frame().With(HopsKey(), std::numeric_limits<std::int64_t>::max()))
                  .status(),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("999999999")));
  EXPECT_EQ(d.server->counters().hops_exceeded, 2u);
  // A caller outside any chain is hop 1.
  EXPECT_EQ(Call(*to_d, "hops", Frame()).value_or("error"), "1");
}

}  // namespace
}  // namespace framekit::rpc
