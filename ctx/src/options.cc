#include "framekit/ctx/options.h"

#include <cassert>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <string>
#include <system_error>

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

// Parses a bare (unquoted) value: bool, int64, double, else a word.
OptionValue ParseBare(std::string_view text) {
  if (text == "true") return true;
  if (text == "false") return false;
  std::int64_t integer = 0;
  const char* end = text.data() + text.size();
  if (auto [ptr, ec] = std::from_chars(text.data(), end, integer);
      ec == std::errc() && ptr == end) {
    return integer;
  }
  double real = 0;
  if (auto [ptr, ec] = std::from_chars(text.data(), end, real, std::chars_format::fixed);
      ec == std::errc() && ptr == end && std::isfinite(real)) {
    return real;
  }
  return std::string(text);
}

}  // namespace

absl::StatusOr<Options> Options::Parse(std::string_view text) {
  Options options;
  std::size_t i = 0;
  const std::size_t n = text.size();
  if (n == 0) return options;
  while (true) {
    const std::size_t key_start = i;
    while (i < n && IsKeyChar(text[i])) ++i;
    if (i == key_start) return ParseError(i, "expected an option name ([A-Za-z0-9_.-]+)");
    std::string key(text.substr(key_start, i - key_start));
    if (i == n || text[i] != '=') return ParseError(i, "expected '=' after the option name");
    ++i;
    if (i < n && text[i] == '"') {
      ++i;
      std::string value;
      bool closed = false;
      while (i < n) {
        const char c = text[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c == '\\') {
          if (i == n || (text[i] != '"' && text[i] != '\\')) {
            return ParseError(i, "only \\\" and \\\\ may be escaped");
          }
          value.push_back(text[i++]);
        } else {
          value.push_back(c);
        }
      }
      if (!closed) return ParseError(i, "unterminated quoted value");
      options.Set(std::move(key), std::move(value));
    } else {
      const std::size_t value_start = i;
      while (i < n && text[i] != ',') {
        if (text[i] == '"' || text[i] == '=') {
          return ParseError(i, "unexpected character in a bare value (quote it)");
        }
        ++i;
      }
      if (i == value_start) return ParseError(i, "empty value (write \"\" for an empty string)");
      options.Set(std::move(key), ParseBare(text.substr(value_start, i - value_start)));
    }
    if (i == n) break;
    if (text[i] != ',') return ParseError(i, "expected ',' between options");
    ++i;
    if (i == n) return ParseError(i, "trailing ','");
  }
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
