#include "framekit/ctx/frame.h"

#include <algorithm>
#include <cassert>
#include <functional>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "boost/container/small_vector.hpp"

namespace framekit {
namespace ctx_internal {

// A cancellation scope: its own stop source, linked to the enclosing scope's token so that
// cancelling an ancestor cancels it.
struct CancelScope {
  struct Forward {
    std::stop_source target;
    void operator()() const noexcept { target.request_stop(); }
  };

  explicit CancelScope(const CancelScope* enclosing) {
    if (enclosing != nullptr) {
      link.emplace(enclosing->source.get_token(), Forward{source});
    }
  }

  std::stop_source source;
  std::optional<std::stop_callback<Forward>> link;
};

namespace {

constexpr std::less<const KeyBase*> kKeyLess;

// Layout of one allocation: FrameNode | Pair[own] | const KeyBase*[cap] | uintptr_t[cap].
struct Block {
  static std::size_t Size(std::size_t own, std::size_t cap) {
    return sizeof(FrameNode) + own * sizeof(Pair) + cap * (sizeof(const KeyBase*) +
                                                           sizeof(std::uintptr_t));
  }
  static Pair* Pairs(FrameNode* node) { return reinterpret_cast<Pair*>(node + 1); }
  static const KeyBase** Keys(FrameNode* node, std::size_t own) {
    return reinterpret_cast<const KeyBase**>(Pairs(node) + own);
  }
  static std::uintptr_t* Entries(FrameNode* node, std::size_t own, std::size_t cap) {
    return reinterpret_cast<std::uintptr_t*>(Keys(node, own) + cap);
  }
};
static_assert(sizeof(FrameNode) % alignof(Pair) == 0);
static_assert(alignof(FrameNode) >= alignof(Pair));

// A node that owns its own index of `cap` slots and room for `own` pairs (not constructed),
// and inherits deadline and cancellation from `parent`, which it references.
FrameNode* NewNode(const FrameNode* parent, std::size_t own, std::size_t cap) {
  void* memory = ::operator new(Block::Size(own, cap));
  auto* node = ::new (memory) FrameNode();
  node->index_capacity = static_cast<std::uint32_t>(cap);
  node->keys = Block::Keys(node, own);
  node->entries = Block::Entries(node, own, cap);
  if (parent != nullptr) {
    parent->refs.fetch_add(1, std::memory_order_relaxed);
    node->parent = parent;
    node->deadline = parent->deadline;
    node->cancel = parent->cancel;
  }
  return node;
}

// A node that shares its parent's index (no pairs of its own): for deadline and cancellation.
FrameNode* NewSharingNode(const FrameNode* parent) {
  FrameNode* node = NewNode(parent, 0, 0);
  if (parent != nullptr) {
    node->index_size = parent->index_size;
    node->keys = parent->keys;
    node->entries = parent->entries;
  }
  return node;
}

void DestroyNode(const FrameNode* node) noexcept {
  auto* mutable_node = const_cast<FrameNode*>(node);
  Pair* pairs = Block::Pairs(mutable_node);
  for (std::uint32_t i = 0; i < node->own_count; ++i) pairs[i].~Pair();
  delete node->owned_cancel;
  mutable_node->~FrameNode();
  ::operator delete(mutable_node);
}

}  // namespace

std::uintptr_t LookupSorted(const FrameNode& node, const KeyBase* key) noexcept {
  const KeyBase* const* begin = node.keys;
  const KeyBase* const* end = node.keys + node.index_size;
  const KeyBase* const* it = std::lower_bound(begin, end, key, kKeyLess);
  return (it != end && *it == key) ? node.entries[it - begin] : 0;
}

void ReleaseNode(const FrameNode* node) noexcept {
  // Iterative, so that releasing a long chain never recurses.
  while (node != nullptr && node->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    const FrameNode* parent = node->parent;
    DestroyNode(node);
    node = parent;
  }
}

}  // namespace ctx_internal

using ctx_internal::FrameNode;
using ctx_internal::kSetHereBit;

Frame Frame::With(std::span<const Pair> pairs) const {
  // (key, position) of every non-empty pair; the last pair of a key wins.
  struct Slot {
    const KeyBase* key;
    std::uint32_t position;
  };
  boost::container::small_vector<Slot, 16> slots;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    if (!pairs[i].empty()) slots.push_back({pairs[i].key_, static_cast<std::uint32_t>(i)});
  }
  if (slots.empty()) return *this;
  std::sort(slots.begin(), slots.end(), [](const Slot& a, const Slot& b) {
    if (a.key != b.key) return ctx_internal::kKeyLess(a.key, b.key);
    return a.position > b.position;
  });
  const auto last = std::unique(slots.begin(), slots.end(),
                                [](const Slot& a, const Slot& b) { return a.key == b.key; });
  const std::size_t own = static_cast<std::size_t>(last - slots.begin());
  const std::size_t inherited = node_ == nullptr ? 0 : node_->index_size;

