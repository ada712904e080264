#include "framekit/ctx/frame.h"

#include <algorithm>
#include <cassert>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define FRAMEKIT_POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define FRAMEKIT_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define FRAMEKIT_POISON(p, n) ((void)(p), (void)(n))
#define FRAMEKIT_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace framekit {
namespace ctx_internal {

// A cancellation scope: its own stop source, linked to the enclosing scope's token so that
// cancelling an ancestor cancels it.
struct CancelScope {
  // Cancels `target` when the enclosing scope is cancelled. Forwarding is iterative: the
  // outermost forward on a thread drains a worklist, and forwards that fire inside it (one per
  // descendant scope) only append to that list. Cancelling the root of a chain of any depth
  // therefore uses a constant amount of stack.
  struct Forward {
    std::stop_source target;
    void operator()() const noexcept;
  };

  explicit CancelScope(const CancelScope* enclosing) {
    if (enclosing != nullptr) {
      link.emplace(enclosing->source.get_token(), Forward{source});
    }
  }

  std::stop_source source;
  std::optional<std::stop_callback<Forward>> link;
};

void CancelScope::Forward::operator()() const noexcept {
  thread_local std::vector<std::stop_source>* pending = nullptr;
  if (pending != nullptr) {
    try {
      pending->push_back(target);
      return;
    } catch (...) {
      // Out of memory: fall back to forwarding directly (recursion, as before).
    }
    std::stop_source(target).request_stop();
    return;
  }
  std::vector<std::stop_source> worklist;
  pending = &worklist;
  std::stop_source(target).request_stop();
  while (!worklist.empty()) {
    std::stop_source next = std::move(worklist.back());
    worklist.pop_back();
    next.request_stop();
  }
  pending = nullptr;
}

namespace {

constexpr std::less<const KeyBase*> kKeyLess;

// Layout of one allocation: FrameNode | Pair[own] | const KeyBase*[cap] | uintptr_t[cap].
struct Block {
  static std::size_t Size(std::size_t own, std::size_t cap) {
    return sizeof(FrameNode) + own * sizeof(Pair) +
           cap * (sizeof(const KeyBase*) + sizeof(std::uintptr_t));
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

// Frame blocks are short-lived (one per call, made and released within it) and few sizes
// recur, so each thread keeps the blocks it released, by size class, and reuses them: a call's
// frame then costs no malloc and no free, which were half of With. A block released on another
// thread than the one that made it goes to the releasing thread's cache (it is plain
// operator-new memory, owned by no thread). Each thread keeps at most kCacheBytes; its cache
// is freed when the thread ends, and a block released after that (by another thread_local's
// destructor) goes straight back to operator delete.
// Under AddressSanitizer the cache is off: every block goes straight back to operator delete,
// where ASan's quarantine reports a use after release, and LeakSanitizer does not read the links
// through cached (poisoned) blocks, so the blocks cached by a thread still alive at exit (a gRPC
// thread) would read as leaks.
class NodeCache {
 public:
#if defined(__SANITIZE_ADDRESS__)
  static constexpr bool kEnabled = false;
#else
  static constexpr bool kEnabled = true;
#endif
  static constexpr std::size_t kClassBytes = 64;
  static constexpr std::size_t kClasses = 16;  // blocks of up to 1 KiB are cached
  static constexpr std::size_t kCacheBytes = 16 * 1024;

  // The block size to allocate for `bytes`: a whole class where the block is cacheable.
  static std::size_t Rounded(std::size_t bytes) {
    const std::size_t rounded = (bytes + kClassBytes - 1) / kClassBytes * kClassBytes;
    return rounded <= kClasses * kClassBytes ? rounded : bytes;
  }

  static void* Allocate(std::size_t bytes) {
    if (kEnabled && bytes <= kClasses * kClassBytes) {
      State& state = tls_state;
      const std::size_t cls = bytes / kClassBytes - 1;
      if (void* block = state.heads[cls]; block != nullptr) {
        FRAMEKIT_UNPOISON(block, bytes);
        state.heads[cls] = *static_cast<void**>(block);
        state.cached_bytes -= bytes;
        return block;
      }
    }
    return ::operator new(bytes);
  }

  static void Release(void* block, std::size_t bytes) noexcept {
    State& state = tls_state;
    if (!kEnabled || bytes > kClasses * kClassBytes || bytes % kClassBytes != 0 || state.dead ||
        state.cached_bytes + bytes > kCacheBytes) {
      ::operator delete(block);
      return;
    }
    if (!state.registered) {
      state.registered = true;
      // The first use of the thread_local constructs it, which registers its destructor.
      Drain* drain = &tls_drain;
      asm volatile("" : : "r"(drain) : "memory");
    }
    const std::size_t cls = bytes / kClassBytes - 1;
    *static_cast<void**>(block) = state.heads[cls];
    state.heads[cls] = block;
    state.cached_bytes += bytes;
    FRAMEKIT_POISON(block, bytes);
  }

 private:
  // Trivially constructible and destructible: reading it costs a thread-pointer offset.
  struct State {
    void* heads[kClasses];  // singly linked through each block's first word
    std::size_t cached_bytes;
    bool registered;
    bool dead;
  };
  // Frees this thread's cache when the thread ends.
  struct Drain {
    ~Drain() {
      State& state = tls_state;
      state.dead = true;
      for (std::size_t cls = 0; cls < kClasses; ++cls) {
        while (void* block = state.heads[cls]) {
          FRAMEKIT_UNPOISON(block, (cls + 1) * kClassBytes);
          state.heads[cls] = *static_cast<void**>(block);
          ::operator delete(block);
        }
      }
      state.cached_bytes = 0;
    }
  };
  static thread_local State tls_state;
  static thread_local Drain tls_drain;
};

thread_local NodeCache::State NodeCache::tls_state = {};
thread_local NodeCache::Drain NodeCache::tls_drain;

// A node that owns its own index of `cap` slots and room for `own` pairs (not constructed),
// and inherits deadline and cancellation from `parent`, which it references.
FrameNode* NewNode(const FrameNode* parent, std::size_t own, std::size_t cap) {
  const std::size_t bytes = NodeCache::Rounded(Block::Size(own, cap));
  void* memory = NodeCache::Allocate(bytes);
  auto* node = ::new (memory) FrameNode();
  // A block too big for the field (never cached: not a class size) records a size that is not.
  constexpr std::size_t kMaxRecorded = (std::size_t{1} << 31) - 1;
  node->block_bytes = static_cast<std::uint32_t>(std::min(bytes, kMaxRecorded));
  node->plain = 1;
  node->keys = Block::Keys(node, own);
  node->entries = Block::Entries(node, own, cap);
  if (parent != nullptr) {
    parent->refs.fetch_add(1, std::memory_order_relaxed);
    node->parent = parent;
    node->deadline = parent->deadline;
    node->cancel = parent->cancel;
    node->plain = parent->plain;
  }
  return node;
}

// A node that references no parent and copies `parent`'s deadline: for a parent whose pairs
// the node copies (see CopiesParent).
FrameNode* NewCopyingNode(const FrameNode* parent, std::size_t own, std::size_t cap) {
  FrameNode* node = NewNode(nullptr, own, cap);
  node->deadline = parent->deadline;
  return node;
}

// Whether a child of `parent` copies its pairs rather than referencing it (see FrameNode).
bool CopiesParent(const FrameNode* parent) {
  return parent != nullptr && parent->plain != 0 && parent->cancel == nullptr &&
         parent->index_size <= kCopyParentLimit;
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
  // A plain node's pairs (all visible, so all plain) own nothing: no destructor to run.
  if (node->plain == 0) {
    Pair* pairs = Block::Pairs(mutable_node);
    for (std::uint32_t i = 0; i < node->own_count; ++i) pairs[i].~Pair();
  }
  delete node->owned_cancel;
  const std::size_t bytes = node->block_bytes;
  mutable_node->~FrameNode();
  NodeCache::Release(mutable_node, bytes);
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
  //
  // Memory ordering: a count of 1 seen with an acquire load means this reference is the only
  // one: no other thread holds one to copy from, so no increment can race, and the acquire
  // pairs with the release of every earlier decrement. The node can then be destroyed without
  // the read-modify-write (which costs as much as the rest of a short-lived frame's release).
  while (node != nullptr && (node->refs.load(std::memory_order_acquire) == 1 ||
                             node->refs.fetch_sub(1, std::memory_order_acq_rel) == 1)) {
    const FrameNode* parent = node->parent;
    DestroyNode(node);
    node = parent;
  }
}

}  // namespace ctx_internal

using ctx_internal::FrameNode;
using ctx_internal::kSetHereBit;

namespace {

// (key, position) of one non-empty pair being added, for the sort of long lists.
struct Slot {
  const KeyBase* key;
  std::uint32_t position;
};

// Orders slots by key, the last position of a key first.
bool SlotBefore(const Slot& a, const Slot& b) {
  return ctx_internal::kKeyLess(a.key, b.key) || (a.key == b.key && a.position > b.position);
}

// The keys being added, sorted by address, one per key (the last pair of a key wins), each with
// the position of its pair. Two arrays, not one of (key, position) structs: the insertion sort
// reads back entries it has just written, and a 16-byte copy of a struct written as two smaller
// stores cannot be forwarded from them (a stall of a dozen cycles per step, a third of With's
// time at 4 pairs).
struct SortedKeys {
  const KeyBase** keys;
  std::uint32_t* positions;
  std::size_t size = 0;

