#include "framekit/ctx/pair.h"

#include <array>
#include <memory>
#include <string>
#include <utility>

#include "framekit/ctx/frame.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {
namespace {

using ::framekit::testing::IsOk;

struct Big {
  std::array<char, 100> bytes{};
  int tag = 0;
};

// Counts live instances so tests can see copies and destruction.
struct Counted {
  static inline int live = 0;
  explicit Counted(int v) : value(v) { ++live; }
  Counted(const Counted& o) : value(o.value) { ++live; }
  Counted(Counted&& o) noexcept : value(o.value) { ++live; }
  ~Counted() { --live; }
  int value;
};

const Key<int> kInt{"test.int"};
const Key<int> kOtherInt{"test.other_int"};
const Key<std::string> kString{"test.string"};
const Key<Big> kBig{"test.big"};
const Key<Counted> kCounted{"test.counted"};
const Key<double> kDouble{"test.double"};

TEST(Pair, OfStoresValueReadableThroughItsKey) {
  const Pair pair = Pair::Of(kInt, 42);
  ASSERT_NE(pair.As(kInt), nullptr);
  EXPECT_EQ(*pair.As(kInt), 42);
  EXPECT_EQ(pair.name(), "test.int");
  EXPECT_TRUE(pair.Is(kInt));
}

// Tests that a key of the same type but another identity cannot read the value.
TEST(Pair, AsWithAnotherKeyIsNull) {
  const Pair pair = Pair::Of(kInt, 42);
  EXPECT_EQ(pair.As(kOtherInt), nullptr);
  EXPECT_EQ(pair.As(kString), nullptr);
  EXPECT_FALSE(pair.Is(kOtherInt));
}

TEST(Pair, StringLiteralConvertsToKeyType) {
  const Pair pair = Pair::Of(kString, "hello");
  ASSERT_NE(pair.As(kString), nullptr);
  EXPECT_EQ(*pair.As(kString), "hello");
}

TEST(Pair, CopyAndMoveKeepValues) {
  const std::string long_text(200, 'x');
  Pair a = Pair::Of(kString, long_text);
  Pair b = a;
  EXPECT_EQ(*b.As(kString), long_text);
  Pair c = std::move(a);
  EXPECT_EQ(*c.As(kString), long_text);
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  Pair d;
  d = c;
  EXPECT_EQ(*d.As(kString), long_text);
  d = Pair::Of(kDouble, 2.5);
  EXPECT_EQ(*d.As(kDouble), 2.5);
  EXPECT_EQ(d.As(kString), nullptr);
}

TEST(Pair, LargeValuesAreSharedNotCopied) {
  Big big;
  big.tag = 7;
  const Pair a = Pair::Of(kBig, big);
  const Pair b = a;
  ASSERT_NE(a.As(kBig), nullptr);
  EXPECT_EQ(a.As(kBig)->tag, 7);
  // One shared allocation: both pairs point at the same value.
  EXPECT_EQ(a.As(kBig), b.As(kBig));
}

TEST(Pair, InlineValuesAreDestroyedExactlyOnce) {
  ASSERT_EQ(Counted::live, 0);
  {
    Pair a = Pair::Of(kCounted, Counted(5));
    Pair b = a;
    Pair c = std::move(a);
    EXPECT_EQ(Counted::live, 2);
    EXPECT_EQ(c.As(kCounted)->value, 5);
    EXPECT_EQ(b.As(kCounted)->value, 5);
  }
  EXPECT_EQ(Counted::live, 0);
}

TEST(Pair, DefaultConstructedIsEmpty) {
  const Pair pair;
  EXPECT_TRUE(pair.empty());
  EXPECT_EQ(pair.name(), "");
  EXPECT_EQ(pair.As(kInt), nullptr);
  EXPECT_EQ(pair.DebugString(), "<empty>");
}

TEST(Pair, RollbackIsCarriedAndCallable) {
  int released = 0;
  const Pair pair = Pair::Of(kInt, 1, [&released] {
    ++released;
    return absl::OkStatus();
  });
  ASSERT_NE(pair.rollback(), nullptr);
  EXPECT_THAT((*pair.rollback())(), IsOk());
  EXPECT_EQ(released, 1);
  EXPECT_EQ(Pair::Of(kInt, 1).rollback(), nullptr);
}

TEST(Pair, DebugStringRendersKnownTypes) {
  EXPECT_EQ(Pair::Of(kInt, 3).DebugString(), "test.int=3");
  EXPECT_EQ(Pair::Of(kString, "a").DebugString(), "test.string=\"a\"");
  EXPECT_THAT(Pair::Of(kBig, Big{}).DebugString(), ::testing::StartsWith("test.big=<"));
}

TEST(PairList, HoldsEightPairsInline) {
  PairList list;
  const void* inline_storage = list.data();
  for (int i = 0; i < static_cast<int>(kPairListInline); ++i) list.push_back(Pair::Of(kInt, i));
  EXPECT_EQ(list.data(), inline_storage);
  EXPECT_EQ(*list[7].As(kInt), 7);
}

}  // namespace
}  // namespace framekit

namespace framekit {
namespace {

struct ThreeBytes {
  unsigned char a, b, c;
};

// Tests that values narrower than a word (stored as one whole word) read back exactly after
// construction, copy, move and assignment.
TEST(Pair, NarrowWordValuesSurviveCopyAndMove) {
  static const Key<bool> kFlag{"test.narrow.flag"};
  static const Key<char> kChar{"test.narrow.char"};
  static const Key<float> kFloat{"test.narrow.float"};
  static const Key<ThreeBytes> kThree{"test.narrow.three"};
  PairList pairs;
  pairs.push_back(Pair::Of(kFlag, true));
  pairs.push_back(Pair::Of(kChar, 'x'));
  pairs.push_back(Pair::Of(kFloat, 1.5f));
  pairs.push_back(Pair::Of(kThree, ThreeBytes{1, 2, 3}));
  for (int round = 0; round < 3; ++round) {
    PairList copy = pairs;            // copies
    PairList moved(std::move(copy));  // moves
    pairs = moved;                    // assigns
  }
  EXPECT_EQ(*pairs[0].As(kFlag), true);
  EXPECT_EQ(*pairs[1].As(kChar), 'x');
  EXPECT_EQ(*pairs[2].As(kFloat), 1.5f);
  const ThreeBytes& three = *pairs[3].As(kThree);
  EXPECT_EQ(three.a, 1);
  EXPECT_EQ(three.b, 2);
  EXPECT_EQ(three.c, 3);
  const Frame frame = Frame().With(pairs);
  EXPECT_EQ(*frame.Find(kChar), 'x');
}

}  // namespace
}  // namespace framekit
