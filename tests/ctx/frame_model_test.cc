// Frame against a model: random sequences of With (span, list, moved list), Fork, WithDeadline,
// WithCancel, Cancel and release, checked after every step against a plain map per frame. A
// child of a parent with only a few one-word pairs copies them instead of referencing the
// parent (frame.h, FrameNode); these tests check that both kinds of child see exactly what the
// model says, whichever frames were released first (ASan reports a child that still reads its
// released parent's pairs), and on another thread than the one that made them (TSan).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "framekit/ctx/frame.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace framekit {
namespace {

// Ints (one-word values), some not inherited; strings (not one word when long); an int key
// whose pairs carry a rollback (not plain either).
struct ModelKeys {
  std::vector<std::unique_ptr<Key<int>>> ints;
  std::vector<std::unique_ptr<Key<std::string>>> strings;
  Key<int> with_rollback{"model.rollback"};
};

const ModelKeys& Keys() {
  static const ModelKeys* keys = [] {
    auto* k = new ModelKeys();
    for (int i = 0; i < 12; ++i) {
      k->ints.push_back(std::make_unique<Key<int>>("model.i" + std::to_string(i),
                                                   /*inherit=*/i % 4 != 3));
    }
    for (int i = 0; i < 3; ++i) {
      k->strings.push_back(std::make_unique<Key<std::string>>("model.s" + std::to_string(i)));
    }
    return k;
  }();
  return *keys;
}

struct ModelValue {
  std::string text;  // the value: an int's decimal form, or the string
  ValueOrigin origin = ValueOrigin::kSetHere;
};

struct Model {
  std::map<const KeyBase*, ModelValue> values;
  std::optional<Deadline> deadline;
  int scope = -1;  // the nearest cancellation scope, or -1
};

// Cancellation scopes as a forest: a scope is cancelled when it or an enclosing one is.
struct Scopes {
  std::vector<int> enclosing;
  std::vector<bool> cancelled;
  bool Cancelled(int scope) const {
    for (; scope >= 0; scope = enclosing[scope]) {
      if (cancelled[scope]) return true;
    }
    return false;
  }
};

class FrameModel {
 public:
  explicit FrameModel(std::uint32_t seed) : rng_(seed) {
    frames_.emplace_back();
    models_.emplace_back();
  }

  void Step() {
    const std::size_t from = Pick(frames_.size());
    switch (Pick(10)) {
      case 0:
      case 1:
      case 2:
      case 3:
        With(from);
        break;
      case 4:
      case 5:
        Fork(from);
        break;
      case 6:
        Deadlined(from);
        break;
      case 7:
        Cancellable(from);
        break;
      case 8:
        if (!cancellers_.empty()) {
          const std::size_t c = Pick(cancellers_.size());
          cancellers_[c].first.Cancel();
          scopes_.cancelled[cancellers_[c].second] = true;
        }
        break;
      default:
        Release();
        break;
    }
    while (frames_.size() > 24) Release();
  }

  // Every frame against its model.
  void Check() const {
    for (std::size_t f = 0; f < frames_.size(); ++f) Check(frames_[f], models_[f]);
  }

  static void Check(const Frame& frame, const Model& model) {
    ASSERT_EQ(frame.size(), model.values.size()) << frame.DebugString();
    for (const auto& key : Keys().ints) CheckKey(frame, model, *key);
    for (const auto& key : Keys().strings) CheckKey(frame, model, *key);
    CheckKey(frame, model, Keys().with_rollback);
    EXPECT_EQ(frame.deadline(), model.deadline);
  }

  const Scopes& scopes() const { return scopes_; }
  const std::vector<Frame>& frames() const { return frames_; }
  const std::vector<Model>& models() const { return models_; }

