#include "framekit/ctx/portable.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <system_error>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/container/small_vector.hpp"
#include "framekit/base/internal/strings.h"

namespace framekit {
namespace {

// Debian's abseil has its own string_view.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

absl::Status Malformed(std::string_view what, std::string_view bytes) {
  constexpr std::size_t kShown = 32;
  const std::string_view shown = bytes.substr(0, kShown);
  return absl::InvalidArgumentError(absl::StrCat("malformed ", AV(what), ": \"", AV(shown),
                                                 bytes.size() > kShown ? "...\"" : "\""));
}

void PutString(std::string& out, std::string_view value) {
  base_internal::AppendUint32Le(out, static_cast<std::uint32_t>(value.size()));
  out.append(value);
}

// Reads a 4-byte little-endian length; false when fewer than 4 bytes remain.
bool GetLength(std::string_view& in, std::uint32_t& n) {
  if (in.size() < 4) return false;
  n = 0;
  for (int i = 3; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(in[i]);
  in.remove_prefix(4);
  return true;
}

bool GetString(std::string_view& in, std::string& value) {
  std::uint32_t n = 0;
  if (!GetLength(in, n) || n > in.size()) return false;
  value.assign(in.substr(0, n));
  in.remove_prefix(n);
  return true;
}

}  // namespace

PortableCodec<std::string> StringCodec() {
  return {[](const std::string& value) { return value; },
          [](std::string_view bytes) -> absl::StatusOr<std::string> { return std::string(bytes); }};
}

PortableCodec<std::int64_t> Int64Codec() {
  return {[](const std::int64_t& value) { return std::to_string(value); },
          [](std::string_view bytes) -> absl::StatusOr<std::int64_t> {
            std::int64_t value = 0;
            const auto [end, ec] =
                std::from_chars(bytes.data(), bytes.data() + bytes.size(), value);
            if (bytes.empty() || ec != std::errc() || end != bytes.data() + bytes.size()) {
              return Malformed("int64", bytes);
            }
            return value;
          }};
}

PortableCodec<bool> BoolCodec() {
  return {[](const bool& value) { return std::string(value ? "true" : "false"); },
          [](std::string_view bytes) -> absl::StatusOr<bool> {
            if (bytes == "true") return true;
            if (bytes == "false") return false;
            return Malformed("bool", bytes);
          }};
}

PortableCodec<double> DoubleCodec() {
  return {[](const double& value) {
            char buffer[64];
            const auto [end, ec] = std::to_chars(buffer, buffer + sizeof(buffer), value);
            return std::string(buffer, ec == std::errc() ? end : buffer);
          },
          [](std::string_view bytes) -> absl::StatusOr<double> {
            double value = 0;
            const auto [end, ec] =
                std::from_chars(bytes.data(), bytes.data() + bytes.size(), value);
            if (bytes.empty() || ec != std::errc() || end != bytes.data() + bytes.size()) {
              return Malformed("double", bytes);
            }
            return value;
          }};
}

PortableCodec<CallerContext> CallerCodec() {
  return {[](const CallerContext& caller) {
            std::string out;
            std::size_t size = 5 * 4 + caller.user_id.size() + caller.role.size() +
                               caller.tenant_id.size() + caller.email.size();
            for (const std::string& group : caller.groups) size += 4 + group.size();
            out.reserve(size);
            for (const std::string* field :
                 {&caller.user_id, &caller.role, &caller.tenant_id, &caller.email}) {
              PutString(out, *field);
            }
            PutString(out, std::string_view());  // the groups' count, written below
            const auto n = static_cast<std::uint32_t>(caller.groups.size());
            for (int i = 0; i < 4; ++i) out[out.size() - 4 + i] = static_cast<char>(n >> (8 * i));
            for (const std::string& group : caller.groups) PutString(out, group);
            return out;
          },
          [](std::string_view bytes) -> absl::StatusOr<CallerContext> {
            std::string_view in = bytes;
            CallerContext caller;
            for (std::string* field :
                 {&caller.user_id, &caller.role, &caller.tenant_id, &caller.email}) {
              if (!GetString(in, *field)) return Malformed("caller", bytes);
            }
            std::uint32_t groups = 0;
            // Each group takes at least 4 bytes: a count beyond that is malformed, not a
            // reason to reserve memory.
            if (!GetLength(in, groups) || groups > in.size() / 4) {
              return Malformed("caller", bytes);
            }
            caller.groups.resize(groups);
            for (std::string& group : caller.groups) {
              if (!GetString(in, group)) return Malformed("caller", bytes);
            }
            if (!in.empty()) return Malformed("caller", bytes);
            return caller;
          }};
}

absl::Status PortableKeys::AddEntry(Entry entry, bool codec_complete) {
  const absl::string_view name = AV(entry.key->name());
  if (!codec_complete) {
    return absl::InvalidArgumentError(
        absl::StrCat("portable key \"", name, "\": the codec needs encode and decode"));
  }
  if (name.empty() || name.size() > limits_.max_name_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "portable key \"", name, "\": the name must be 1 to ", limits_.max_name_bytes, " bytes"));
  }
  if (!entry.key->inherit()) {
    return absl::InvalidArgumentError(
        absl::StrCat("portable key \"", name,
                     "\" does not inherit: a portable value arrives in another call and would "
                     "be dropped there"));
  }
  const auto [it, inserted] = by_name_.try_emplace(std::string(name), std::move(entry));
  if (!inserted) {
    return absl::AlreadyExistsError(absl::StrCat("portable key \"", name, "\" exists already"));
  }
  Index(&*it);
  return absl::OkStatus();
}

