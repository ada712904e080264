#include "framekit/ctx/portable.h"

#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "framekit/base/status_macros.h"
#include "framekit/ctx/caller.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;

inline const Key<std::string> kTenant{"test.tenant"};
inline const Key<std::int64_t> kQuota{"test.quota"};
inline const Key<bool> kBeta{"test.beta"};
inline const Key<double> kRatio{"test.ratio"};
inline const Key<std::string> kSecret{"test.secret"};  // never made portable
inline const Key<std::string> kLocal{"test.local", /*inherit=*/false};

struct Point {
  int x = 0;
  int y = 0;
};
inline const Key<Point> kPoint{"test.point"};

PortableKeys Registry() {
  PortableKeys keys;
  EXPECT_THAT(keys.Add(kTenant), IsOk());
  EXPECT_THAT(keys.Add(kQuota), IsOk());
  EXPECT_THAT(keys.Add(kBeta), IsOk());
  EXPECT_THAT(keys.Add(kRatio), IsOk());
  EXPECT_THAT(keys.Add(CallerKey()), IsOk());
  return keys;
}

TEST(PortableKeys, EncodeYieldsVisiblePortablePairsSortedByName) {
  const PortableKeys keys = Registry();
  const Frame frame =
      Frame().With({framekit::Pair::Of(kTenant, "acme"), framekit::Pair::Of(kQuota, -42),
                    framekit::Pair::Of(kBeta, true), framekit::Pair::Of(kRatio, 0.1),
                    framekit::Pair::Of(kSecret, "hunter2")});
  absl::StatusOr<PortableFrame> wire = keys.Encode(frame);
  ASSERT_THAT(wire, IsOk());
  EXPECT_THAT(wire->pairs, ElementsAre(Pair("test.beta", "true"), Pair("test.quota", "-42"),
                                       Pair("test.ratio", "0.1"), Pair("test.tenant", "acme")));
  EXPECT_FALSE(wire->remaining.has_value());
}

TEST(PortableKeys, RoundTripArrivesInheritedWithTheRemainingDeadline) {
  const PortableKeys keys = Registry();
  const CallerContext caller{.user_id = "u1",
                             .role = "admin",
                             .tenant_id = "acme",
                             .email = "",
                             .groups = {"ops", "", "dev"}};
  const Frame frame =
      WithCaller(Frame(), caller)
          .With({framekit::Pair::Of(kTenant, "acme"),
                 framekit::Pair::Of(kQuota, std::numeric_limits<std::int64_t>::min()),
                 framekit::Pair::Of(kRatio, -1.0 / 3)})
          .WithTimeout(std::chrono::seconds(30));
  absl::StatusOr<PortableFrame> wire = keys.Encode(frame);
  ASSERT_THAT(wire, IsOk());
  ASSERT_TRUE(wire->remaining.has_value());
  EXPECT_GT(*wire->remaining, std::chrono::seconds(29));

  absl::StatusOr<DecodedFrame> in = keys.Decode(*wire);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->dropped_unknown, 0u);
  ASSERT_NE(in->frame.Find(kTenant), nullptr);
  EXPECT_EQ(*in->frame.Find(kTenant), "acme");
  EXPECT_EQ(*in->frame.Find(kQuota), std::numeric_limits<std::int64_t>::min());
  EXPECT_EQ(*in->frame.Find(kRatio), -1.0 / 3);
  ASSERT_NE(CallerOf(in->frame), nullptr);
  EXPECT_EQ(*CallerOf(in->frame), caller);
  EXPECT_EQ(in->frame.Origin(kTenant), ValueOrigin::kInherited);
  EXPECT_EQ(in->frame.Origin(CallerKey()), ValueOrigin::kInherited);
  ASSERT_TRUE(in->frame.deadline().has_value());
  EXPECT_GT(*in->frame.deadline(), Clock::now() + std::chrono::seconds(28));
}

TEST(PortableKeys, UnknownNamesAreDroppedAndCounted) {
  const PortableKeys keys = Registry();
  PortableFrame wire;
  wire.pairs = {{"test.tenant", "acme"}, {"elsewhere.thing", "x"}, {"test.secret", "y"}};
  absl::StatusOr<DecodedFrame> in = keys.Decode(wire);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->dropped_unknown, 2u);
  EXPECT_EQ(in->frame.size(), 1u);
  EXPECT_EQ(in->frame.Find(kSecret), nullptr);
}