 private:
  template <class T>
  static void CheckKey(const Frame& frame, const Model& model, const Key<T>& key) {
    const auto it = model.values.find(&key);
    const T* value = frame.Find(key);
    if (it == model.values.end()) {
      ASSERT_EQ(value, nullptr) << key.name() << " in " << frame.DebugString();
      EXPECT_EQ(frame.Origin(key), ValueOrigin::kAbsent);
      return;
    }
    ASSERT_NE(value, nullptr) << key.name() << " in " << frame.DebugString();
    if constexpr (std::is_same_v<T, int>) {
      EXPECT_EQ(std::to_string(*value), it->second.text) << key.name();
    } else {
      EXPECT_EQ(*value, it->second.text) << key.name();
    }
    EXPECT_EQ(frame.Origin(key), it->second.origin) << key.name();
    EXPECT_EQ(frame.FindSetHere(key) != nullptr, it->second.origin == ValueOrigin::kSetHere);
  }

  std::size_t Pick(std::size_t n) {
    return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_);
  }

  // One random pair, recorded in `model` as set here (or nothing for an empty pair).
  Pair RandomPair(Model& model) {
    const ModelKeys& keys = Keys();
    const std::size_t kind = Pick(20);
    const int value = static_cast<int>(Pick(1000));
    if (kind < 14) {
      const Key<int>& key = *keys.ints[Pick(keys.ints.size())];
      model.values[&key] = {std::to_string(value), ValueOrigin::kSetHere};
      return Pair::Of(key, value);
    }
    if (kind < 18) {
      const Key<std::string>& key = *keys.strings[Pick(keys.strings.size())];
      // Long enough to live outside the small-string buffer half of the time.
      std::string text(Pick(2) == 0 ? 3 : 40, static_cast<char>('a' + value % 26));
      model.values[&key] = {text, ValueOrigin::kSetHere};
      return Pair::Of(key, std::move(text));
    }
    if (kind < 19) {
      model.values[&keys.with_rollback] = {std::to_string(value), ValueOrigin::kSetHere};
      return Pair::Of(keys.with_rollback, value, [] { return absl::OkStatus(); });
    }
    return Pair();
  }

  void With(std::size_t from) {
    Model model = models_[from];
    PairList pairs;
    // Mostly a handful; sometimes more than With sorts on the stack.
    const std::size_t n = Pick(4) == 0 ? Pick(25) : Pick(11);
    for (std::size_t i = 0; i < n; ++i) pairs.push_back(RandomPair(model));
    Frame frame;
    switch (Pick(3)) {
      case 0:
        frame = frames_[from].With(std::span<const Pair>(pairs.data(), pairs.size()));
        break;
      case 1:
        frame = frames_[from].With(pairs);
        break;
      default: {
        frame = frames_[from].With(std::move(pairs));
        // Moved: the list keeps its size.
        EXPECT_EQ(pairs.size(), n);  // NOLINT(bugprone-use-after-move)
        break;
      }
    }
    Add(std::move(frame), std::move(model));
  }

  void Fork(std::size_t from) {
    Model model = models_[from];
    for (auto it = model.values.begin(); it != model.values.end();) {
      if (!it->first->inherit()) {
        it = model.values.erase(it);
      } else {
        it->second.origin = ValueOrigin::kInherited;
        ++it;
      }
    }
    Add(frames_[from].Fork(), std::move(model));
  }

  void Deadlined(std::size_t from) {
    Model model = models_[from];
    const Deadline deadline =
        Clock::now() + std::chrono::hours(1) + std::chrono::seconds(static_cast<int>(Pick(1000)));
    if (!model.deadline || deadline < *model.deadline) model.deadline = deadline;
    Add(frames_[from].WithDeadline(deadline), std::move(model));
  }

  void Cancellable(std::size_t from) {
    Model model = models_[from];
    scopes_.enclosing.push_back(model.scope);
    scopes_.cancelled.push_back(false);
    model.scope = static_cast<int>(scopes_.enclosing.size()) - 1;
    auto [frame, canceller] = frames_[from].WithCancel();
    cancellers_.emplace_back(std::move(canceller), model.scope);
    if (cancellers_.size() > 8) cancellers_.erase(cancellers_.begin());
    Add(std::move(frame), std::move(model));
  }