void PortableKeys::Index(const Named* named) {
  by_key_.emplace(named->second.key, named);
  sorted_.insert(
      std::lower_bound(sorted_.begin(), sorted_.end(), named,
                       [](const Named* a, const Named* b) { return a->first < b->first; }),
      named);
}

PortableKeys::PortableKeys(const PortableKeys& other)
    : limits_(other.limits_), by_name_(other.by_name_) {
  for (const Named& named : by_name_) Index(&named);
}

PortableKeys& PortableKeys::operator=(const PortableKeys& other) {
  if (this != &other) {
    PortableKeys copy(other);
    *this = std::move(copy);
  }
  return *this;
}

const PortableKeys::Named* PortableKeys::FindByName(std::string_view name) const {
  const auto it = std::lower_bound(sorted_.begin(), sorted_.end(), name,
                                   [](const Named* a, std::string_view n) { return a->first < n; });
  return it != sorted_.end() && (*it)->first == name ? *it : nullptr;
}

absl::StatusOr<std::optional<Clock::duration>> PortableKeys::EncodeEach(
    const Frame& frame, absl::FunctionRef<void(std::string_view, std::string_view)> fn) const {
  std::optional<Clock::duration> remaining;
  if (const std::optional<Deadline> deadline = frame.deadline()) {
    remaining = std::max(Clock::duration::zero(), *deadline - Clock::now());
  }
  if (by_name_.empty()) return remaining;
  // Every pair is encoded and checked before `fn` sees any. A built-in std::string value is
  // read in place; other encodings are kept in `owned` (by index: its strings move as it grows).
  struct Item {
    std::string_view name;
    std::string_view bytes;     // when owned < 0
    std::ptrdiff_t owned = -1;  // index into `owned`
  };
  boost::container::small_vector<Item, 16> items;
  boost::container::small_vector<std::string, 8> owned;
  std::size_t total = 0;
  absl::Status status;
  frame.ForEach([&](const Pair& pair, ValueOrigin) {
    if (!status.ok()) return;
    const auto found = by_key_.find(&pair.key());
    if (found == by_key_.end()) return;
    const Named* it = found->second;
    const Entry& entry = it->second;
    Item item{.name = it->first, .bytes = {}, .owned = -1};
    if (entry.string_bytes) {
      item.bytes = *pair.As(static_cast<const Key<std::string>&>(*entry.key));
    } else {
      item.owned = static_cast<std::ptrdiff_t>(owned.size());
      owned.push_back(entry.encode(pair));
      item.bytes = owned.back();
    }
    if (item.bytes.size() > limits_.max_value_bytes) {
      status = absl::ResourceExhaustedError(
          absl::StrCat("portable key \"", it->first, "\": value of ", item.bytes.size(),
                       " bytes exceeds the limit of ", limits_.max_value_bytes));
      return;
    }
    total += it->first.size() + item.bytes.size();
    if (total > limits_.max_total_bytes || items.size() == limits_.max_pairs) {
      status = absl::ResourceExhaustedError(absl::StrCat("portable pairs exceed the limit of ",
                                                         limits_.max_pairs, " pairs or ",
                                                         limits_.max_total_bytes, " bytes"));
      return;
    }
    items.push_back(item);
  });
  if (!status.ok()) return status;
  std::sort(items.begin(), items.end(),
            [](const Item& a, const Item& b) { return a.name < b.name; });
  for (const Item& item : items) {
    fn(item.name,
       item.owned < 0 ? item.bytes : std::string_view(owned[static_cast<std::size_t>(item.owned)]));
  }
  return remaining;
}

