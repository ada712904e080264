// Frame: the immutable per-call context a dispatcher hands to a handler.
//
// A frame is a set of typed pairs plus a deadline and a cancellation scope. Every operation
// returns a new frame and leaves the receiver unchanged; copying a frame copies one pointer.
// Frames share structure with their parents: `With` stores only the new pairs, and each frame
// keeps a flat index of every pair visible from it, so `Find` never walks the parent chain.
//
// Example:
//   inline const framekit::Key<std::string> kTenant{"app.tenant"};
//   inline const framekit::Key<int> kAttempt{"app.attempt", /*inherit=*/false};
//
//   framekit::Frame root;
//   framekit::Frame call = root.With(framekit::PairList{framekit::Pair::Of(kTenant, "acme"),
//                                                       framekit::Pair::Of(kAttempt, 1)});
//   call.Find(kTenant);            // "acme"
//   call.Origin(kTenant);          // ValueOrigin::kSetHere
//   framekit::Frame child = call.Fork();
//   child.Find(kTenant);           // "acme": inherited
//   child.Origin(kTenant);         // ValueOrigin::kInherited
//   child.Find(kAttempt);          // nullptr: not inherited
//
//   auto [cancellable, canceller] = child.WithTimeout(std::chrono::seconds(2)).WithCancel();
//   std::stop_callback on_stop(cancellable.stop_token(), [] { /* stop work */ });
//   canceller.Cancel();            // cancels `cancellable` and every frame made from it
#ifndef FRAMEKIT_CTX_FRAME_H_
#define FRAMEKIT_CTX_FRAME_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <utility>

#include "framekit/ctx/key.h"
#include "framekit/ctx/pair.h"

namespace framekit {

// Deadlines are points on the monotonic clock.
using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// `now + timeout`, saturated: Deadline::max() (no deadline) when the sum would reach or overflow
// it, so that a huge timeout (`Clock::duration::max()`, a timeout in ms near INT64_MAX) means
// "no limit" rather than a deadline in the past; `now` (already expired) when `timeout <= 0`.
// Every deadline computed from a timeout goes through this helper.
template <class Rep, class Period>
constexpr Deadline DeadlineAfter(Deadline now, std::chrono::duration<Rep, Period> timeout) {
  using Timeout = std::chrono::duration<Rep, Period>;
  if (timeout <= Timeout::zero()) return now;
  const Clock::duration room = now.time_since_epoch() < Clock::duration::zero()
                                   ? Clock::duration::max()
                                   : Deadline::max() - now;
  if (timeout >= std::chrono::duration_cast<Timeout>(room)) return Deadline::max();
  return now + std::chrono::duration_cast<Clock::duration>(timeout);
}

// Where a frame's value of a key came from.
enum class ValueOrigin {
  kAbsent,     // no pair of this key is visible
  kSetHere,    // set with With() on this frame or an ancestor since the last Fork()
  kInherited,  // carried over by a Fork() from the calling frame
};

namespace ctx_internal {

struct CancelScope;

// One frame in the chain. Allocated as one block: the node, its own pairs, then the index of
// every visible pair (keys sorted by address, entries = `const Pair*` | kSetHereBit).
//
// A node made by With or Fork from a parent whose visible pairs are all plain (a one-word value,
// no rollback), at most kCopyParentLimit of them, and that is in no cancellation scope copies
// those pairs into its own block and references no parent (`parent` is null): the copy costs
// less than the parent's reference count, an atomic read-modify-write when the node is made and
// another when it is released (a cache line every thread deriving from a shared frame writes).
struct FrameNode {
  mutable std::atomic<std::uint32_t> refs{1};
  std::uint32_t own_count = 0;  // pairs constructed in this node's block
  std::uint32_t index_size = 0;
  std::uint32_t block_bytes : 31 = 0;    // the size of the node's block (frame.cc's node cache)
  std::uint32_t plain : 1 = 0;           // every visible pair is plain (see above)
  const FrameNode* parent = nullptr;     // strong reference; null when nothing of it is used
  const KeyBase* const* keys = nullptr;  // this node's block, or an ancestor's
  const std::uintptr_t* entries = nullptr;
  Deadline deadline = Deadline::max();
  CancelScope* cancel = nullptr;        // nearest scope: this node's or an ancestor's
  CancelScope* owned_cancel = nullptr;  // created by this node (WithCancel)
};

inline constexpr std::uintptr_t kSetHereBit = 1;
// Up to this many visible pairs, Find scans the keys; beyond, it binary-searches them.
inline constexpr std::uint32_t kLinearScanLimit = 8;
// A parent with up to this many visible pairs, all plain, is copied rather than referenced.
inline constexpr std::uint32_t kCopyParentLimit = 8;

std::uintptr_t LookupSorted(const FrameNode& node, const KeyBase* key) noexcept;
void ReleaseNode(const FrameNode* node) noexcept;

// The index entry for `key`, or 0 when absent.
inline std::uintptr_t Lookup(const FrameNode* node, const KeyBase* key) noexcept {
  if (node == nullptr) return 0;
  const std::uint32_t n = node->index_size;
  if (n <= kLinearScanLimit) {
    for (std::uint32_t i = 0; i < n; ++i) {
      if (node->keys[i] == key) return node->entries[i];
    }
    return 0;
  }
  return LookupSorted(*node, key);
}

inline const Pair* EntryPair(std::uintptr_t entry) noexcept {
  return reinterpret_cast<const Pair*>(entry & ~kSetHereBit);
}

}  // namespace ctx_internal

class Canceller;

// An immutable per-call context. See the file comment.
//
// Thread-safety: immutable; any number of threads may read, copy and derive from one frame,
// and release it on any thread.
// NOTE: a frame may keep its ancestor chain alive (pairs hidden by Fork included) until the
// last frame derived from it is gone; a frame made by With or Fork from one holding only a few
// one-word pairs and no cancellation scope copies them and keeps nothing of that frame alive.
class Frame {
 public:
  // The empty root frame: no pairs, no deadline, never cancelled.
  Frame() noexcept = default;
  Frame(const Frame& other) noexcept : node_(other.node_) { AddRef(); }
  Frame(Frame&& other) noexcept : node_(std::exchange(other.node_, nullptr)) {}
  Frame& operator=(const Frame& other) noexcept {
    Frame(other).swap(*this);
    return *this;
  }
  Frame& operator=(Frame&& other) noexcept {
    Frame(std::move(other)).swap(*this);
    return *this;
  }
  ~Frame() { ctx_internal::ReleaseNode(node_); }
  void swap(Frame& other) noexcept { std::swap(node_, other.node_); }

