// The server's frame header cache (rpc_internal::FrameHeaderCache): a call whose frame header
// repeats an earlier call's is not decoded again, and the cache never changes what a call is
// accepted as: not across peer policies, not across calls (each keeps its own trace, hop count
// and deadline), not under concurrent use with more headers than slots.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/portable.h"
#include "framekit/rpc/internal/accept.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"
#include "framekit/rpc/wire.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::rpc {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;
using Metadata = std::vector<rpc_internal::MetadataEntry>;

inline const Key<std::string> kTenant{"cache.tenant"};
inline const Key<std::string> kPlan{"cache.plan"};
constexpr char kToken[] = "cache-peer-token";

// Portable keys whose string codec counts its decodes.
struct CountingKeys {
  CountingKeys() {
    auto keys = std::make_shared<PortableKeys>();
    const auto counted = [this](std::string_view bytes) -> absl::StatusOr<std::string> {
      decodes.fetch_add(1, std::memory_order_relaxed);
      return std::string(bytes);
    };
    EXPECT_THAT(keys->Add(kTenant,
                          PortableCodec<std::string>{
                              .encode = [](const std::string& v) { return v; }, .decode = counted}),
                IsOk());
    EXPECT_THAT(keys->Add(kPlan), IsOk());
    EXPECT_THAT(keys->Add(CallerKey()), IsOk());
    portable = keys;
  }
  std::atomic<int> decodes{0};
  std::shared_ptr<const PortableKeys> portable;
};

// The anonymous policy accepts the tenant only; the trusted peer also the plan and identity.
ServerOptions Options(std::shared_ptr<const PortableKeys> portable) {
  ServerOptions options;
  options.portable = std::move(portable);
  options.anonymous.accepted_keys = {"cache.tenant"};
  options.trusted.push_back(
      {.token = kToken,
       .policy = {
           .name = "trusted", .accepted_keys = {"cache.tenant", "cache.plan"}, .identity = true}});
  return options;
}

std::string Header(const PortableKeys& portable, const Frame& frame) {
  absl::StatusOr<std::string> header =
      EncodeFrameHeader(portable, frame, [](std::string_view) { return false; });
  EXPECT_THAT(header, IsOk());
  return header.ok() ? *header : std::string();
}

std::string TraceParent(int span) {
  char span_id[17];
  std::snprintf(span_id, sizeof span_id, "%016x", span);
  return FormatTraceParent("4bf92f3577b34da6a3ce929d0e0e4736", span_id, 0x01);
}

TEST(FrameHeaderCache, ARepeatedHeaderIsDecodedOnce) {
  CountingKeys keys;
  const ServerOptions options = Options(keys.portable);
  const std::string header = Header(
      *keys.portable,
      Frame().With({Pair::Of(kTenant, std::string("acme")), Pair::Of(kPlan, std::string("gold"))}));
  rpc_internal::FrameHeaderCache cache;
  for (int call = 1; call <= 5; ++call) {
    SCOPED_TRACE(call);
    absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
        options, Metadata{{kFrameHeader, header}}, std::chrono::seconds(1), {}, &cache);
    ASSERT_THAT(in, IsOk());
    EXPECT_EQ(*in->frame.Find(kTenant), "acme");
    EXPECT_EQ(in->frame.Origin(kTenant), ValueOrigin::kInherited);
    EXPECT_EQ(in->frame.Find(kPlan), nullptr);  // not in the anonymous policy
    EXPECT_EQ(in->dropped_pairs, 1u);           // on every call, kept or not
  }
  EXPECT_EQ(keys.decodes.load(), 1);
  // Without the cache, every call decodes.
  for (int call = 0; call < 3; ++call) {
    ASSERT_THAT(rpc_internal::AcceptFrame(options, Metadata{{kFrameHeader, header}},
                                          std::chrono::seconds(1)),
                IsOk());
  }
  EXPECT_EQ(keys.decodes.load(), 4);
}

