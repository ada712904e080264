#include "framekit/isolate/internal/wire.h"

#include <errno.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"

namespace framekit::isolate_internal {
namespace {

void PutU32(std::string& out, std::uint32_t v) { base_internal::AppendUint32Le(out, v); }
void PutU64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutString(std::string& out, std::string_view s) {
  PutU32(out, static_cast<std::uint32_t>(s.size()));
  out.append(s);
}

// Prepends the header to a body that starts with its type byte.
std::string Frame(std::string body) {
  std::string out;
  out.reserve(kHeaderBytes + body.size());
  PutU32(out, static_cast<std::uint32_t>(body.size()));
  out.append(body);
  return out;
}

std::string Body(MessageType type) { return std::string(1, static_cast<char>(type)); }

// Reads fields off a body, every read bounds-checked.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool U8(std::uint8_t& v) {
    if (in_.empty()) return false;
    v = static_cast<std::uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool U32(std::uint32_t& v) {
    if (in_.size() < 4) return false;
    v = 0;
    for (int i = 0; i < 4; ++i) v |= std::uint32_t{static_cast<std::uint8_t>(in_[i])} << (8 * i);
    in_.remove_prefix(4);
    return true;
  }
  bool U64(std::uint64_t& v) {
    if (in_.size() < 8) return false;
    v = 0;
    for (int i = 0; i < 8; ++i) v |= std::uint64_t{static_cast<std::uint8_t>(in_[i])} << (8 * i);
    in_.remove_prefix(8);
    return true;
  }
  bool String(std::string_view& s, std::size_t max) {
    std::uint32_t n = 0;
    if (!U32(n) || n > in_.size() || n > max) return false;
    s = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

absl::Status Malformed(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(
      "isolate wire: malformed ", absl::string_view(what.data(), what.size()), " message"));
}

// Strips and checks the type byte.
bool Expect(Reader& r, MessageType type) {
  std::uint8_t t = 0;
  return r.U8(t) && t == static_cast<std::uint8_t>(type);
}

}  // namespace

std::string EncodeHello(std::int64_t pid) {
  std::string body = Body(MessageType::kHello);
  PutU64(body, static_cast<std::uint64_t>(pid));
  return Frame(std::move(body));
}

absl::StatusOr<std::string> EncodeCall(const CallMessage& call, const WireLimits& limits) {
  if (call.handler.empty() || call.handler.size() > limits.max_handler_name_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("isolate: handler name must be 1-", limits.max_handler_name_bytes, " bytes"));
  }
  std::string body = Body(MessageType::kCall);
  PutString(body, call.handler);
  const std::int64_t remaining =
      call.frame.remaining
          ? std::chrono::duration_cast<std::chrono::nanoseconds>(*call.frame.remaining).count()
          : -1;
  PutU64(body, static_cast<std::uint64_t>(remaining));
  PutU32(body, static_cast<std::uint32_t>(call.frame.pairs.size()));
  for (const auto& [name, value] : call.frame.pairs) {
    PutString(body, name);
    PutString(body, value);
  }
  PutString(body, call.payload);
  if (body.size() > limits.max_message_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("isolate: call message of ", body.size(),
                                                     " bytes exceeds the limit of ",
                                                     limits.max_message_bytes));
  }
  return Frame(std::move(body));
}

std::string EncodeCancel() { return Frame(Body(MessageType::kCancel)); }

std::string EncodeChunk(std::string_view chunk) {
  std::string body = Body(MessageType::kChunk);
  body.append(chunk);
  return Frame(std::move(body));
}

std::string EncodeDone(const DoneMessage& done, const WireLimits& limits) {
  const auto cut = [&](std::string_view s) { return s.substr(0, limits.max_status_message_bytes); };
  std::string body = Body(MessageType::kDone);
  PutU32(body, static_cast<std::uint32_t>(done.code));
  PutString(body, cut(done.message));
  body.push_back(done.threw ? 1 : 0);
  PutString(body, cut(done.panic_type));
  PutString(body, cut(done.panic_message));
  PutU64(body, done.peak_rss_bytes);
  return Frame(std::move(body));
}

absl::StatusOr<std::int64_t> DecodeHello(std::string_view body) {
  Reader r(body);
  std::uint64_t pid = 0;
  if (!Expect(r, MessageType::kHello) || !r.U64(pid) || !r.done()) return Malformed("hello");
  return static_cast<std::int64_t>(pid);
}