  FrameNode* node = ctx_internal::NewNode(node_, own, own + inherited);
  Frame result(node);  // owns the node from here on: an exception below releases it
  Pair* own_pairs = ctx_internal::Block::Pairs(node);
  for (std::size_t i = 0; i < own; ++i) {
    ::new (&own_pairs[i]) Pair(pairs[slots[i].position]);
    node->own_count = static_cast<std::uint32_t>(i + 1);
  }

  // Merge the parent's sorted index with the new sorted keys; new pairs shadow old ones.
  auto* keys = const_cast<const KeyBase**>(node->keys);
  auto* entries = const_cast<std::uintptr_t*>(node->entries);
  std::size_t p = 0, n = 0, out = 0;
  while (p < inherited || n < own) {
    const bool take_new =
        p == inherited ||
        (n < own && !ctx_internal::kKeyLess(node_->keys[p], slots[n].key));
    if (take_new) {
      if (p < inherited && node_->keys[p] == slots[n].key) ++p;  // shadowed
      keys[out] = slots[n].key;
      entries[out] = reinterpret_cast<std::uintptr_t>(&own_pairs[n]) | kSetHereBit;
      ++n;
    } else {
      keys[out] = node_->keys[p];
      entries[out] = node_->entries[p];
      ++p;
    }
    ++out;
  }
  node->index_size = static_cast<std::uint32_t>(out);
  return result;
}

Frame Frame::Fork() const {
  if (node_ == nullptr) return Frame();
  std::size_t kept = 0;
  for (std::uint32_t i = 0; i < node_->index_size; ++i) {
    if (node_->keys[i]->inherit()) ++kept;
  }
  if (kept == 0 && node_->deadline == Deadline::max() && node_->cancel == nullptr) {
    return Frame();
  }
  FrameNode* node = ctx_internal::NewNode(node_, 0, kept);
  auto* keys = const_cast<const KeyBase**>(node->keys);
  auto* entries = const_cast<std::uintptr_t*>(node->entries);
  std::size_t out = 0;
  for (std::uint32_t i = 0; i < node_->index_size; ++i) {
    if (!node_->keys[i]->inherit()) continue;
    keys[out] = node_->keys[i];
    entries[out] = node_->entries[i] & ~kSetHereBit;
    ++out;
  }
  node->index_size = static_cast<std::uint32_t>(out);
  return Frame(node);
}

Frame Frame::WithDeadline(Deadline deadline) const {
  if (node_ != nullptr && node_->deadline <= deadline) return *this;
  FrameNode* node = ctx_internal::NewSharingNode(node_);
  node->deadline = deadline;
  return Frame(node);
}

std::pair<Frame, Canceller> Frame::WithCancel() const {
  FrameNode* node = ctx_internal::NewSharingNode(node_);
  Frame frame(node);
  node->owned_cancel = new ctx_internal::CancelScope(node_ == nullptr ? nullptr : node_->cancel);
  node->cancel = node->owned_cancel;
  Canceller canceller(frame);
  return {std::move(frame), std::move(canceller)};
}

bool Frame::cancelled() const {
  if (node_ == nullptr) return false;
  if (node_->cancel != nullptr && node_->cancel->source.stop_requested()) return true;
  return node_->deadline != Deadline::max() && Clock::now() >= node_->deadline;
}

std::stop_token Frame::stop_token() const {
  if (node_ == nullptr || node_->cancel == nullptr) return {};
  return node_->cancel->source.get_token();
}

std::string Frame::DebugString() const {
  std::vector<std::string> parts;
  parts.reserve(size());
  ForEach([&parts](const Pair& pair, ValueOrigin origin) {
    // Inherited values are marked with a leading "*".
    parts.push_back((origin == ValueOrigin::kInherited ? "*" : "") + pair.DebugString());
  });
  std::sort(parts.begin(), parts.end());
  return "{" + absl::StrJoin(parts, ", ") + "}";
}

void Canceller::Cancel() const {
  if (frame_.node_ != nullptr && frame_.node_->owned_cancel != nullptr) {
    frame_.node_->owned_cancel->source.request_stop();
  }
}

bool Canceller::cancelled() const {
  return frame_.node_ != nullptr && frame_.node_->owned_cancel != nullptr &&
         frame_.node_->owned_cancel->source.stop_requested();
}

}  // namespace framekit