  // Releases a random frame, the root included (its children keep what they use).
  void Release() {
    if (frames_.size() <= 1) return;
    const std::size_t f = Pick(frames_.size());
    frames_.erase(frames_.begin() + static_cast<std::ptrdiff_t>(f));
    models_.erase(models_.begin() + static_cast<std::ptrdiff_t>(f));
  }

  void Add(Frame frame, Model model) {
    frames_.push_back(std::move(frame));
    models_.push_back(std::move(model));
  }

  std::mt19937 rng_;
  std::vector<Frame> frames_;
  std::vector<Model> models_;
  Scopes scopes_;
  std::vector<std::pair<Canceller, int>> cancellers_;
};

// Tests every step of random sequences against the model, cancellation included.
TEST(FrameModel, RandomSequencesMatchTheModel) {
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    FrameModel model(seed);
    for (int step = 0; step < 400; ++step) {
      model.Step();
      model.Check();
      for (std::size_t f = 0; f < model.frames().size(); ++f) {
        ASSERT_EQ(model.frames()[f].cancelled(), model.scopes().Cancelled(model.models()[f].scope))
            << "seed " << seed << " step " << step;
      }
      if (HasFatalFailure() || HasNonfatalFailure()) {
        FAIL() << "seed " << seed << " step " << step;
      }
    }
  }
}

const Key<int> kA{"model.a"};
const Key<int> kB{"model.b"};
const Key<int> kC{"model.c", /*inherit=*/false};
const Key<std::string> kText{"model.text"};

// Tests that a child of a parent holding only one-word pairs keeps its values after the parent
// is gone: the child copied them (ASan reports a read of the released parent otherwise).
TEST(FrameModel, ChildOfPlainParentOutlivesIt) {
  std::optional<Frame> parent = Frame().With({Pair::Of(kA, 1), Pair::Of(kC, 3)});
  const Frame child = parent->With(kB, 2);
  const Frame forked = parent->Fork();
  parent.reset();
  EXPECT_EQ(*child.Find(kA), 1);
  EXPECT_EQ(*child.Find(kB), 2);
  EXPECT_EQ(*child.Find(kC), 3);
  EXPECT_EQ(child.Origin(kA), ValueOrigin::kSetHere);
  EXPECT_EQ(*forked.Find(kA), 1);
  EXPECT_EQ(forked.Origin(kA), ValueOrigin::kInherited);
  EXPECT_EQ(forked.Find(kC), nullptr);
}

// Tests that values that are not one word (a string, a rollback) are shared with the parent,
// never copied per child: a call's frame must not copy every string its caller carries.
TEST(FrameModel, ChildSharesValuesThatAreNotOneWord) {
  const Frame parent = Frame().With({Pair::Of(kA, 1), Pair::Of(kText, std::string(64, 'x'))});
  const Frame child = parent.With(kB, 2);
  EXPECT_EQ(child.Find(kText), parent.Find(kText));
  EXPECT_EQ(parent.Fork().Find(kText), parent.Find(kText));
  const Frame rolled = Frame().With({Pair::Of(kA, 1, [] { return absl::OkStatus(); })});
  EXPECT_EQ(rolled.With(kB, 2).Find(kA), rolled.Find(kA));
}

// Tests that a child of a parent in a cancellation scope shares the scope (it references the
// parent rather than copying it), and that a copied child keeps the parent's deadline.
TEST(FrameModel, CopiedChildKeepsDeadlineAndScope) {
  auto [scoped, canceller] = Frame().With(kA, 1).WithCancel();
  const Frame child = scoped.With(kB, 2);
  canceller.Cancel();
  EXPECT_TRUE(child.cancelled());
  EXPECT_TRUE(child.Fork().cancelled());

  const Deadline deadline = Clock::now() + std::chrono::hours(1);
  std::optional<Frame> timed = Frame().With(kA, 1).WithDeadline(deadline);
  const Frame timed_child = timed->With(kB, 2);
  const Frame timed_fork = timed->Fork();
  timed.reset();
  EXPECT_EQ(timed_child.deadline(), deadline);
  EXPECT_EQ(timed_fork.deadline(), deadline);
  EXPECT_EQ(*timed_child.Find(kA), 1);
}