TEST(FrameHeaderCache, EachCallKeepsItsOwnTraceHopsAndDeadline) {
  CountingKeys keys;
  const ServerOptions options = Options(keys.portable);
  const std::string header = Header(*keys.portable, Frame().With(kTenant, std::string("acme")));
  rpc_internal::FrameHeaderCache cache;
  absl::StatusOr<rpc_internal::Accepted> first = rpc_internal::AcceptFrame(
      options,
      Metadata{{kFrameHeader, header}, {kTraceParentHeader, TraceParent(1)}, {kHopsHeader, "2"}},
      std::chrono::seconds(30), {}, &cache);
  absl::StatusOr<rpc_internal::Accepted> second = rpc_internal::AcceptFrame(
      options, Metadata{{kFrameHeader, header}, {kTraceParentHeader, TraceParent(2)}},
      std::chrono::milliseconds(200), {}, &cache);
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(second, IsOk());
  EXPECT_EQ(keys.decodes.load(), 1);
  EXPECT_EQ(*first->frame.Find(ParentSpanKey()), "0000000000000001");
  EXPECT_EQ(*second->frame.Find(ParentSpanKey()), "0000000000000002");
  EXPECT_EQ(*first->frame.Find(HopsKey()), 2);
  EXPECT_EQ(*second->frame.Find(HopsKey()), 1);
  ASSERT_TRUE(first->frame.deadline().has_value());
  ASSERT_TRUE(second->frame.deadline().has_value());
  EXPECT_GT(*first->frame.deadline() - Clock::now(), std::chrono::seconds(20));
  EXPECT_LE(*second->frame.deadline() - Clock::now(), std::chrono::milliseconds(200));
  // The kept pairs carry no deadline and no cancellation of an earlier call.
  auto [cancellable, canceller] = first->frame.WithCancel();
  canceller.Cancel();
  absl::StatusOr<rpc_internal::Accepted> third = rpc_internal::AcceptFrame(
      options, Metadata{{kFrameHeader, header}}, std::chrono::seconds(30), {}, &cache);
  ASSERT_THAT(third, IsOk());
  EXPECT_FALSE(third->frame.cancelled());
  EXPECT_EQ(*third->frame.Find(kTenant), "acme");
}

// The same bytes are a different question under another policy: identity a trusted peer may
// assert stays refused from an anonymous one, in either order, and the pairs each policy
// accepts stay its own.
TEST(FrameHeaderCache, AHeaderKeptForOnePolicyIsNotReusedForAnother) {
  CountingKeys keys;
  const ServerOptions options = Options(keys.portable);
  const std::string with_identity = Header(
      *keys.portable,
      WithCaller(Frame(), {.user_id = "alice"})
          .With({Pair::Of(kTenant, std::string("acme")), Pair::Of(kPlan, std::string("gold"))}));
  const Metadata trusted = {{kPeerTokenHeader, kToken}, {kFrameHeader, with_identity}};
  const Metadata anonymous = {{kFrameHeader, with_identity}};
  for (const bool trusted_first : {true, false}) {
    SCOPED_TRACE(trusted_first ? "trusted first" : "anonymous first");
    rpc_internal::FrameHeaderCache cache;
    for (int round = 0; round < 2; ++round) {
      for (const bool is_trusted : {trusted_first, !trusted_first}) {
        absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
            options, is_trusted ? trusted : anonymous, std::chrono::seconds(1), {}, &cache);
        if (!is_trusted) {
          EXPECT_THAT(in, StatusIs(absl::StatusCode::kPermissionDenied,
                                   HasSubstr("may not assert the caller identity")));
          continue;
        }
        ASSERT_THAT(in, IsOk());
        ASSERT_NE(CallerOf(in->frame), nullptr);
        EXPECT_EQ(CallerOf(in->frame)->user_id, "alice");
        EXPECT_EQ(*in->frame.Find(kPlan), "gold");
      }
    }
  }
  // A header without identity: each policy gets the pairs it accepts.
  const std::string plain = Header(
      *keys.portable,
      Frame().With({Pair::Of(kTenant, std::string("acme")), Pair::Of(kPlan, std::string("gold"))}));
  rpc_internal::FrameHeaderCache cache;
  absl::StatusOr<rpc_internal::Accepted> from_trusted = rpc_internal::AcceptFrame(
      options, Metadata{{kPeerTokenHeader, kToken}, {kFrameHeader, plain}}, std::chrono::seconds(1),
      {}, &cache);
  absl::StatusOr<rpc_internal::Accepted> from_anonymous = rpc_internal::AcceptFrame(
      options, Metadata{{kFrameHeader, plain}}, std::chrono::seconds(1), {}, &cache);
  ASSERT_THAT(from_trusted, IsOk());
  ASSERT_THAT(from_anonymous, IsOk());
  EXPECT_EQ(*from_trusted->frame.Find(kPlan), "gold");
  EXPECT_EQ(from_anonymous->frame.Find(kPlan), nullptr);
  EXPECT_EQ(from_trusted->dropped_pairs, 0u);
  EXPECT_EQ(from_anonymous->dropped_pairs, 1u);
}

