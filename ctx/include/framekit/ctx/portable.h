// Portable pairs: the frame values that may leave the process — to a script (read by key
// name), to a worker process, to another node.
//
// Which keys are portable is the application's decision, made once at boot like a key's
// inherit(): each portable key gets a codec (built in for std::string, std::int64_t, bool,
// double and CallerContext; the application supplies its own for other value types). Encoding a
// frame yields (key name, bytes) for every visible portable pair plus the remaining deadline as
// a duration (never an absolute time: clocks differ between processes). Decoding yields pairs
// that arrive as ValueOrigin::kInherited, so the receiver can tell a value it was sent from one
// it set, and re-resolves under its own policy.
//
// Built-in encodings (stable; other runtimes may read them):
//   std::string    the bytes as they are
//   std::int64_t   decimal text ("-42")
//   bool           "true" / "false"
//   double         shortest round-trip text (std::to_chars), e.g. "0.1", "inf", "nan"
//   CallerContext  five fields (user_id, role, tenant_id, email, groups), each string as a
//                  4-byte little-endian length and its bytes; groups as a 4-byte count, then
//                  each group likewise
//
// Example:
//   inline const framekit::Key<std::string> kTenant{"app.tenant"};
//   inline const framekit::Key<std::int64_t> kQuota{"app.quota"};
//
//   framekit::PortableKeys portable;                       // at boot
//   FRAMEKIT_RETURN_IF_ERROR(portable.Add(kTenant));
//   FRAMEKIT_RETURN_IF_ERROR(portable.Add(kQuota));
//   FRAMEKIT_RETURN_IF_ERROR(portable.Add(framekit::CallerKey()));
//   auto shared = std::make_shared<const framekit::PortableKeys>(std::move(portable));
//
//   FRAMEKIT_ASSIGN_OR_RETURN(framekit::PortableFrame wire, shared->Encode(call_frame));
//   // ... wire.pairs and wire.remaining cross the boundary ...
//   FRAMEKIT_ASSIGN_OR_RETURN(framekit::DecodedFrame in, shared->Decode(wire));
//   in.frame.Origin(kTenant);  // ValueOrigin::kInherited
#ifndef FRAMEKIT_CTX_PORTABLE_H_
#define FRAMEKIT_CTX_PORTABLE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/node_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/key.h"
#include "framekit/ctx/pair.h"

namespace framekit {

// How values of type T cross the process boundary. `decode` returns InvalidArgument (or any
// non-OK status) for bytes it cannot read; PortableKeys prefixes the key name.
// Both are copied into the registry and called concurrently: they must be thread-safe. Each is
// a pure function of its input: a receiver may reuse what the same bytes decoded to before
// (rpc::Server does), so a decode's side effects happen once per distinct bytes, not per call.
template <class T>
struct PortableCodec {
  std::function<std::string(const T&)> encode;
  std::function<absl::StatusOr<T>(std::string_view bytes)> decode;
};

// The built-in codecs (see the file comment for their encodings).
PortableCodec<std::string> StringCodec();
PortableCodec<std::int64_t> Int64Codec();
PortableCodec<bool> BoolCodec();
PortableCodec<double> DoubleCodec();
PortableCodec<CallerContext> CallerCodec();

// A frame in transit: the portable pairs and the time left.
struct PortableFrame {
  std::vector<std::pair<std::string, std::string>> pairs;  // (key name, encoded value)
  std::optional<Clock::duration> remaining;                // nullopt: no deadline; never negative
};

// One encoded pair, borrowed: (key name, encoded value), valid while its source is.
using PortablePairView = std::pair<std::string_view, std::string_view>;

// A frame in transit whose pairs are borrowed (e.g. views into a received header): what
// DecodeView reads without copying the bytes first.
struct PortableFrameView {
  std::span<const PortablePairView> pairs;
  std::optional<Clock::duration> remaining;  // nullopt: no deadline
};

// The result of Decode.
struct DecodedFrame {
  Frame frame;                      // the decoded pairs (all kInherited) and deadline
  std::size_t dropped_unknown = 0;  // pairs whose key name is not portable here
};

// A portable value as a typed view, for runtimes that map values to their own types (a Lua
// string, integer, boolean, number or table). Values of keys with an application codec appear
// as their encoded bytes (std::string).
using PortableValue = std::variant<std::string, std::int64_t, bool, double, CallerContext>;

template <class T>
inline constexpr bool kIsPortableAlternative =
    std::is_same_v<T, std::string> || std::is_same_v<T, std::int64_t> || std::is_same_v<T, bool> ||
    std::is_same_v<T, double> || std::is_same_v<T, CallerContext>;

// Bounds on what Encode produces and Decode accepts.
struct PortableLimits {
  std::size_t max_pairs = 256;
  std::size_t max_name_bytes = 256;
  std::size_t max_value_bytes = 64 * 1024;
  std::size_t max_total_bytes = 1024 * 1024;  // names and values together
};

// The registry of portable keys: filled at boot, then shared read-only.
//
// Thread-safety: thread-compatible while being filled (Add); once shared as
// `std::shared_ptr<const PortableKeys>`, every const method is safe to call concurrently.
class PortableKeys {
 public:
  explicit PortableKeys(PortableLimits limits = {}) : limits_(limits) {}
  // Copies rebuild the indexes into their own entries; moves keep them (the entries stay put).
  PortableKeys(const PortableKeys& other);
  PortableKeys& operator=(const PortableKeys& other);
  PortableKeys(PortableKeys&&) = default;
  PortableKeys& operator=(PortableKeys&&) = default;

