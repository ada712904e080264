// Pair and PairList: a key with its value, type-erased, and the small-buffer list of them that
// frame resolvers append to.
//
// Example:
//   inline const framekit::Key<std::string> kTenant{"app.tenant"};
//
//   framekit::PairList pairs;
//   pairs.push_back(framekit::Pair::Of(kTenant, "acme"));
//   const std::string* tenant = pairs[0].As(kTenant);  // "acme"
//   const int* wrong = pairs[0].As(kRetries);          // nullptr: another key
#ifndef FRAMEKIT_CTX_PAIR_H_
#define FRAMEKIT_CTX_PAIR_H_

#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "boost/container/small_vector.hpp"
#include "framekit/ctx/key.h"

namespace framekit {

namespace ctx_internal {

// How to copy, relocate and destroy a stored value that is not a plain word.
struct ValueOps {
  void (*copy)(const void* src, void* dst);
  void (*relocate)(void* src, void* dst) noexcept;  // move-constructs dst, destroys src
  void (*destroy)(void* value) noexcept;
};

template <class S>
inline constexpr ValueOps kValueOps = {
    [](const void* src, void* dst) { ::new (dst) S(*std::launder(static_cast<const S*>(src))); },
    [](void* src, void* dst) noexcept {
      S* from = std::launder(static_cast<S*>(src));
      ::new (dst) S(std::move(*from));
      from->~S();
    },
    [](void* value) noexcept { std::launder(static_cast<S*>(value))->~S(); },
};

}  // namespace ctx_internal

class Frame;

// A key and its value, type-erased. The value is reachable only through the key it was made
// with: `As(key)` compares key identities (addresses), so a wrong-typed read is impossible.
//
// A pair may carry a rollback action: a resolver that opened a resource for a call attaches
// the action that releases it. FrameResolvers::Resolve runs the rollbacks of the pairs it
// appended, in reverse order, when a later resolver fails.
//
// A default-constructed Pair is empty: no key, no value. Frame::With skips empty pairs.
//
// Thread-safety: immutable once built; concurrent reads and copies are safe.
class Pair {
 public:
  // Releases what the resolver that made this pair opened. Runs at most once per Resolve call.
  using Rollback = std::function<absl::Status()>;

  // Makes a pair of `key` and `value`. `T` is deduced from the key only, so
  // `Pair::Of(kName, "text")` converts the literal to the key's type.
  template <class T>
  static Pair Of(const Key<T>& key, std::type_identity_t<T> value) {
    Pair pair;
    pair.Emplace<T>(std::move(value));
    pair.key_ = &key;
    return pair;
  }

  // As above, with a rollback action (see the class comment). An empty `rollback` is none.
  template <class T>
  static Pair Of(const Key<T>& key, std::type_identity_t<T> value, Rollback rollback) {
    Pair pair = Of(key, std::move(value));
    if (rollback) pair.rollback_ = std::make_shared<const Rollback>(std::move(rollback));
    return pair;
  }

  Pair() noexcept {}  // NOLINT(modernize-use-equals-default): storage_ stays uninitialized
  Pair(const Pair& other) : key_(other.key_), ops_(other.ops_), rollback_(other.rollback_) {
    if (ops_ == nullptr) {
      std::memcpy(storage_, other.storage_, sizeof(std::uintptr_t));
    } else {
      ops_->copy(other.storage_, storage_);
    }
  }
  Pair(Pair&& other) noexcept
      : key_(other.key_), ops_(other.ops_), rollback_(std::move(other.rollback_)) {
    if (ops_ == nullptr) {
      std::memcpy(storage_, other.storage_, sizeof(std::uintptr_t));
    } else {
      ops_->relocate(other.storage_, storage_);
      other.ops_ = nullptr;
    }
    other.key_ = nullptr;
  }
  Pair& operator=(const Pair& other) {
    if (this != &other) {
      Pair copy(other);
      *this = std::move(copy);
    }
    return *this;
  }
  Pair& operator=(Pair&& other) noexcept {
    if (this != &other) {
      this->~Pair();
      ::new (this) Pair(std::move(other));
    }
    return *this;
  }
  ~Pair() {
    if (ops_ != nullptr) ops_->destroy(storage_);
  }

  // True for a default-constructed (or moved-from) pair.
  bool empty() const { return key_ == nullptr; }
  // The key's name; empty for an empty pair.
  std::string_view name() const { return key_ == nullptr ? std::string_view() : key_->name(); }
  // The key this pair was made with. Precondition: !empty().
  const KeyBase& key() const { return *key_; }
  // True when this pair was made with `key`.
  bool Is(const KeyBase& key) const { return key_ == &key; }

  // The value, or nullptr when this pair was made with another key.
  template <class T>
  const T* As(const Key<T>& key) const {
    return key_ == &key ? &ctx_internal::StoredValue<T>(storage_) : nullptr;
  }

  // The rollback action, or nullptr when there is none.
  const Rollback* rollback() const { return rollback_.get(); }

  // "name=value" for diagnostics; values of types without a text form print as a marker.
  std::string DebugString() const {
    if (key_ == nullptr) return "<empty>";
    std::string out(key_->name());
    out.push_back('=');
    out.append(key_->format_(storage_));
    return out;
  }

 private:
  friend class Frame;

  template <class T>
  void Emplace(T&& value) {
    using S = ctx_internal::StoredType<T>;
    if constexpr (ctx_internal::kWordValue<T>) {
      // One whole-word store (the bytes past sizeof(T) zero): the copy and move constructors
      // read the whole word, and reading it right after a narrower store of the value stalls
      // store-to-load forwarding (about 15 cycles per pair, most of a resolver's cost).
      std::uintptr_t word = 0;
      std::memcpy(&word, std::addressof(value), sizeof(T));
      std::memcpy(storage_, &word, sizeof(word));
    } else if constexpr (ctx_internal::kInlineValue<T>) {
      ::new (static_cast<void*>(storage_)) T(std::move(value));
      ops_ = &ctx_internal::kValueOps<S>;
    } else {
      ::new (static_cast<void*>(storage_)) S(std::make_shared<const T>(std::move(value)));
      ops_ = &ctx_internal::kValueOps<S>;
    }
  }

  const KeyBase* key_ = nullptr;
  // nullptr: the value (if any) is one trivially copyable word at the start of storage_.
  const ctx_internal::ValueOps* ops_ = nullptr;
  std::shared_ptr<const Rollback> rollback_;
  alignas(std::uintptr_t) unsigned char storage_[ctx_internal::kPairInlineBytes];
};

static_assert(std::is_nothrow_move_constructible_v<Pair>);

// Inline room for this many pairs: resolving a handful of pairs allocates nothing.
inline constexpr std::size_t kPairListInline = 8;

// The list resolvers append to: a Boost.Container small_vector, so push_back, size,
// operator[], begin/end, reserve and resize are the usual ones. Frame::With takes it directly
// (Boost 1.74's small_vector is not a std::span source).
using PairList = boost::container::small_vector<Pair, kPairListInline>;

}  // namespace framekit

#endif  // FRAMEKIT_CTX_PAIR_H_
