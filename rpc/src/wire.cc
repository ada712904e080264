#include "framekit/rpc/wire.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "boost/container/small_vector.hpp"
#include "framekit/base/internal/echo.h"
#include "framekit/base/internal/strings.h"
#include "framekit_rpc.pb.h"

namespace framekit::rpc {
namespace {

using base_internal::AsAbsl;
using base_internal::AsStd;

constexpr char kFrameVersion = 1;
// Details larger than this are not parsed (gRPC bounds metadata far below it anyway).
constexpr std::size_t kMaxDetailsBytes = 1 << 20;
constexpr int kMaxGrpcCode = 16;  // UNAUTHENTICATED: the last code both sides define

void PutU32(std::string& out, std::size_t n) {
  base_internal::AppendUint32Le(out, static_cast<std::uint32_t>(n));
}

// Reads a 4-byte little-endian length and that many bytes from `in`, advancing it.
bool TakeField(std::string_view& in, std::size_t max, std::string_view& field) {
  if (in.size() < 4) return false;
  std::uint32_t n = 0;
  for (int i = 0; i < 4; ++i)
    n |= static_cast<std::uint32_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  in.remove_prefix(4);
  if (n > max || n > in.size()) return false;
  field = in.substr(0, n);
  in.remove_prefix(n);
  return true;
}

// Lowercase hex digits: ids are checked on every call, one table load per character.
constexpr std::array<bool, 256> kLowerHex = [] {
  std::array<bool, 256> table{};
  for (char c = '0'; c <= '9'; ++c) table[static_cast<unsigned char>(c)] = true;
  for (char c = 'a'; c <= 'f'; ++c) table[static_cast<unsigned char>(c)] = true;
  return table;
}();

bool IsLowerHex(std::string_view s) {
  bool all = true;
  for (const char c : s) all &= kLowerHex[static_cast<unsigned char>(c)];
  return all;
}

bool AllZero(std::string_view s) { return s.find_first_not_of('0') == std::string_view::npos; }

}  // namespace

std::string EncodeFramePairs(const WirePairs& pairs) {
  std::size_t size = 1;
  for (const auto& [name, value] : pairs) size += 8 + name.size() + value.size();
  std::string out;
  out.reserve(size);
  out.push_back(kFrameVersion);
  for (const auto& [name, value] : pairs) {
    PutU32(out, name.size());
    out.append(name);
    PutU32(out, value.size());
    out.append(value);
  }
  return out;
}

absl::StatusOr<std::string> EncodeFrameHeader(const PortableKeys& portable, const Frame& frame,
                                              absl::FunctionRef<bool(std::string_view)> skip) {
  // Most headers fit at once; a longer one grows as a string does.
  constexpr std::size_t kReserve = 256;
  std::string out;
  absl::StatusOr<std::optional<Clock::duration>> encoded =
      portable.EncodeEach(frame, [&](std::string_view name, std::string_view bytes) {
        if (skip(name)) return;
        if (out.empty()) {
          out.reserve(kReserve);
          out.push_back(kFrameVersion);
        }
        PutU32(out, name.size());
        out.append(name);
        PutU32(out, bytes.size());
        out.append(bytes);
      });
  if (!encoded.ok()) return encoded.status();
  return out;
}

absl::StatusOr<WirePairViews> DecodeFramePairViews(std::string_view bytes,
                                                   const PortableLimits& limits) {
  if (bytes.empty()) return WirePairViews{};
  if (bytes[0] != kFrameVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(kFrameHeader), ": unknown version ",
                     static_cast<int>(static_cast<unsigned char>(bytes[0]))));
  }
  bytes.remove_prefix(1);
  WirePairViews out;
  std::size_t total = 0;
  while (!bytes.empty()) {
    if (out.size() == limits.max_pairs) {
      return absl::InvalidArgumentError(
          absl::StrCat(AsAbsl(kFrameHeader), ": more than ", limits.max_pairs, " pairs"));
    }
    std::string_view name;
    std::string_view value;
    if (!TakeField(bytes, limits.max_name_bytes, name) ||
        !TakeField(bytes, limits.max_value_bytes, value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          AsAbsl(kFrameHeader), ": truncated or over-long record after ", out.size(), " pairs"));
    }
    total += name.size() + value.size();
    if (total > limits.max_total_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(AsAbsl(kFrameHeader), ": pairs exceed ", limits.max_total_bytes, " bytes"));
    }
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(AsAbsl(kFrameHeader), ": empty key name"));
    }
    out.emplace_back(name, value);
  }
  return out;
}