absl::StatusOr<PortableFrame> PortableKeys::Encode(const Frame& frame) const {
  PortableFrame out;
  out.pairs.reserve(std::min(frame.size(), by_name_.size()));
  absl::StatusOr<std::optional<Clock::duration>> remaining =
      EncodeEach(frame, [&](std::string_view name, std::string_view bytes) {
        out.pairs.emplace_back(std::string(name), std::string(bytes));
      });
  if (!remaining.ok()) return remaining.status();
  out.remaining = *remaining;
  return out;
}

absl::StatusOr<DecodedFrame> PortableKeys::Decode(const PortableFrame& in,
                                                  const Frame& base) const {
  boost::container::small_vector<PortablePairView, 16> views;
  views.reserve(in.pairs.size());
  for (const auto& [name, bytes] : in.pairs) views.emplace_back(name, bytes);
  return DecodeView({.pairs = std::span<const PortablePairView>(views.data(), views.size()),
                     .remaining = in.remaining},
                    base);
}

absl::StatusOr<DecodedFrame> PortableKeys::DecodeView(const PortableFrameView& in,
                                                      const Frame& base,
                                                      std::span<const Pair> extra) const {
  if (in.pairs.size() > limits_.max_pairs) {
    return absl::InvalidArgumentError(absl::StrCat("portable frame has ", in.pairs.size(),
                                                   " pairs; the limit is ", limits_.max_pairs));
  }
  DecodedFrame out;
  PairList pairs;
  pairs.reserve(in.pairs.size() + extra.size());
  std::size_t total = 0;
  for (const auto& [name, bytes] : in.pairs) {
    total += name.size() + bytes.size();
    if (name.size() > limits_.max_name_bytes || bytes.size() > limits_.max_value_bytes ||
        total > limits_.max_total_bytes) {
      const std::string_view shown = name.substr(0, 64);
      return absl::InvalidArgumentError(
          absl::StrCat("portable key \"", AV(shown), "\": name or value exceeds the size limits"));
    }
    const Named* it = FindByName(name);
    if (it == nullptr) {
      ++out.dropped_unknown;
      continue;
    }
    for (const Pair& seen : pairs) {
      if (seen.Is(*it->second.key)) {
        return absl::InvalidArgumentError(
            absl::StrCat("portable key \"", it->first, "\" appears twice"));
      }
    }
    absl::StatusOr<Pair> pair = it->second.decode(bytes);
    if (!pair.ok()) {
      return absl::Status(pair.status().code(), absl::StrCat("portable key \"", it->first,
                                                             "\": ", pair.status().message()));
    }
    pairs.push_back(*std::move(pair));
  }
  for (const Pair& pair : extra) pairs.push_back(pair);
  // Moved in: a decoded string value is not copied a second time.
  Frame frame = base.With(std::move(pairs));
  if (in.remaining.has_value()) {
    frame = frame.WithTimeout(std::max(Clock::duration::zero(), *in.remaining));
  }
  out.frame = frame.Fork();
  return out;
}

std::optional<PortableValue> PortableKeys::Lookup(const Frame& frame, std::string_view name) const {
  const Named* it = FindByName(name);
  if (it == nullptr) return std::nullopt;
  return it->second.lookup(frame);
}

}  // namespace framekit
