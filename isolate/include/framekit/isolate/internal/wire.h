// The wire between a host and its worker processes: length-prefixed messages over a socketpair.
//
// Every message is a 4-byte little-endian body length, then the body: one type byte and the
// type's fields. A string field is a 4-byte little-endian length and its bytes; an integer is 8
// bytes little-endian. The decoders are strict: a length that runs past the body, a body that
// is longer than its fields, an unknown type or status code, or anything over the limits is
// InvalidArgument, never a crash. The host treats any decode error from a worker as a protocol
// violation and kills that worker (a compromised worker can send anything).
//
// Thread-safety: free functions on values; MessageBuffer is thread-compatible.
#ifndef FRAMEKIT_ISOLATE_INTERNAL_WIRE_H_
#define FRAMEKIT_ISOLATE_INTERNAL_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/portable.h"

namespace framekit::isolate_internal {

enum class MessageType : std::uint8_t {
  kHello = 1,   // worker -> host, once after start-up: pid
  kCall = 2,    // host -> worker: handler, frame, payload
  kCancel = 3,  // host -> worker: stop the current call (its frame's stop token fires)
  kChunk = 4,   // worker -> host: one output chunk
  kDone = 5,    // worker -> host: the call's status (and a handler throw, if any)
};

inline constexpr std::size_t kHeaderBytes = 4;

struct WireLimits {
  std::size_t max_message_bytes = 8 << 20;  // one body
  std::size_t max_status_message_bytes = 64 << 10;
  std::size_t max_handler_name_bytes = 128;
};

struct CallMessage {
  std::string handler;
  PortableFrame frame;
  std::string payload;
};

struct DoneMessage {
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string message;
  bool threw = false;  // the handler threw (caught by the worker's guard)
  std::string panic_type;
  std::string panic_message;
  std::uint64_t peak_rss_bytes = 0;
};

// One decoded message body.
struct Message {
  MessageType type = MessageType::kHello;
  std::string body;  // the whole body, type byte included
};

// Whole messages (header included), ready to write.
std::string EncodeHello(std::int64_t pid);
absl::StatusOr<std::string> EncodeCall(const CallMessage& call, const WireLimits& limits);
std::string EncodeCancel();
std::string EncodeChunk(std::string_view chunk);
std::string EncodeDone(const DoneMessage& done, const WireLimits& limits);

// Body decoders: InvalidArgument on anything malformed or over the limits.
absl::StatusOr<std::int64_t> DecodeHello(std::string_view body);
absl::StatusOr<CallMessage> DecodeCall(std::string_view body, const WireLimits& limits);
absl::StatusOr<std::string_view> DecodeChunk(std::string_view body);
absl::StatusOr<DoneMessage> DecodeDone(std::string_view body, const WireLimits& limits);

// Splits a byte stream into messages. Append what was read; Next yields each complete message
// in order, nullopt when more bytes are needed, InvalidArgument for an empty body, an unknown
// type or a length over max_message_bytes (then the stream is unusable).
class MessageBuffer {
 public:
  explicit MessageBuffer(WireLimits limits) : limits_(limits) {}
  void Append(std::string_view bytes) { data_.append(bytes); }
  absl::StatusOr<std::optional<Message>> Next();
  std::size_t buffered() const { return data_.size() - offset_; }

 private:
  WireLimits limits_;
  std::string data_;
  std::size_t offset_ = 0;
};

// Writes all of `bytes` to the socket `fd` (send with MSG_NOSIGNAL: a closed peer is an error,
// not SIGPIPE). Unavailable when the peer is gone.
absl::Status SendAll(int fd, std::string_view bytes);

// The fault record a crashed worker wrote to its fault pipe, as the host reads it.
struct FaultRecord {
  int signal = 0;      // 0 when none was recorded
  long syscall = -1;   // the denied syscall of a seccomp trap, -1 when none
  std::string detail;  // e.g. "terminate: uncaught std::runtime_error: boom"
  std::string stack;   // one frame per line
};
// Parses what a worker wrote (at most `max_bytes` of it are kept). Never fails: lines it does
// not recognise become stack lines, non-printable bytes are replaced by '?'.
FaultRecord ParseFaultRecord(std::string_view text, std::size_t max_bytes = 64 << 10);

}  // namespace framekit::isolate_internal

#endif  // FRAMEKIT_ISOLATE_INTERNAL_WIRE_H_