absl::StatusOr<WirePairs> DecodeFramePairs(std::string_view bytes, const PortableLimits& limits) {
  absl::StatusOr<WirePairViews> views = DecodeFramePairViews(bytes, limits);
  if (!views.ok()) return views.status();
  WirePairs out;
  out.reserve(views->size());
  for (const auto& [name, value] : *views) out.emplace_back(std::string(name), std::string(value));
  return out;
}

absl::StatusOr<TraceParent> ParseTraceParent(std::string_view header) {
  // version(2) - trace(32) - span(16) - flags(2): 55 characters.
  constexpr std::size_t kLength = 55;
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("traceparent \"", base_internal::Echo(header, 64), "\": ", AsAbsl(why)));
  };
  if (header.size() < kLength) return bad("too short");
  const std::string_view version = header.substr(0, 2);
  if (!IsLowerHex(version) || version == "ff") return bad("invalid version");
  if (version == "00" && header.size() != kLength) return bad("version 00 has 55 characters");
  if (version != "00" && header.size() > kLength && header[kLength] != '-') {
    return bad("unexpected characters after the flags");
  }
  if (header[2] != '-' || header[35] != '-' || header[52] != '-') return bad("misplaced '-'");
  TraceParent out;
  const std::string_view trace = header.substr(3, 32);
  const std::string_view span = header.substr(36, 16);
  const std::string_view flags = header.substr(53, 2);
  if (!IsLowerHex(trace) || AllZero(trace)) return bad("invalid trace id");
  if (!IsLowerHex(span) || AllZero(span)) return bad("invalid parent id");
  if (!IsLowerHex(flags)) return bad("invalid flags");
  out.trace_id = std::string(trace);
  out.span_id = std::string(span);
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  out.flags = static_cast<std::uint8_t>(nibble(flags[0]) * 16 + nibble(flags[1]));
  return out;
}

std::string FormatTraceParent(std::string_view trace_id, std::string_view span_id,
                              std::uint8_t flags) {
  constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(55);
  out.append("00-");
  out.append(trace_id);
  out.push_back('-');
  out.append(span_id);
  out.push_back('-');
  out.push_back(kHex[flags >> 4]);
  out.push_back(kHex[flags & 0xf]);
  return out;
}