TEST(PortableKeys, MalformedValueIsInvalidArgumentNamingTheKey) {
  const PortableKeys keys = Registry();
  for (const auto& [name, bytes] : std::vector<std::pair<std::string, std::string>>{
           {"test.quota", "12x"},
           {"test.quota", ""},
           {"test.quota", "99999999999999999999"},
           {"test.beta", "yes"},
           {"test.ratio", "1.5e"},
           {"framekit.caller", "\x05"},
           {"framekit.caller", std::string(20, '\0') + "\xff\xff\xff\x7f"}}) {
    PortableFrame wire;
    wire.pairs = {{name, bytes}};
    EXPECT_THAT(keys.Decode(wire),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"" + name + "\"")))
        << name << " = " << bytes;
  }
}

TEST(PortableKeys, DuplicateNameOnTheWireIsInvalidArgument) {
  const PortableKeys keys = Registry();
  PortableFrame wire;
  wire.pairs = {{"test.tenant", "a"}, {"test.tenant", "b"}};
  EXPECT_THAT(keys.Decode(wire),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("appears twice")));
}

TEST(PortableKeys, SizesAreBounded) {
  PortableKeys keys(PortableLimits{
      .max_pairs = 2, .max_name_bytes = 16, .max_value_bytes = 8, .max_total_bytes = 1024});
  ASSERT_THAT(keys.Add(kTenant), IsOk());
  EXPECT_THAT(keys.Encode(Frame().With(kTenant, "123456789")),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("test.tenant")));
  PortableFrame wire;
  wire.pairs = {{"test.tenant", "123456789"}};
  EXPECT_THAT(keys.Decode(wire), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("size")));
  wire.pairs = {{"a", ""}, {"b", ""}, {"c", ""}};
  EXPECT_THAT(keys.Decode(wire), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("limit")));
}

TEST(PortableKeys, AddRejectsDuplicatesNonInheritingKeysAndIncompleteCodecs) {
  PortableKeys keys;
  ASSERT_THAT(keys.Add(kTenant), IsOk());
  EXPECT_THAT(keys.Add(kTenant),
              StatusIs(absl::StatusCode::kAlreadyExists, HasSubstr("test.tenant")));
  EXPECT_THAT(keys.Add(kLocal), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("inherit")));
  EXPECT_THAT(keys.Add(kPoint, PortableCodec<Point>{}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("codec")));
}

TEST(PortableKeys, ApplicationCodecAndLookup) {
  PortableKeys keys = Registry();
  ASSERT_THAT(keys.Add(kPoint, PortableCodec<Point>{
                                   [](const Point& p) {
                                     return std::to_string(p.x) + "," + std::to_string(p.y);
                                   },
                                   [](std::string_view bytes) -> absl::StatusOr<Point> {
                                     const std::size_t comma = bytes.find(',');
                                     if (comma == std::string_view::npos) {
                                       return absl::InvalidArgumentError("want x,y");
                                     }
                                     return Point{std::stoi(std::string(bytes.substr(0, comma))),
                                                  std::stoi(std::string(bytes.substr(comma + 1)))};
                                   }}),
              IsOk());
  const Frame frame =
      Frame().With({framekit::Pair::Of(kPoint, Point{3, 4}), framekit::Pair::Of(kQuota, 7),
                    framekit::Pair::Of(kSecret, "s")});
  EXPECT_EQ(keys.Lookup(frame, "test.point"), PortableValue(std::string("3,4")));
  EXPECT_EQ(keys.Lookup(frame, "test.quota"), PortableValue(std::int64_t{7}));
  EXPECT_EQ(keys.Lookup(frame, "test.secret"), std::nullopt);  // not portable
  EXPECT_EQ(keys.Lookup(frame, "test.tenant"), std::nullopt);  // portable, absent

  PortableFrame wire;
  wire.pairs = {{"test.point", "nope"}};
  EXPECT_THAT(keys.Decode(wire),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("\"test.point\": want x,y")));
}

TEST(PortableKeys, ExpiredDeadlineEncodesAsZero) {
  const PortableKeys keys = Registry();
  const Frame frame = Frame().WithDeadline(Clock::now() - std::chrono::seconds(1));
  absl::StatusOr<PortableFrame> wire = keys.Encode(frame);
  ASSERT_THAT(wire, IsOk());
  EXPECT_EQ(wire->remaining, Clock::duration::zero());
}

