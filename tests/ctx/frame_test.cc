#include "framekit/ctx/frame.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "framekit/ctx/caller.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framekit {
namespace {

using std::chrono::seconds;

const Key<std::string> kTenant{"test.tenant"};
const Key<int> kAttempt{"test.attempt", /*inherit=*/false};
const Key<int> kLevel{"test.level"};

// Sixty-four distinct keys, to exercise indexes larger than the linear-scan limit.
const std::vector<std::unique_ptr<Key<int>>>& ManyKeys() {
  static const auto* keys = [] {
    auto* v = new std::vector<std::unique_ptr<Key<int>>>();
    for (int i = 0; i < 64; ++i)
      v->push_back(std::make_unique<Key<int>>("test.k" + std::to_string(i)));
    return v;
  }();
  return *keys;
}

TEST(Frame, RootIsEmpty) {
  const Frame root;
  EXPECT_TRUE(root.empty());
  EXPECT_EQ(root.Find(kTenant), nullptr);
  EXPECT_EQ(root.Origin(kTenant), ValueOrigin::kAbsent);
  EXPECT_FALSE(root.deadline().has_value());
  EXPECT_FALSE(root.cancelled());
  EXPECT_FALSE(root.stop_token().stop_possible());
}

TEST(Frame, WithLeavesParentUnchanged) {
  const Frame parent = Frame().With(kTenant, "a");
  const Frame child = parent.With(kTenant, "b");
  EXPECT_EQ(*parent.Find(kTenant), "a");
  EXPECT_EQ(*child.Find(kTenant), "b");
  EXPECT_EQ(child.size(), 1u);
}

TEST(Frame, LaterPairsShadowEarlierOnes) {
  const Frame frame =
      Frame().With({Pair::Of(kLevel, 1), Pair::Of(kTenant, "t"), Pair::Of(kLevel, 2)});
  EXPECT_EQ(*frame.Find(kLevel), 2);
  EXPECT_EQ(*frame.Find(kTenant), "t");
  EXPECT_EQ(frame.size(), 2u);
}

TEST(Frame, WithPairListAndEmptyPairs) {
  PairList pairs;
  pairs.push_back(Pair::Of(kLevel, 1));
  pairs.push_back(Pair());
  const Frame frame = Frame().With(pairs);
  EXPECT_EQ(frame.size(), 1u);
  EXPECT_EQ(*frame.Find(kLevel), 1);
  const Frame same = frame.With(PairList{});
  EXPECT_EQ(same.Find(kLevel), frame.Find(kLevel));
}

TEST(Frame, CopyIsCheapAndShared) {
  const Frame a = Frame().With(kTenant, "x");
  const Frame b = a;  // NOLINT(performance-unnecessary-copy-initialization)
  EXPECT_EQ(a.Find(kTenant), b.Find(kTenant));  // same storage, not a copy of the value
}

TEST(Frame, ForkKeepsOnlyInheritedKeys) {
  const Frame call = Frame().With({Pair::Of(kTenant, "acme"), Pair::Of(kAttempt, 3)});
  const Frame child = call.Fork();
  ASSERT_NE(child.Find(kTenant), nullptr);
  EXPECT_EQ(*child.Find(kTenant), "acme");
  EXPECT_EQ(child.Find(kAttempt), nullptr);
  EXPECT_EQ(*call.Find(kAttempt), 3);  // parent unchanged
}

// Tests the case users of the reference system hit: an inherited security value must be
// distinguishable from one the caller set itself.
TEST(Frame, OriginTellsInheritedFromSetHere) {
  const Frame call = Frame().With(kTenant, "acme");
  EXPECT_EQ(call.Origin(kTenant), ValueOrigin::kSetHere);
  const Frame child = call.Fork();
  EXPECT_EQ(child.Origin(kTenant), ValueOrigin::kInherited);
  EXPECT_EQ(child.FindSetHere(kTenant), nullptr);
  EXPECT_NE(child.Find(kTenant), nullptr);
  // Still inherited after unrelated With calls on the child.
  const Frame decorated = child.With(kLevel, 1);
  EXPECT_EQ(decorated.Origin(kTenant), ValueOrigin::kInherited);
  EXPECT_EQ(decorated.Origin(kLevel), ValueOrigin::kSetHere);
  // Overriding on the child makes it set here.
  const Frame overridden = child.With(kTenant, "evil");
  EXPECT_EQ(overridden.Origin(kTenant), ValueOrigin::kSetHere);
  EXPECT_EQ(*overridden.FindSetHere(kTenant), "evil");
  EXPECT_EQ(overridden.Origin(kAttempt), ValueOrigin::kAbsent);
}

TEST(Frame, FindAcrossDeepChainsAndLargeIndexes) {
  const auto& keys = ManyKeys();
  Frame frame;
  for (int i = 0; i < 64; ++i) frame = frame.With(*keys[i], i);
  ASSERT_EQ(frame.size(), 64u);
  for (int i = 0; i < 64; ++i) {
    ASSERT_NE(frame.Find(*keys[i]), nullptr) << i;
    EXPECT_EQ(*frame.Find(*keys[i]), i);
  }
  EXPECT_EQ(frame.Find(kTenant), nullptr);
  // Shadow one in the middle of a large index.
  const Frame shadowed = frame.With(*keys[31], -1);
  EXPECT_EQ(*shadowed.Find(*keys[31]), -1);
  EXPECT_EQ(*frame.Find(*keys[31]), 31);
  EXPECT_EQ(shadowed.size(), 64u);
}

TEST(Frame, ForEachVisitsEveryVisiblePairWithItsOrigin) {
  const Frame frame = Frame().With(kTenant, "a").Fork().With(kLevel, 2);
  int set_here = 0, inherited = 0;
  frame.ForEach([&](const Pair& pair, ValueOrigin origin) {
    if (pair.Is(kTenant)) {
      EXPECT_EQ(origin, ValueOrigin::kInherited);
    }
    if (pair.Is(kLevel)) {
      EXPECT_EQ(origin, ValueOrigin::kSetHere);
    }
    (origin == ValueOrigin::kSetHere ? set_here : inherited)++;
  });
  EXPECT_EQ(set_here, 1);
  EXPECT_EQ(inherited, 1);
  EXPECT_EQ(frame.DebugString(), "{*test.tenant=\"a\", test.level=2}");
}

TEST(Frame, DeadlineTakesTheEarlierOne) {
  const Deadline now = Clock::now();
  const Frame a = Frame().WithDeadline(now + seconds(10));
  const Frame b = a.WithDeadline(now + seconds(20));
  const Frame c = a.WithDeadline(now + seconds(5));
  EXPECT_EQ(a.deadline(), now + seconds(10));
  EXPECT_EQ(b.deadline(), now + seconds(10));
  EXPECT_EQ(c.deadline(), now + seconds(5));
  EXPECT_FALSE(a.cancelled());
}

TEST(Frame, DeadlineSurvivesWithAndFork) {
  const Deadline when = Clock::now() + seconds(30);
  const Frame frame = Frame().With(kTenant, "t").WithDeadline(when).With(kLevel, 1).Fork();
  EXPECT_EQ(frame.deadline(), when);
  EXPECT_EQ(*frame.Find(kTenant), "t");
}

TEST(Frame, PassedDeadlineMeansCancelled) {
  const Frame frame = Frame().WithDeadline(Clock::now() - seconds(1));
  EXPECT_TRUE(frame.cancelled());
}

TEST(Frame, CancellingParentCancelsChildren) {
  auto [parent, cancel_parent] = Frame().With(kTenant, "t").WithCancel();
  auto [child, cancel_child] = parent.With(kLevel, 1).Fork().WithCancel();
  const Frame grandchild = child.With(kLevel, 2);
  EXPECT_FALSE(grandchild.cancelled());
  cancel_parent.Cancel();
  EXPECT_TRUE(parent.cancelled());
  EXPECT_TRUE(child.cancelled());
  EXPECT_TRUE(grandchild.cancelled());
  EXPECT_TRUE(grandchild.stop_token().stop_requested());
  EXPECT_TRUE(cancel_parent.cancelled());
}

TEST(Frame, CancellingChildLeavesParentAlone) {
  auto [parent, cancel_parent] = Frame().WithCancel();
  auto [child, cancel_child] = parent.WithCancel();
  cancel_child.Cancel();
  EXPECT_TRUE(child.cancelled());
  EXPECT_FALSE(parent.cancelled());
  EXPECT_FALSE(parent.stop_token().stop_requested());
}

TEST(Frame, StopTokenWakesAWaitingHandler) {
  auto [frame, canceller] = Frame().WithCancel();
  std::atomic<bool> woke{false};
  std::latch waiting(1);
  std::thread handler([&, token = frame.stop_token()] {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock<std::mutex> lock(mu);
    waiting.count_down();
    cv.wait(lock, token, [] { return false; });
    woke = token.stop_requested();
  });
  waiting.wait();
  canceller.Cancel();
  handler.join();
  EXPECT_TRUE(woke);
}

TEST(Frame, CallerRoundTrips) {
  const CallerContext caller{.user_id = "u1",
                             .role = "admin",
                             .tenant_id = "acme",
                             .email = "u1@example.com",
                             .groups = {"ops", "dev"}};
  const Frame frame = WithCaller(Frame(), caller);
  ASSERT_NE(CallerOf(frame), nullptr);
  EXPECT_EQ(*CallerOf(frame), caller);
  EXPECT_EQ(CallerOf(Frame()), nullptr);
  EXPECT_EQ(*CallerOf(frame.Fork()), caller);  // inherited by nested calls
}

TEST(Frame, ConcurrentReadersShareOneFrame) {
  const auto& keys = ManyKeys();
  Frame base;
  for (int i = 0; i < 16; ++i) base = base.With(*keys[i], i);
  constexpr int kThreads = 4;
  std::latch start(kThreads);
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int n = 0; n < 2000; ++n) {
        const Frame mine = base.Fork().With(kLevel, t * 10000 + n);
        if (*mine.Find(kLevel) != t * 10000 + n) ++mismatches;
        if (*mine.Find(*keys[n % 16]) != n % 16) ++mismatches;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// Tests that a With of tens of thousands of pairs (keys in any address order, with repeats)
// keeps the last pair of each key: the ordering step is O(n log n), not an insertion sort.
TEST(Frame, WithManyPairsKeepsTheLastOfEachKey) {
  constexpr int kKeys = 40000;
  std::vector<std::unique_ptr<Key<int>>> keys;
  keys.reserve(kKeys);
  for (int i = 0; i < kKeys; ++i) keys.push_back(std::make_unique<Key<int>>("test.many"));
  PairList pairs;
  for (int i = kKeys - 1; i >= 0; --i) pairs.push_back(Pair::Of(*keys[i], -1));
  for (int i = 0; i < kKeys; ++i) pairs.push_back(Pair::Of(*keys[i], i));
  const Frame frame = Frame().With(pairs);
  EXPECT_EQ(frame.size(), static_cast<std::size_t>(kKeys));
  for (int i = 0; i < kKeys; i += 997) {
    ASSERT_NE(frame.Find(*keys[i]), nullptr);
    EXPECT_EQ(*frame.Find(*keys[i]), i);
  }
}

// Tests the small-list path of With (up to 16 pairs: sorted and deduplicated in one pass)
// against a model: for random lists over a few keys, in random order and with repeats, each key
// holds the value of its last pair, the parent's other keys stay visible, and nothing else.
TEST(Frame, WithSmallListsKeepTheLastOfEachKeyAgainstAModel) {
  std::vector<std::unique_ptr<Key<int>>> keys;
  for (int i = 0; i < 6; ++i) keys.push_back(std::make_unique<Key<int>>("test.small"));
  std::mt19937 random(12345);
  for (int round = 0; round < 2000; ++round) {
    const Frame parent = Frame().With({Pair::Of(*keys[0], -1), Pair::Of(*keys[5], -5)});
    const int n = static_cast<int>(random() % 18);  // past 16 too: the other path
    PairList pairs;
    std::map<const KeyBase*, int> model = {{keys[0].get(), -1}, {keys[5].get(), -5}};
    for (int i = 0; i < n; ++i) {
      const Key<int>& key = *keys[random() % keys.size()];
      pairs.push_back(Pair::Of(key, i));
      model[&key] = i;
    }
    const Frame frame = parent.With(pairs);
    ASSERT_EQ(frame.size(), model.size()) << "round " << round;
    for (const auto& key : keys) {
      const int* value = frame.Find(*key);
      const auto expected = model.find(key.get());
      if (expected == model.end()) {
        EXPECT_EQ(value, nullptr) << "round " << round;
      } else {
        ASSERT_NE(value, nullptr) << "round " << round;
        EXPECT_EQ(*value, expected->second) << "round " << round;
      }
    }
  }
}

// Tests that cancelling the root of a very deep chain of scopes reaches the innermost one
// without recursing once per level (150,000 levels overflowed the stack).
TEST(Frame, CancellingTheRootOfADeepChainReachesTheLeaf) {
  constexpr int kDepth = 300000;
  auto [root, cancel_root] = Frame().WithCancel();
  Frame leaf = root;
  for (int i = 0; i < kDepth; ++i) leaf = leaf.WithCancel().first;
  std::atomic<bool> fired{false};
  std::stop_callback on_stop(leaf.stop_token(), [&fired] { fired = true; });
  EXPECT_FALSE(leaf.cancelled());
  cancel_root.Cancel();
  EXPECT_TRUE(leaf.cancelled());
  EXPECT_TRUE(fired);
}

}  // namespace
}  // namespace framekit