  // Inserts one pair's key. With usually adds a handful of pairs: an insertion sort that drops
  // a key's earlier entry as it goes is the fastest for those (one pass, no dedupe pass). It
  // shifts while it scans: a separate shift loop becomes a call of memmove.
  void Insert(const KeyBase* key, std::uint32_t position) {
    std::size_t j = size;
    while (j > 0 && ctx_internal::kKeyLess(key, keys[j - 1])) {
      keys[j] = keys[j - 1];
      positions[j] = positions[j - 1];
      --j;
    }
    if (j > 0 && keys[j - 1] == key) {
      positions[j - 1] = position;              // a later pair of the same key wins
      for (std::size_t m = j; m < size; ++m) {  // close the gap
        keys[m] = keys[m + 1];
        positions[m] = positions[m + 1];
      }
      return;
    }
    keys[j] = key;
    positions[j] = position;
    ++size;
  }

  // Longer lists: std::sort (O(n log n)) of (key, position) slots, then one pass that keeps
  // the first slot of each key (its last pair).
  void SortAll(Slot* slots, std::size_t n) {
    std::sort(slots, slots + n, SlotBefore);
    for (std::size_t i = 0; i < n; ++i) {
      if (size != 0 && keys[size - 1] == slots[i].key) continue;
      keys[size] = slots[i].key;
      positions[size++] = slots[i].position;
    }
  }
};

}  // namespace

// Plain: a one-word value and no rollback, so a copy is a few word stores that cannot throw.
inline bool Frame::PlainPair(const Pair& pair) {
  return pair.ops_ == nullptr && pair.rollback_ == nullptr;
}

Frame Frame::WithPairs(const Pair* pairs, std::size_t count, Pair* movable) const {
  // Up to 16 pairs are ordered on the stack; more go to the heap.
  constexpr std::size_t kStackKeys = 16;
  const KeyBase* stack_keys[kStackKeys];
  std::uint32_t stack_positions[kStackKeys];
  std::unique_ptr<const KeyBase*[]> heap_keys;
  std::unique_ptr<std::uint32_t[]> heap_positions;
  SortedKeys sorted{stack_keys, stack_positions};
  if (count <= kStackKeys) {
    for (std::size_t i = 0; i < count; ++i) {
      if (!pairs[i].empty()) sorted.Insert(pairs[i].key_, static_cast<std::uint32_t>(i));
    }
  } else {
    auto slots = std::make_unique<Slot[]>(count);
    std::size_t n = 0;
    for (std::size_t i = 0; i < count; ++i) {
      if (!pairs[i].empty()) slots[n++] = {pairs[i].key_, static_cast<std::uint32_t>(i)};
    }
    heap_keys = std::make_unique<const KeyBase*[]>(n);
    heap_positions = std::make_unique<std::uint32_t[]>(n);
    sorted = {heap_keys.get(), heap_positions.get()};
    sorted.SortAll(slots.get(), n);
  }
  const std::size_t own = sorted.size;
  if (own == 0) return *this;
  const std::size_t inherited = node_ == nullptr ? 0 : node_->index_size;
  const bool copy_parent = ctx_internal::CopiesParent(node_);

  FrameNode* node = copy_parent
                        ? ctx_internal::NewCopyingNode(node_, own + inherited, own + inherited)
                        : ctx_internal::NewNode(node_, own, own + inherited);
  Frame result(node);  // owns the node from here on: an exception below releases it
  Pair* block_pairs = ctx_internal::Block::Pairs(node);
  auto* keys = const_cast<const KeyBase**>(node->keys);
  auto* entries = const_cast<std::uintptr_t*>(node->entries);
  std::size_t out = 0;
  // Both steps are inlined: called out of line (GCC's choice at -O2) they read every capture
  // through memory, which made With a third slower.
  // The parent's pair at index position `p`: copied into the block, or referenced.
  auto take_old = [&](std::size_t p) __attribute__((always_inline)) {
    keys[out] = node_->keys[p];
    std::uintptr_t entry = node_->entries[p];
    if (copy_parent) {
      Pair* copy = ::new (&block_pairs[node->own_count]) Pair(*ctx_internal::EntryPair(entry));
      ++node->own_count;
      entry = reinterpret_cast<std::uintptr_t>(copy) | (entry & kSetHereBit);
    }
    entries[out++] = entry;
  };
  // The new pair of sorted entry `k`, copied or moved into the block.
  auto take_new = [&](std::size_t k) __attribute__((always_inline)) {
    const std::uint32_t position = sorted.positions[k];
    Pair* pair = movable != nullptr ? ::new (&block_pairs[node->own_count])
                                          Pair(std::move(movable[position]))
                                    : ::new (&block_pairs[node->own_count]) Pair(pairs[position]);
    ++node->own_count;
    if (!PlainPair(*pair)) node->plain = 0;
    keys[out] = sorted.keys[k];
    entries[out++] = reinterpret_cast<std::uintptr_t>(pair) | kSetHereBit;
  };
  // Merge the parent's sorted index with the new sorted keys; new pairs shadow old ones.
  std::size_t p = 0, k = 0;
  while (p < inherited && k < own) {
    const KeyBase* old_key = node_->keys[p];
    if (ctx_internal::kKeyLess(old_key, sorted.keys[k])) {
      take_old(p++);
      continue;
    }
    if (old_key == sorted.keys[k]) ++p;  // shadowed by the new pair
    take_new(k++);
  }
  while (p < inherited) take_old(p++);
  while (k < own) take_new(k++);
  node->index_size = static_cast<std::uint32_t>(out);
  return result;
}

Frame Frame::ForkNode() const {
  std::size_t kept = 0;
  for (std::uint32_t i = 0; i < node_->index_size; ++i) {
    if (node_->keys[i]->inherit()) ++kept;
  }
  if (kept == 0 && node_->deadline == Deadline::max() && node_->cancel == nullptr) {
    return Frame();
  }
  const bool copy_parent = ctx_internal::CopiesParent(node_);
  FrameNode* node = copy_parent ? ctx_internal::NewCopyingNode(node_, kept, kept)
                                : ctx_internal::NewNode(node_, 0, kept);
  Pair* block_pairs = ctx_internal::Block::Pairs(node);
  auto* keys = const_cast<const KeyBase**>(node->keys);
  auto* entries = const_cast<std::uintptr_t*>(node->entries);
  std::size_t out = 0;
  for (std::uint32_t i = 0; i < node_->index_size; ++i) {
    if (!node_->keys[i]->inherit()) continue;
    const Pair* pair = ctx_internal::EntryPair(node_->entries[i]);
    if (copy_parent) pair = ::new (&block_pairs[out]) Pair(*pair);  // plain: cannot throw
    keys[out] = node_->keys[i];
    entries[out] = reinterpret_cast<std::uintptr_t>(pair);  // inherited: no kSetHereBit
    ++out;
  }
  if (copy_parent) node->own_count = static_cast<std::uint32_t>(out);
  node->index_size = static_cast<std::uint32_t>(out);
  return Frame(node);
}

Frame Frame::WithDeadline(Deadline deadline) const {
  if (node_ != nullptr && node_->deadline <= deadline) return *this;
  FrameNode* node = ctx_internal::NewSharingNode(node_);
  node->deadline = deadline;
  return Frame(node);
}

Frame Frame::WithTimeout(Clock::duration timeout) const {
  const Deadline deadline = DeadlineAfter(Clock::now(), timeout);
  if (deadline == Deadline::max()) return *this;
  return WithDeadline(deadline);
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