  // Makes `key` portable under key.name() with the built-in codec for T (a compile error for
  // other types: pass a codec). Fails with InvalidArgument when the key does not inherit() (a
  // portable value crosses into another call, which is a Fork: it would be dropped on arrival)
  // or its name is empty or longer than max_name_bytes, and with AlreadyExists when a key of
  // the same name is portable already.
  // NOTE: the key must outlive the registry (keys are namespace-scope constants).
  template <class T>
  absl::Status Add(const Key<T>& key) {
    return AddTyped(key, BuiltinCodec<T>(), /*string_bytes=*/std::is_same_v<T, std::string>);
  }
  // As above, with the application's codec for T. InvalidArgument when a function is empty.
  template <class T>
  absl::Status Add(const Key<T>& key, PortableCodec<T> codec);

  // (name, bytes) for every visible pair of `frame` whose key is portable, sorted by name, and
  // the remaining deadline (clamped at zero). ResourceExhausted naming the key when a value
  // exceeds max_value_bytes, or naming the limit when the pairs exceed max_total_bytes.
  absl::StatusOr<PortableFrame> Encode(const Frame& frame) const;

  // As Encode, without building a PortableFrame: checks every pair against the limits first,
  // then calls `fn(name, bytes)` for each in name order (the views are valid during the call
  // only; a std::string key with the built-in codec is passed without a copy). Returns the
  // remaining deadline (nullopt: none). Same errors as Encode; on an error `fn` was not called.
  absl::StatusOr<std::optional<Clock::duration>> EncodeEach(
      const Frame& frame, absl::FunctionRef<void(std::string_view, std::string_view)> fn) const;

  // A frame derived from `base` carrying `in`'s pairs as kInherited values and the earlier of
  // base's deadline and now + in.remaining. Unknown key names are dropped and counted.
  // InvalidArgument naming the key when its bytes are malformed or the same name appears
  // twice; InvalidArgument when `in` exceeds the limits (too many pairs, a name or value or the
  // total too large). Nothing is returned but the error on failure.
  // NOTE: Frame has no way to set an inherited value directly: the pairs are set on a child of
  // `base` that is then Fork()ed, so non-inheriting pairs of `base` itself are not visible in
  // the result either (pass the receiver's root or an already-forked frame).
  absl::StatusOr<DecodedFrame> Decode(const PortableFrame& in, const Frame& base = Frame()) const;