TEST(FrameHeaderCache, RefusedHeadersAndLongHeadersAreNotKept) {
  CountingKeys keys;
  const ServerOptions options = Options(keys.portable);
  rpc_internal::FrameHeaderCache cache;
  // A header that does not decode is refused on every call.
  for (int call = 0; call < 3; ++call) {
    EXPECT_THAT(rpc_internal::AcceptFrame(options, Metadata{{kFrameHeader, "\x01\x05"}},
                                          std::chrono::seconds(1), {}, &cache),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // A header over kMaxHeaderBytes is decoded on every call.
  const std::string tenant(rpc_internal::FrameHeaderCache::kMaxHeaderBytes, 't');
  const std::string long_header = Header(*keys.portable, Frame().With(kTenant, tenant));
  ASSERT_GT(long_header.size(), rpc_internal::FrameHeaderCache::kMaxHeaderBytes);
  for (int call = 0; call < 3; ++call) {
    absl::StatusOr<rpc_internal::Accepted> in = rpc_internal::AcceptFrame(
        options, Metadata{{kFrameHeader, long_header}}, std::chrono::seconds(1), {}, &cache);
    ASSERT_THAT(in, IsOk());
    EXPECT_EQ(*in->frame.Find(kTenant), tenant);
  }
  EXPECT_EQ(keys.decodes.load(), 3);
}

// Threads accept calls with more distinct headers than the cache has slots, from two policies:
// each call sees exactly the pairs of its own header, whatever the others did to the slots.
TEST(FrameHeaderCache, ConcurrentCallsEachSeeTheirOwnHeader) {
  CountingKeys keys;
  const ServerOptions options = Options(keys.portable);
  constexpr int kHeaders = 3 * static_cast<int>(rpc_internal::FrameHeaderCache::kSlots);
  std::vector<std::string> headers;
  for (int i = 0; i < kHeaders; ++i) {
    headers.push_back(
        Header(*keys.portable, Frame().With({Pair::Of(kTenant, absl::StrCat("t", i)),
                                             Pair::Of(kPlan, absl::StrCat("p", i))})));
  }
  rpc_internal::FrameHeaderCache cache;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < 1000; ++n) {
        const int i = (n * 7 + t * 13) % kHeaders;
        // Both policies in turn on the same header: the second finds the first's slot.
        for (const bool trusted : {t % 2 == 0, t % 2 != 0}) {
          Metadata metadata = {{kFrameHeader, headers[static_cast<std::size_t>(i)]}};
          if (trusted) metadata.emplace_back(kPeerTokenHeader, kToken);
          absl::StatusOr<rpc_internal::Accepted> in =
              rpc_internal::AcceptFrame(options, metadata, std::chrono::seconds(1), {}, &cache);
          const std::string* tenant = in.ok() ? in->frame.Find(kTenant) : nullptr;
          const std::string* plan = in.ok() ? in->frame.Find(kPlan) : nullptr;
          const bool right =
              tenant != nullptr && *tenant == absl::StrCat("t", i) &&
              (trusted ? plan != nullptr && *plan == absl::StrCat("p", i) : plan == nullptr);
          if (!right) wrong.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LT(keys.decodes.load(), 4 * 2000);  // some calls found their header kept
}

}  // namespace
}  // namespace framekit::rpc
