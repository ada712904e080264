// Typed keys for frame pairs and boot-time services.
//
// A key's identity is its address: two keys with the same name are different keys. Define each
// key once, as a namespace-scope constant, and refer to it everywhere:
//
// Example:
//   inline const framekit::Key<int> kRetries{"app.retries"};
//   inline const framekit::Key<std::string> kTenant{"app.tenant", /*inherit=*/true};
//
//   framekit::Frame frame = framekit::Frame().With(kRetries, 3);
//   const int* retries = frame.Find(kRetries);  // points at 3
//
// Constants for applications, accessor functions for framekit's own keys. The house style
// defines keys as `inline const Key<T> kName{...}` constants, and applications should. The keys
// framekit itself defines in compiled sources and hands to other translation units
// (CallerKey(), TraceIdKey(), net::NetworkKey()) are functions returning a reference to a
// function-local static instead: a namespace-scope constant in one .cc file may be read by
// another translation unit's static initialiser (an application's own key table, a boot
// component registered at load time) before it is constructed, because C++ leaves the
// initialisation order across translation units unspecified. The function-local static is
// constructed on first use, thread-safely, so those keys are valid from any initialiser. The
// contract names NetworkKey(), so the functions stay.
#ifndef FRAMEKIT_CTX_KEY_H_
#define FRAMEKIT_CTX_KEY_H_

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

namespace framekit {

namespace ctx_internal {

// Bytes of inline value storage in a Pair.
inline constexpr std::size_t kPairInlineBytes = 32;

// A trivially copyable value of at most one word travels as that word: building, copying and
// moving such a pair copies 8 bytes and calls nothing.
template <class T>
inline constexpr bool kWordValue = std::is_trivially_copyable_v<T> &&
                                   sizeof(T) <= sizeof(std::uintptr_t) &&
                                   alignof(T) <= alignof(std::uintptr_t);

// Small nothrow-movable values live in the pair's inline buffer.
template <class T>
inline constexpr bool kInlineValue =
    sizeof(T) <= kPairInlineBytes &&
    alignof(T) <= alignof(std::uintptr_t) && std::is_nothrow_move_constructible_v<T>;

// What a pair stores for a value of type T: the value itself, or one shared allocation.
template <class T>
using StoredType = std::conditional_t<kInlineValue<T>, T, std::shared_ptr<const T>>;

template <class T>
const T& StoredValue(const void* storage) {
  if constexpr (kInlineValue<T>) {
    return *std::launder(static_cast<const T*>(storage));
  } else {
    return **std::launder(static_cast<const std::shared_ptr<const T>*>(storage));
  }
}

// Renders a value for diagnostics (Frame::DebugString): strings quoted, numbers and bools as
// text, types with a `DebugString()` member through it, anything else as an opaque marker.
template <class T>
std::string FormatStored(const void* storage) {
  const T& value = StoredValue<T>(storage);
  if constexpr (std::is_same_v<T, bool>) {
    return value ? "true" : "false";
  } else if constexpr (std::is_arithmetic_v<T>) {
    return std::to_string(value);
  } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    std::string out = "\"";
    out.append(std::string_view(value));
    out.push_back('"');
    return out;
  } else if constexpr (requires {
                         { value.DebugString() } -> std::convertible_to<std::string>;
                       }) {
    return value.DebugString();
  } else {
    return "<" + std::to_string(sizeof(T)) + "-byte value>";
  }
}

}  // namespace ctx_internal

// The type-independent part of a key. Frames index pairs by `const KeyBase*`.
//
// Thread-safety: immutable after construction.
class KeyBase {
 public:
  KeyBase(const KeyBase&) = delete;
  KeyBase& operator=(const KeyBase&) = delete;

  // The name given at construction; used in diagnostics only, never for lookup.
  std::string_view name() const { return name_; }
  // Whether Frame::Fork() keeps a pair of this key.
  bool inherit() const { return inherit_; }

 protected:
  using Formatter = std::string (*)(const void* storage);
  KeyBase(std::string_view name, bool inherit, Formatter format)
      : name_(name), inherit_(inherit), format_(format) {}
  ~KeyBase() = default;

 private:
  friend class Pair;

  const std::string name_;
  const bool inherit_;
  const Formatter format_;
};

// A key for values of type `T`.
//
// `T` must be a copyable object type (frames copy pairs). Values of trivially copyable types of
// at most one machine word travel as a single word; other nothrow-movable types of at most 32
// bytes are stored inline in the pair; anything larger lives in one shared allocation.
//
// NOTE: a Key must outlive every pair, frame and AppContext entry made with it. Define keys at
// namespace scope (`inline const Key<T> kName{...};`), never per call.
//
// Thread-safety: immutable after construction.
template <class T>
class Key final : public KeyBase {
  static_assert(std::is_object_v<T> && !std::is_const_v<T> && !std::is_array_v<T>,
                "Key<T> needs a non-const object type");
  static_assert(std::is_copy_constructible_v<T>, "Key<T> needs a copyable T");

 public:
  using value_type = T;

  // `inherit`: whether Frame::Fork() keeps pairs of this key (default: yes).
  explicit Key(std::string_view name, bool inherit = true)
      : KeyBase(name, inherit, &ctx_internal::FormatStored<T>) {}
};

}  // namespace framekit

#endif  // FRAMEKIT_CTX_KEY_H_