absl::StatusOr<CallMessage> DecodeCall(std::string_view body, const WireLimits& limits) {
  Reader r(body);
  CallMessage call;
  std::string_view handler;
  std::uint64_t remaining = 0;
  std::uint32_t pairs = 0;
  if (!Expect(r, MessageType::kCall) || !r.String(handler, limits.max_handler_name_bytes) ||
      handler.empty() || !r.U64(remaining) || !r.U32(pairs)) {
    return Malformed("call");
  }
  call.handler = std::string(handler);
  const auto ns = static_cast<std::int64_t>(remaining);
  if (ns < -1) return Malformed("call (negative remaining time)");
  if (ns >= 0) call.frame.remaining = std::chrono::nanoseconds(ns);
  // Each pair takes at least 8 bytes: a count beyond that cannot be honest.
  if (pairs > body.size() / 8) return Malformed("call (pair count)");
  call.frame.pairs.reserve(pairs);
  for (std::uint32_t i = 0; i < pairs; ++i) {
    std::string_view name;
    std::string_view value;
    if (!r.String(name, limits.max_message_bytes) || !r.String(value, limits.max_message_bytes)) {
      return Malformed("call (pair)");
    }
    call.frame.pairs.emplace_back(std::string(name), std::string(value));
  }
  std::string_view payload;
  if (!r.String(payload, limits.max_message_bytes) || !r.done()) return Malformed("call");
  call.payload = std::string(payload);
  return call;
}

absl::StatusOr<std::string_view> DecodeChunk(std::string_view body) {
  if (body.empty() || body[0] != static_cast<char>(MessageType::kChunk)) return Malformed("chunk");
  return body.substr(1);
}

absl::StatusOr<DoneMessage> DecodeDone(std::string_view body, const WireLimits& limits) {
  Reader r(body);
  DoneMessage done;
  std::uint32_t code = 0;
  std::uint8_t threw = 0;
  std::string_view message;
  std::string_view type;
  std::string_view panic_message;
  const std::size_t max = limits.max_status_message_bytes;
  if (!Expect(r, MessageType::kDone) || !r.U32(code) || !r.String(message, max) || !r.U8(threw) ||
      threw > 1 || !r.String(type, max) || !r.String(panic_message, max) ||
      !r.U64(done.peak_rss_bytes) || !r.done()) {
    return Malformed("done");
  }
  // absl's canonical codes are 0..16.
  if (code > static_cast<std::uint32_t>(absl::StatusCode::kUnauthenticated)) {
    return Malformed("done (status code)");
  }
  done.code = static_cast<absl::StatusCode>(code);
  done.message = std::string(message);
  done.threw = threw == 1;
  done.panic_type = std::string(type);
  done.panic_message = std::string(panic_message);
  return done;
}

absl::StatusOr<std::optional<Message>> MessageBuffer::Next() {
  if (data_.size() - offset_ < kHeaderBytes) return std::optional<Message>();
  std::uint32_t length = 0;
  for (std::size_t i = 0; i < kHeaderBytes; ++i) {
    length |= std::uint32_t{static_cast<std::uint8_t>(data_[offset_ + i])} << (8 * i);
  }
  if (length == 0 || length > limits_.max_message_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("isolate wire: message length ", length,
                                                   " outside 1..", limits_.max_message_bytes));
  }
  const auto type = static_cast<std::uint8_t>(data_[offset_ + kHeaderBytes]);
  if (data_.size() - offset_ > kHeaderBytes &&
      (type < static_cast<std::uint8_t>(MessageType::kHello) ||
       type > static_cast<std::uint8_t>(MessageType::kDone))) {
    return absl::InvalidArgumentError(absl::StrCat("isolate wire: unknown message type ", type));
  }
  if (data_.size() - offset_ - kHeaderBytes < length) return std::optional<Message>();
  Message message;
  message.type = static_cast<MessageType>(type);
  message.body = data_.substr(offset_ + kHeaderBytes, length);
  offset_ += kHeaderBytes + length;
  // Compact once the consumed prefix dominates, so the buffer does not grow without bound.
  if (offset_ == data_.size()) {
    data_.clear();
    offset_ = 0;
  } else if (offset_ > 4096 && offset_ * 2 > data_.size()) {
    data_.erase(0, offset_);
    offset_ = 0;
  }
  return std::optional<Message>(std::move(message));
}

absl::Status SendAll(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return absl::UnavailableError(absl::StrCat("isolate wire: send: ", std::strerror(errno)));
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return absl::OkStatus();
}

FaultRecord ParseFaultRecord(std::string_view text, std::size_t max_bytes) {
  FaultRecord record;
  text = text.substr(0, max_bytes);
  while (!text.empty()) {
    const std::size_t nl = text.find('\n');
    std::string line(text.substr(0, nl));
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    for (char& c : line) {
      if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
    }
    std::string_view view(line);
    int number = 0;
    long syscall = 0;
    const auto tail = [&](std::size_t n) {
      return absl::string_view(view.data() + n, view.size() - n);
    };
    if (view.starts_with("signal ") && absl::SimpleAtoi(tail(7), &number) && number > 0 &&
        number < 128) {
      record.signal = number;
    } else if (view.starts_with("syscall ") && absl::SimpleAtoi(tail(8), &syscall) &&
               syscall >= 0) {
      record.syscall = syscall;
    } else if (view.starts_with("detail ")) {
      if (!record.detail.empty()) record.detail.append("; ");
      record.detail.append(view.substr(7));
    } else if (!view.empty()) {
      record.stack.append(line).push_back('\n');
    }
  }
  return record;
}

}  // namespace framekit::isolate_internal