namespace {

bool IsLcAlpha(char c) { return c >= 'a' && c <= 'z'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsKeyChar(char c) {
  return IsLcAlpha(c) || IsDigit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

// W3C tracestate key: simple-key, or tenant-id "@" system-id.
bool IsTraceStateKey(std::string_view key) {
  const std::size_t at = key.find('@');
  if (at == std::string_view::npos) {
    if (key.empty() || key.size() > 256 || !IsLcAlpha(key[0])) return false;
    for (char c : key) {
      if (!IsKeyChar(c)) return false;
    }
    return true;
  }
  const std::string_view tenant = key.substr(0, at);
  const std::string_view system = key.substr(at + 1);
  if (tenant.empty() || tenant.size() > 241 || !(IsLcAlpha(tenant[0]) || IsDigit(tenant[0]))) {
    return false;
  }
  if (system.empty() || system.size() > 14 || !IsLcAlpha(system[0])) return false;
  for (char c : tenant) {
    if (!IsKeyChar(c)) return false;
  }
  for (char c : system) {
    if (!IsKeyChar(c)) return false;
  }
  return true;
}

// W3C tracestate value: 1-256 printable ASCII characters but ',' and '=', not ending in ' '.
bool IsTraceStateValue(std::string_view value) {
  if (value.empty() || value.size() > 256 || value.back() == ' ') return false;
  for (char c : value) {
    if (c < 0x20 || c > 0x7e || c == ',' || c == '=') return false;
  }
  return true;
}

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

absl::StatusOr<std::string> ParseTraceState(std::string_view header) {
  constexpr std::size_t kMaxMembers = 32;
  constexpr std::size_t kLongMember = 128;
  auto bad = [&](std::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("tracestate \"", base_internal::Echo(header, 64), "\": ", AsAbsl(why)));
  };
  boost::container::small_vector<std::string_view, 8> members;
  std::size_t total = 0;
  while (true) {
    const std::size_t comma = header.find(',');
    const std::string_view member = TrimOws(header.substr(0, comma));
    if (!member.empty()) {
      if (members.size() == kMaxMembers) return bad("more than 32 list members");
      const std::size_t eq = member.find('=');
      if (eq == std::string_view::npos) return bad("a list member is not key=value");
      const std::string_view key = member.substr(0, eq);
      if (!IsTraceStateKey(key)) return bad("invalid key");
      if (!IsTraceStateValue(member.substr(eq + 1))) return bad("invalid value");
      for (std::string_view seen : members) {
        if (seen.substr(0, seen.find('=')) == key) return bad("a key appears twice");
      }
      members.push_back(member);
      total += member.size();
    }
    if (comma == std::string_view::npos) break;
    header.remove_prefix(comma + 1);
  }
  // The joined length: the members and the commas between them.
  auto joined = [&] { return members.empty() ? 0 : total + members.size() - 1; };
  if (joined() > kMaxTraceStateBytes) {
    members.erase(std::remove_if(members.begin(), members.end(),
                                 [&](std::string_view m) {
                                   if (m.size() <= kLongMember) return false;
                                   total -= m.size();
                                   return true;
                                 }),
                  members.end());
  }
  while (joined() > kMaxTraceStateBytes) {
    total -= members.back().size();
    members.pop_back();
  }
  std::string out;
  out.reserve(joined());
  for (std::string_view member : members) {
    if (!out.empty()) out.push_back(',');
    out.append(member);
  }
  return out;
}

bool IsW3CTraceId(std::string_view id) { return id.size() == 32 && IsLowerHex(id) && !AllZero(id); }

absl::StatusOr<std::int64_t> ParseHops(std::string_view header) {
  const bool digits =
      !header.empty() && header.size() <= 9 &&
      std::all_of(header.begin(), header.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
      (header.size() == 1 || header[0] != '0');
  if (!digits) {
    return absl::InvalidArgumentError(
        absl::StrCat("framekit-hops is not a hop count (0 to 999999999 in decimal digits, no sign "
                     "or leading zero): \"",
                     base_internal::Echo(header), "\""));
  }
  std::int64_t hops = 0;
  (void)absl::SimpleAtoi(AsAbsl(header), &hops);  // cannot fail: at most 9 digits, checked above
  return hops;
}

std::string FormatHops(std::int64_t hops) {
  const std::int64_t next = hops < 0 ? 1 : (hops >= kMaxWireHops ? kMaxWireHops : hops + 1);
  return absl::StrCat(next);
}

bool IsPeerToken(std::string_view token) {
  if (token.empty() || token.size() > 1024) return false;
  return std::all_of(token.begin(), token.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

bool IsTraceId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

WireStatus ToWireStatus(const absl::Status& status) {
  WireStatus out;
  out.code = static_cast<int>(status.code());
  out.message = std::string(AsStd(status.message()));
  v1::RpcStatus details;
  status.ForEachPayload([&](absl::string_view url, const absl::Cord& payload) {
    v1::Any* any = details.add_details();
    any->set_type_url(std::string(url));
    any->set_value(std::string(payload));
  });
  if (details.details_size() > 0) {
    // The message travels in gRPC's own field only: a proto3 string must be UTF-8, and an absl
    // message need not be (a non-UTF-8 one here would make the details unreadable).
    details.set_code(out.code);
    details.SerializeToString(&out.details);
  }
  return out;
}

absl::Status FromWireStatus(int code, std::string_view message, std::string_view details) {
  if (code == 0) return absl::OkStatus();
  const auto absl_code = code > 0 && code <= kMaxGrpcCode ? static_cast<absl::StatusCode>(code)
                                                          : absl::StatusCode::kUnknown;
  absl::Status status(absl_code, AsAbsl(message));
  v1::RpcStatus parsed;
  if (!details.empty() && details.size() <= kMaxDetailsBytes &&
      parsed.ParseFromArray(details.data(), static_cast<int>(details.size()))) {
    for (const v1::Any& any : parsed.details()) {
      if (any.type_url().empty()) continue;
      status.SetPayload(any.type_url(), absl::Cord(any.value()));
    }
  }
  return status;
}

}  // namespace framekit::rpc