namespace framekit {
namespace {

// Tests that frames made on one thread and released on another (as a deadline call's frame is:
// built by the caller, dropped by the worker) keep their values while alive, are reused by the
// releasing thread's block cache without mixing up contents, and leave nothing behind (ASan,
// TSan). Sizes cover several cache classes and blocks too large to cache.
TEST(Frame, ConcurrentFramesReleasedOnAnotherThread) {
  constexpr int kRounds = 200;
  constexpr int kPerRound = 64;
  std::vector<Frame> handoff[2];
  std::mutex mu;
  std::condition_variable cv;
  int ready = -1;  // index of the batch ready for the releasing thread
  bool done = false;
  std::thread releaser([&] {
    for (int round = 0; round < kRounds; ++round) {
      std::vector<Frame> batch;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return ready == round % 2; });
        batch.swap(handoff[round % 2]);
        ready = -1;
      }
      cv.notify_all();
      for (std::size_t i = 0; i < batch.size(); ++i) {
        const int n = static_cast<int>(i % 40) + 1;
        ASSERT_EQ(batch[i].size(), static_cast<std::size_t>(n));
        ASSERT_NE(batch[i].Find(*ManyKeys()[n - 1]), nullptr);
        EXPECT_EQ(*batch[i].Find(*ManyKeys()[n - 1]), round * 1000 + n - 1);
      }
      batch.clear();  // released here, on another thread than they were made on
      // This thread also makes frames from its cache of released blocks.
      for (int i = 0; i < 8; ++i) {
        const Frame mine = Frame().With(*ManyKeys()[i], -i);
        EXPECT_EQ(*mine.Find(*ManyKeys()[i]), -i);
      }
    }
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  });
  for (int round = 0; round < kRounds; ++round) {
    std::vector<Frame> batch;
    for (int i = 0; i < kPerRound; ++i) {
      const int n = i % 40 + 1;
      PairList pairs;
      for (int k = 0; k < n; ++k) pairs.push_back(Pair::Of(*ManyKeys()[k], round * 1000 + k));
      batch.push_back(Frame().With(pairs));
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return ready == -1 && handoff[round % 2].empty(); });
      handoff[round % 2] = std::move(batch);
      ready = round % 2;
    }
    cv.notify_all();
  }
  releaser.join();
  EXPECT_TRUE(done);
}

