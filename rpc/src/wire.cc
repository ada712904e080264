#include "framekit/rpc/wire.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
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
  const auto v = static_cast<std::uint32_t>(n);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
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

bool IsLowerHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
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

absl::StatusOr<WirePairs> DecodeFramePairs(std::string_view bytes, const PortableLimits& limits) {
  if (bytes.empty()) return WirePairs{};
  if (bytes[0] != kFrameVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(kFrameHeader), ": unknown version ",
                     static_cast<int>(static_cast<unsigned char>(bytes[0]))));
  }
  bytes.remove_prefix(1);
  WirePairs out;
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
    out.emplace_back(std::string(name), std::string(value));
  }
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

bool IsW3CTraceId(std::string_view id) { return id.size() == 32 && IsLowerHex(id) && !AllZero(id); }

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