  // As Decode, reading borrowed pairs (nothing is copied but the decoded values). `extra` pairs
  // (values the caller read from elsewhere, e.g. a trace id from its own header) join the
  // decoded ones in the same step, after them (they shadow a decoded pair of the same key),
  // and arrive as kInherited too. Same errors as Decode; `extra` is not checked against the
  // limits.
  absl::StatusOr<DecodedFrame> DecodeView(const PortableFrameView& in, const Frame& base = Frame(),
                                          std::span<const Pair> extra = {}) const;

  // The value of the portable key named `name` on `frame`: nullopt when no portable key has
  // that name (the key is not visible to the outside) or the frame has no value for it.
  // Values of built-in types come typed; others as their encoding.
  std::optional<PortableValue> Lookup(const Frame& frame, std::string_view name) const;

  // Number of portable keys.
  std::size_t size() const { return by_name_.size(); }
  const PortableLimits& limits() const { return limits_; }

 private:
  struct Entry {
    const KeyBase* key;
    // True for a std::string key with the built-in codec: the value is its own encoding, and
    // EncodeEach reads it in place.
    bool string_bytes = false;
    std::function<std::string(const Pair&)> encode;
    std::function<absl::StatusOr<Pair>(std::string_view)> decode;
    std::function<std::optional<PortableValue>(const Frame&)> lookup;
  };

  template <class T>
  static PortableCodec<T> BuiltinCodec() {
    if constexpr (std::is_same_v<T, std::string>) {
      return StringCodec();
    } else if constexpr (std::is_same_v<T, std::int64_t>) {
      return Int64Codec();
    } else if constexpr (std::is_same_v<T, bool>) {
      return BoolCodec();
    } else if constexpr (std::is_same_v<T, double>) {
      return DoubleCodec();
    } else if constexpr (std::is_same_v<T, CallerContext>) {
      return CallerCodec();
    } else {
      static_assert(sizeof(T) == 0, "no built-in portable codec for this type: pass a codec");
    }
  }

  template <class T>
  absl::Status AddTyped(const Key<T>& key, PortableCodec<T> codec, bool string_bytes);
  absl::Status AddEntry(Entry entry, bool codec_complete);

  PortableLimits limits_;
  using Named = std::pair<const std::string, Entry>;
  // The entry named `name`, or nullptr (a binary search of sorted_: cheaper than hashing the
  // name for the few keys a registry holds).
  const Named* FindByName(std::string_view name) const;
  // Adds `named` (an entry of by_name_) to by_key_ and sorted_.
  void Index(const Named* named);

  // The entries by key name; a node map, so that the indexes below can point into it.
  absl::node_hash_map<std::string, Entry> by_name_;
  // The same entries by key identity, for Encode: a pointer hash, no string hashing.
  absl::flat_hash_map<const KeyBase*, const Named*> by_key_;
  // The same entries sorted by name, for Decode and Lookup.
  std::vector<const Named*> sorted_;
};

template <class T>
absl::Status PortableKeys::Add(const Key<T>& key, PortableCodec<T> codec) {
  return AddTyped(key, std::move(codec), /*string_bytes=*/false);
}

template <class T>
absl::Status PortableKeys::AddTyped(const Key<T>& key, PortableCodec<T> codec, bool string_bytes) {
  const bool complete = codec.encode != nullptr && codec.decode != nullptr;
  Entry entry;
  entry.key = &key;
  entry.string_bytes = string_bytes;
  entry.encode = [&key, encode = codec.encode](const Pair& pair) { return encode(*pair.As(key)); };
  entry.decode = [&key, decode = codec.decode](std::string_view bytes) -> absl::StatusOr<Pair> {
    absl::StatusOr<T> value = decode(bytes);
    if (!value.ok()) return value.status();
    return Pair::Of(key, *std::move(value));
  };
  entry.lookup = [&key, encode = codec.encode](const Frame& frame) -> std::optional<PortableValue> {
    const T* value = frame.Find(key);
    if (value == nullptr) return std::nullopt;
    if constexpr (kIsPortableAlternative<T>) {
      return PortableValue(std::in_place_type<T>, *value);
    } else {
      return PortableValue(std::in_place_type<std::string>, encode(*value));
    }
  };
  return AddEntry(std::move(entry), complete);
}

}  // namespace framekit

#endif  // FRAMEKIT_CTX_PORTABLE_H_