// Tests that the header's example compiles and behaves as documented.
absl::Status HeaderExample(const Frame& call_frame) {
  PortableKeys portable;
  FRAMEKIT_RETURN_IF_ERROR(portable.Add(kTenant));
  FRAMEKIT_RETURN_IF_ERROR(portable.Add(kQuota));
  FRAMEKIT_RETURN_IF_ERROR(portable.Add(CallerKey()));
  auto shared = std::make_shared<const PortableKeys>(std::move(portable));
  FRAMEKIT_ASSIGN_OR_RETURN(PortableFrame wire, shared->Encode(call_frame));
  FRAMEKIT_ASSIGN_OR_RETURN(DecodedFrame in, shared->Decode(wire));
  if (in.frame.Origin(kTenant) != ValueOrigin::kInherited) return absl::InternalError("origin");
  return absl::OkStatus();
}

TEST(PortableKeys, HeaderExample) {
  EXPECT_THAT(HeaderExample(Frame().With(kTenant, "acme")), IsOk());
}

TEST(PortableKeys, CopiesAndMovesWorkAfterTheOriginalIsGone) {
  const Frame frame =
      Frame().With({framekit::Pair::Of(kTenant, "acme"), framekit::Pair::Of(kQuota, 7)});
  auto original = std::make_unique<PortableKeys>(Registry());
  PortableKeys copy(*original);
  PortableKeys assigned;
  assigned = *original;
  PortableKeys moved(std::move(*original));
  original.reset();
  for (const PortableKeys* keys : {&copy, &assigned, &moved}) {
    absl::StatusOr<PortableFrame> wire = keys->Encode(frame);
    ASSERT_THAT(wire, IsOk());
    EXPECT_THAT(wire->pairs, ElementsAre(Pair("test.quota", "7"), Pair("test.tenant", "acme")));
    absl::StatusOr<DecodedFrame> in = keys->Decode(*wire);
    ASSERT_THAT(in, IsOk());
    ASSERT_NE(in->frame.Find(kTenant), nullptr);
    EXPECT_EQ(*in->frame.Find(kTenant), "acme");
    EXPECT_TRUE(keys->Lookup(frame, "test.quota").has_value());
    EXPECT_EQ(keys->size(), 5u);
  }
}

TEST(PortableKeys, EncodeEachAndDecodeViewBorrow) {
  const PortableKeys keys = Registry();
  const Frame frame =
      Frame()
          .With({framekit::Pair::Of(kTenant, "acme"), framekit::Pair::Of(kBeta, false),
                 framekit::Pair::Of(kSecret, "hunter2")})
          .WithTimeout(std::chrono::seconds(30));
  std::vector<std::pair<std::string, std::string>> seen;
  absl::StatusOr<std::optional<Clock::duration>> remaining = keys.EncodeEach(
      frame,
      [&](std::string_view name, std::string_view bytes) { seen.emplace_back(name, bytes); });
  ASSERT_THAT(remaining, IsOk());
  ASSERT_TRUE(remaining->has_value());
  EXPECT_GT(**remaining, std::chrono::seconds(29));
  EXPECT_THAT(seen, ElementsAre(Pair("test.beta", "false"), Pair("test.tenant", "acme")));
  // Nothing is called back when a pair is over the limits.
  PortableKeys small(PortableLimits{.max_value_bytes = 3});
  ASSERT_THAT(small.Add(kBeta), IsOk());
  ASSERT_THAT(small.Add(kTenant), IsOk());
  int calls = 0;
  EXPECT_THAT(small.EncodeEach(frame, [&](std::string_view, std::string_view) { ++calls; }),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(calls, 0);
  // Extra pairs join the decoded ones, shadow them, and arrive inherited too.
  const PortablePairView views[] = {
      {"test.tenant", "acme"}, {"test.quota", "-1"}, {"no.such", "x"}};
  const framekit::Pair extra[] = {framekit::Pair::Of(kQuota, 9), framekit::Pair::Of(kSecret, "s")};
  absl::StatusOr<DecodedFrame> in =
      keys.DecodeView({.pairs = views, .remaining = std::chrono::seconds(5)}, Frame(), extra);
  ASSERT_THAT(in, IsOk());
  EXPECT_EQ(in->dropped_unknown, 1u);
  EXPECT_EQ(*in->frame.Find(kTenant), "acme");
  EXPECT_EQ(*in->frame.Find(kQuota), 9);
  EXPECT_EQ(*in->frame.Find(kSecret), "s");
  EXPECT_EQ(in->frame.Origin(kQuota), ValueOrigin::kInherited);
  EXPECT_EQ(in->frame.Origin(kSecret), ValueOrigin::kInherited);
  ASSERT_TRUE(in->frame.deadline().has_value());
  const PortablePairView twice[] = {{"test.tenant", "a"}, {"test.tenant", "b"}};
  EXPECT_THAT(keys.DecodeView({.pairs = twice, .remaining = std::nullopt}),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("twice")));
}

}  // namespace
}  // namespace framekit