  // A child frame with `pairs` set on it. Later pairs shadow earlier ones and shadow the
  // parent's pairs of the same key; empty pairs are skipped. Costs one allocation (none when
  // `pairs` holds no non-empty pair: the result is this frame).
  Frame With(std::span<const Pair> pairs) const { return WithPairs(pairs.data(), pairs.size()); }
  Frame With(const PairList& pairs) const { return WithPairs(pairs.data(), pairs.size()); }
  // As With(const PairList&), but moves the pairs into the frame instead of copying them (a
  // string value or a rollback is not copied). `pairs` keeps its size; the pairs the frame took
  // are left empty, the others (empty ones, and earlier pairs of a key set twice) unchanged.
  // NOTE: on an exception (a value's copy that throws, out of memory) the frame is not made and
  // some of `pairs` may already be empty.
  Frame With(PairList&& pairs) const {
    return WithPairs(pairs.data(), pairs.size(), /*movable=*/pairs.data());
  }
  Frame With(std::initializer_list<Pair> pairs) const {
    return With(std::span<const Pair>(pairs.begin(), pairs.size()));
  }
  template <class T>
  Frame With(const Key<T>& key, std::type_identity_t<T> value) const {
    const Pair pair = Pair::Of(key, std::move(value));
    return With(std::span<const Pair>(&pair, 1));
  }

  // A child frame for a new call: keeps only the pairs whose key inherit()s, all of them now
  // ValueOrigin::kInherited; keeps the deadline and the cancellation scope.
  Frame Fork() const { return node_ == nullptr ? Frame() : ForkNode(); }

