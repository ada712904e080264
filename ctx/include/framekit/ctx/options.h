// Options: per-call options keyed by string, as a caller or a function's defaults give them.
//
// Example:
//   framekit::Options defaults{{"network", "corp"}, {"retries", std::int64_t{2}}};
//   framekit::Options call{{"network", "tor"}};
//   framekit::Options merged = framekit::Options::Merge(defaults, call);
//   merged.GetString("network");   // "tor": the call wins
//   merged.GetInt("retries");      // 2
//   merged.GetBool("retries");     // nullopt: another type
#ifndef FRAMEKIT_CTX_OPTIONS_H_
#define FRAMEKIT_CTX_OPTIONS_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "absl/status/statusor.h"
#include "boost/container/flat_map.hpp"

namespace framekit {

// An option's value. A string literal converts to std::string (never to bool); write integers
// as std::int64_t{N} or plain int literals.
using OptionValue = std::variant<std::string, std::int64_t, bool, double>;

// Per-call options: a small flat map from string keys to OptionValue.
//
// Iteration order: by key length, then by key. (Ordering by length first makes a lookup compare
// lengths, one integer, before any bytes: most probes of a small map never touch the text.)
//
// Thread-safety: thread-compatible (const methods may run concurrently).
class Options {
 public:
  // Shorter keys first, then lexicographic; transparent, so lookups take std::string_view.
  struct KeyOrder {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const {
      if (a.size() != b.size()) return a.size() < b.size();
      return a < b;
    }
  };
  using Map = boost::container::flat_map<std::string, OptionValue, KeyOrder>;
  using const_iterator = Map::const_iterator;

  Options() = default;
  // Later entries of the same key win.
  Options(std::initializer_list<std::pair<std::string, OptionValue>> values);

  // Sets `key` to `value`, replacing any previous value.
  Options& Set(std::string key, OptionValue value);
  // Removes `key`; returns whether it was present.
  bool Erase(std::string_view key);

  // The value of `key`, or nullptr.
  const OptionValue* Get(std::string_view key) const {
    const auto it = values_.find(key);
    return it == values_.end() ? nullptr : &it->second;
  }
  bool Contains(std::string_view key) const { return Get(key) != nullptr; }

  // Typed reads: nullopt for a missing key or a value of another type (no conversions).
  std::optional<std::string_view> GetString(std::string_view key) const {
    return GetAs<std::string, std::string_view>(key);
  }
  std::optional<std::int64_t> GetInt(std::string_view key) const {
    return GetAs<std::int64_t, std::int64_t>(key);
  }
  std::optional<bool> GetBool(std::string_view key) const { return GetAs<bool, bool>(key); }
  std::optional<double> GetDouble(std::string_view key) const { return GetAs<double, double>(key); }

  std::size_t size() const { return values_.size(); }
  bool empty() const { return values_.empty(); }
  const_iterator begin() const { return values_.begin(); }
  const_iterator end() const { return values_.end(); }

  // `base` with every entry of `overrides` set on top: overrides win.
  static Options Merge(const Options& base, const Options& overrides);

  // Parses "key=value,key=value". Values: `true`/`false` are bools, integers are int64,
  // decimals (fixed or scientific notation) are doubles, `"..."` (with \" and \\ escapes) and
  // bare words are strings. Keys: non-empty, [A-Za-z0-9_.-]. Returns InvalidArgument naming the
  // offset and the problem, including for a repeated key and for a number that does not fit
  // its type (never silently a string or a rounded double). O(n log n) in the number of keys.
  static absl::StatusOr<Options> Parse(std::string_view text);

  // The inverse of Parse (strings always quoted).
  std::string ToString() const;

  friend bool operator==(const Options& a, const Options& b) { return a.values_ == b.values_; }

 private:
  template <class T, class R>
  std::optional<R> GetAs(std::string_view key) const {
    const OptionValue* value = Get(key);
    if (value == nullptr) return std::nullopt;
    const T* typed = std::get_if<T>(value);
    if (typed == nullptr) return std::nullopt;
    return R(*typed);
  }

  Map values_;
};

}  // namespace framekit

#endif  // FRAMEKIT_CTX_OPTIONS_H_
