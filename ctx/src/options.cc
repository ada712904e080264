#include "framekit/ctx/options.h"

#include <algorithm>
#include <cassert>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"

namespace framekit {

using base_internal::AsAbsl;

Options::Options(std::initializer_list<std::pair<std::string, OptionValue>> values) {
  for (const auto& [key, value] : values) values_.insert_or_assign(key, value);
}

Options& Options::Set(std::string key, OptionValue value) {
  values_.insert_or_assign(std::move(key), std::move(value));
  return *this;
}

bool Options::Erase(std::string_view key) {
  const auto it = values_.find(key);
  if (it == values_.end()) return false;
  values_.erase(it);
  return true;
}

Options Options::Merge(const Options& base, const Options& overrides) {
  if (overrides.empty()) return base;
  if (base.empty()) return overrides;
  Options merged = base;
  for (const auto& [key, value] : overrides.values_) merged.values_.insert_or_assign(key, value);
  return merged;
}

namespace {

bool IsKeyChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-';
}

absl::Status ParseError(std::size_t offset, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("options: at offset ", offset, ": ", AsAbsl(what)));
}

// At most this many bytes of a key are echoed in an error message.
constexpr std::size_t kMaxEchoedKey = 64;

std::string EchoKey(std::string_view key) {
  if (key.size() <= kMaxEchoedKey) return std::string(key);
  return absl::StrCat(absl::string_view(key.data(), kMaxEchoedKey), "...");
}

bool IsIntegerText(std::string_view text) {
  if (!text.empty() && text.front() == '-') text.remove_prefix(1);
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return absl::ascii_isdigit(static_cast<unsigned char>(c));
  });
}

// Parses a bare (unquoted) value at `offset`: bool, int64, double (fixed or scientific
// notation), else a word. A number that does not fit its type is an error, never a string or
// a rounded double.
absl::StatusOr<OptionValue> ParseBare(std::string_view text, std::size_t offset) {
  if (text == "true") return OptionValue(true);
  if (text == "false") return OptionValue(false);
  const char* end = text.data() + text.size();
  if (IsIntegerText(text)) {
    std::int64_t integer = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), end, integer);
    if (ec == std::errc() && ptr == end) return OptionValue(integer);
    return ParseError(offset, "integer out of the int64 range");
  }
  double real = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), end, real, std::chars_format::general);
  if (ptr == end && ec == std::errc::result_out_of_range) {
    return ParseError(offset, "number out of the double range");
  }
  if (ec == std::errc() && ptr == end && std::isfinite(real)) return OptionValue(real);
  return OptionValue(std::string(text));
}

// One parsed entry, with the offset of its key for error messages.
struct Entry {
  std::string key;
  OptionValue value;
  std::size_t offset;
};

// Reads a quoted value whose opening quote is just before `i`; advances `i` past the closing
// quote.
absl::StatusOr<std::string> ParseQuoted(std::string_view text, std::size_t& i) {
  std::string value;
  const std::size_t n = text.size();
  while (i < n) {
    const char c = text[i++];
    if (c == '"') return value;
    if (c == '\\') {
      if (i == n || (text[i] != '"' && text[i] != '\\')) {
        return ParseError(i, "only \\\" and \\\\ may be escaped");
      }
      value.push_back(text[i++]);
    } else {
      value.push_back(c);
    }
  }
  return ParseError(i, "unterminated quoted value");
}

// Reads one "key=value" at `i`; advances `i` to the byte after the value.
absl::StatusOr<Entry> ParseEntry(std::string_view text, std::size_t& i) {
  const std::size_t n = text.size();
  const std::size_t key_start = i;
  while (i < n && IsKeyChar(text[i])) ++i;
  if (i == key_start) return ParseError(i, "expected an option name ([A-Za-z0-9_.-]+)");
  Entry entry{std::string(text.substr(key_start, i - key_start)), OptionValue(), key_start};
  if (i == n || text[i] != '=') return ParseError(i, "expected '=' after the option name");
  ++i;
  if (i < n && text[i] == '"') {
    ++i;
    absl::StatusOr<std::string> value = ParseQuoted(text, i);
    if (!value.ok()) return value.status();
    entry.value = *std::move(value);
    return entry;
  }
  const std::size_t value_start = i;
  while (i < n && text[i] != ',') {
    if (text[i] == '"' || text[i] == '=') {
      return ParseError(i, "unexpected character in a bare value (quote it)");
    }
    ++i;
  }
  if (i == value_start) return ParseError(i, "empty value (write \"\" for an empty string)");
  absl::StatusOr<OptionValue> value =
      ParseBare(text.substr(value_start, i - value_start), value_start);
  if (!value.ok()) return value.status();
  entry.value = *std::move(value);
  return entry;
}

}  // namespace

absl::StatusOr<Options> Options::Parse(std::string_view text) {
  std::vector<Entry> entries;
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (n > 0) {
    absl::StatusOr<Entry> entry = ParseEntry(text, i);
    if (!entry.ok()) return entry.status();
    entries.push_back(*std::move(entry));
    if (i == n) break;
    if (text[i] != ',') return ParseError(i, "expected ',' between options");
    ++i;
    if (i == n) return ParseError(i, "trailing ','");
  }
  // Sorted once and handed to the map as an ordered range: inserting one by one into the flat
  // map would be quadratic for keys that arrive in reverse order.
  const KeyOrder order;
  std::stable_sort(entries.begin(), entries.end(),
                   [&order](const Entry& a, const Entry& b) { return order(a.key, b.key); });
  for (std::size_t k = 1; k < entries.size(); ++k) {
    if (entries[k].key == entries[k - 1].key) {
      return ParseError(std::max(entries[k].offset, entries[k - 1].offset),
                        absl::StrCat("repeated option \"", EchoKey(entries[k].key), "\""));
    }
  }
  std::vector<std::pair<std::string, OptionValue>> sorted;
  sorted.reserve(entries.size());
  for (Entry& entry : entries) sorted.emplace_back(std::move(entry.key), std::move(entry.value));
  Options options;
  options.values_ =
      Map(boost::container::ordered_unique_range, std::make_move_iterator(sorted.begin()),
          std::make_move_iterator(sorted.end()));
  return options;
}

std::string Options::ToString() const {
  std::string out;
  for (const auto& [key, value] : values_) {
    if (!out.empty()) out.push_back(',');
    out.append(key);
    out.push_back('=');
    if (const auto* s = std::get_if<std::string>(&value)) {
      out.push_back('"');
      for (char c : *s) {
        if (c == '"' || c == '\\') out.push_back('\\');
        out.push_back(c);
      }
      out.push_back('"');
    } else if (const auto* b = std::get_if<bool>(&value)) {
      out.append(*b ? "true" : "false");
    } else if (const auto* i = std::get_if<std::int64_t>(&value)) {
      out.append(std::to_string(*i));
    } else {
      // Shortest round-trip form in fixed notation (what Parse reads), always with a decimal
      // point so it parses back as a double. Fixed notation of a double takes at most 309
      // integer digits or 324 fraction digits: 512 bytes always suffice.
      char buffer[512];
      const double d = std::get<double>(value);
      const auto [ptr, ec] =
          std::to_chars(buffer, buffer + sizeof(buffer), d, std::chars_format::fixed);
      assert(ec == std::errc());
      std::string text(buffer, ptr);
      if (text.find('.') == std::string::npos) text.append(".0");
      out.append(text);
    }
  }
  return out;
}

}  // namespace framekit