  // The value of `key`, or nullptr when absent. Never allocates; does not walk the chain.
  template <class T>
  const T* Find(const Key<T>& key) const {
    const std::uintptr_t entry = ctx_internal::Lookup(node_, &key);
    return entry == 0 ? nullptr : ctx_internal::EntryPair(entry)->As(key);
  }
  // As Find, but only a value set on this frame since the last Fork() (kSetHere); an
  // inherited value yields nullptr.
  template <class T>
  const T* FindSetHere(const Key<T>& key) const {
    const std::uintptr_t entry = ctx_internal::Lookup(node_, &key);
    return (entry & ctx_internal::kSetHereBit) == 0 ? nullptr
                                                    : ctx_internal::EntryPair(entry)->As(key);
  }
  // Whether the value of `key` was set here, inherited through a Fork, or is absent.
  ValueOrigin Origin(const KeyBase& key) const {
    const std::uintptr_t entry = ctx_internal::Lookup(node_, &key);
    if (entry == 0) return ValueOrigin::kAbsent;
    return (entry & ctx_internal::kSetHereBit) != 0 ? ValueOrigin::kSetHere
                                                    : ValueOrigin::kInherited;
  }
  bool Contains(const KeyBase& key) const { return ctx_internal::Lookup(node_, &key) != 0; }

  // Number of visible pairs.
  std::size_t size() const { return node_ == nullptr ? 0 : node_->index_size; }
  bool empty() const { return size() == 0; }

  // Calls `fn(const Pair&, ValueOrigin)` for every visible pair, in no particular order.
  template <class Fn>
  void ForEach(Fn&& fn) const {
    for (std::size_t i = 0; i < size(); ++i) {
      const std::uintptr_t entry = node_->entries[i];
      fn(*ctx_internal::EntryPair(entry), (entry & ctx_internal::kSetHereBit) != 0
                                              ? ValueOrigin::kSetHere
                                              : ValueOrigin::kInherited);
    }
  }

  // A child frame whose deadline is the earlier of this frame's and `deadline`.
  Frame WithDeadline(Deadline deadline) const;
  // A child frame whose deadline is the earlier of this frame's and DeadlineAfter(now, timeout):
  // Clock::duration::max() adds no deadline; a timeout <= 0 is a deadline that has passed.
  Frame WithTimeout(Clock::duration timeout) const;
  // The deadline, or nullopt when there is none.
  std::optional<Deadline> deadline() const {
    if (node_ == nullptr || node_->deadline == Deadline::max()) return std::nullopt;
    return node_->deadline;
  }

  // A cancellable child and the handle that cancels it. Cancelling this frame's scope (an
  // ancestor's Canceller) also cancels the child; cancelling the child leaves this frame alone.
  std::pair<Frame, Canceller> WithCancel() const;
  // True once the frame's scope was cancelled or its deadline has passed.
  bool cancelled() const;
  // A token that is stopped when the frame's scope is cancelled. A frame without a scope
  // returns a token that never stops.
  // NOTE: reaching the deadline does not stop the token by itself; dispatchers cancel the
  // scope of a call at its deadline.
  std::stop_token stop_token() const;

  // "{name=value, ...}" sorted by name, with "*" marking inherited values.
  std::string DebugString() const;

 private:
  friend class Canceller;
  explicit Frame(const ctx_internal::FrameNode* node) noexcept : node_(node) {}
  // With over `count` pairs; moves from `movable` (the same array) when it is not null.
  Frame WithPairs(const Pair* pairs, std::size_t count, Pair* movable = nullptr) const;
  // Fork of a frame that has a node.
  Frame ForkNode() const;
  static bool PlainPair(const Pair& pair);
  void AddRef() const noexcept {
    if (node_ != nullptr) node_->refs.fetch_add(1, std::memory_order_relaxed);
  }

  const ctx_internal::FrameNode* node_ = nullptr;
};

// Cancels the frame returned beside it by Frame::WithCancel, and every frame derived from it.
//
// Thread-safety: thread-safe; Cancel may race with readers of cancelled()/stop_token().
class Canceller {
 public:
  Canceller() = default;
  // Requests stop on the scope; idempotent. A default-constructed Canceller does nothing.
  void Cancel() const;
  bool cancelled() const;

 private:
  friend class Frame;
  explicit Canceller(Frame frame) : frame_(std::move(frame)) {}
  Frame frame_;
};

}  // namespace framekit

#endif  // FRAMEKIT_CTX_FRAME_H_