// Tests that a frame released by a thread_local destructor after the thread's block cache was
// freed (thread_locals are destroyed in reverse order of construction) is freed, not cached
// into a cache that is gone.
TEST(Frame, ReleasedDuringThreadExitAfterTheCacheIsGone) {
  std::thread([] {
    static thread_local Frame late;  // constructed before the cache: destroyed after it
    late = Frame().With(kLevel, 1);
    {
      const Frame cached = Frame().With(kLevel, 2);  // released into the cache
    }
    late = late.With(kTenant, "acme");  // the old `late` goes to the cache too
    EXPECT_EQ(*late.Find(kLevel), 1);
  }).join();
  SUCCEED();  // ASan reports a leak or a use after free if the order is mishandled
}

// Tests that reused blocks start clean: a frame made from a recycled block of a bigger frame
// sees only its own pairs, deadline and scope.
TEST(Frame, RecycledBlocksCarryNothingOver) {
  for (int i = 0; i < 100; ++i) {
    {
      auto [cancellable, canceller] =
          Frame().With(kTenant, "old").WithTimeout(seconds(1)).WithCancel();
      canceller.Cancel();
      EXPECT_TRUE(cancellable.cancelled());
    }
    const Frame fresh = Frame().With(kLevel, i);
    EXPECT_EQ(fresh.Find(kTenant), nullptr);
    EXPECT_EQ(fresh.size(), 1u);
    EXPECT_FALSE(fresh.deadline().has_value());
    EXPECT_FALSE(fresh.cancelled());
  }
}

}  // namespace
}  // namespace framekit