// Tests With(PairList&&): the pairs the frame took are left empty, the rest unchanged, and the
// frame holds the values, a long string and a rollback included.
TEST(FrameModel, WithMovedListTakesThePairs) {
  PairList pairs;
  pairs.push_back(Pair::Of(kA, 1));
  pairs.push_back(Pair::Of(kText, std::string(100, 'y'), [] { return absl::OkStatus(); }));
  pairs.push_back(Pair());
  pairs.push_back(Pair::Of(kA, 7));  // shadows the first pair
  const Frame parent = Frame().With(kB, 2);
  const Frame frame = parent.With(std::move(pairs));
  ASSERT_EQ(pairs.size(), 4u);     // NOLINT(bugprone-use-after-move)
  EXPECT_FALSE(pairs[0].empty());  // shadowed: not taken
  EXPECT_EQ(*pairs[0].As(kA), 1);
  EXPECT_TRUE(pairs[1].empty());
  EXPECT_TRUE(pairs[3].empty());
  EXPECT_EQ(*frame.Find(kA), 7);
  EXPECT_EQ(*frame.Find(kB), 2);
  EXPECT_EQ(*frame.Find(kText), std::string(100, 'y'));
  EXPECT_EQ(frame.size(), 3u);
  // A list of only empty pairs yields the frame itself.
  PairList empties(2);
  EXPECT_EQ(parent.With(std::move(empties)).Find(kB), parent.Find(kB));
}

// Tests children made concurrently from one shared parent, both kinds (copying and
// referencing), released on other threads than the one that made them while the parent is
// dropped by a third (TSan, ASan).
TEST(FrameModel, ConcurrentChildrenOfASharedParent) {
  constexpr int kThreads = 2;
  constexpr int kPerThread = 2000;
  for (const bool plain : {true, false}) {
    std::optional<Frame> parent =
        plain ? Frame().With({Pair::Of(kA, 1), Pair::Of(kB, 2)})
              : Frame().With({Pair::Of(kA, 1), Pair::Of(kText, std::string(50, 'z'))});
    std::vector<std::vector<Frame>> made(kThreads);
    std::latch start(kThreads + 1);
    std::vector<std::thread> makers;
    for (int t = 0; t < kThreads; ++t) {
      makers.emplace_back([&, t, copy = *parent] {
        start.arrive_and_wait();
        for (int i = 0; i < kPerThread; ++i) {
          made[t].push_back(i % 2 == 0 ? copy.With(kC, i) : copy.Fork());
        }
      });
    }
    start.arrive_and_wait();
    parent.reset();
    for (std::thread& t : makers) t.join();
    // Each thread's frames are released by the other.
    std::vector<std::thread> releasers;
    for (int t = 0; t < kThreads; ++t) {
      releasers.emplace_back([&made, t, plain] {
        std::vector<Frame> frames = std::move(made[(t + 1) % kThreads]);
        for (std::size_t i = 0; i < frames.size(); ++i) {
          ASSERT_EQ(*frames[i].Find(kA), 1);
          if (plain) {
            ASSERT_EQ(*frames[i].Find(kB), 2);
          } else {
            ASSERT_EQ(frames[i].Find(kText)->size(), 50u);
          }
          ASSERT_EQ(frames[i].Find(kC) != nullptr, i % 2 == 0);
        }
        frames.clear();
      });
    }
    for (std::thread& t : releasers) t.join();
  }
}

}  // namespace
}  // namespace framekit
