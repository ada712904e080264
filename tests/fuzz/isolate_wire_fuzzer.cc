// Fuzzes what a worker can send its host (and what a host sends a worker): the byte stream is
// split into messages at arbitrary read boundaries, each message decoded as its type says, and
// the fault pipe's text parsed. A compromised worker controls all of it: every input must end
// in a value or InvalidArgument, never a crash, a hang or an unbounded allocation, and whatever
// decodes must encode back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "framekit/ctx/portable.h"
#include "framekit/isolate/internal/wire.h"
#include "framekit/isolate/worker.h"

namespace {

namespace wire = framekit::isolate_internal;

void Check(bool ok) {
  if (!ok) std::abort();
}

const framekit::PortableKeys& Keys() {
  static const auto* keys = [] {
    auto* k = new framekit::PortableKeys();
    Check(framekit::isolate::AddCallKeys(*k).ok());
    return k;
  }();
  return *keys;
}

void DecodeOne(const wire::Message& message, const wire::WireLimits& limits) {
  switch (message.type) {
    case wire::MessageType::kHello: {
      absl::StatusOr<std::int64_t> pid = wire::DecodeHello(message.body);
      if (pid.ok()) Check(wire::EncodeHello(*pid).substr(wire::kHeaderBytes) == message.body);
      break;
    }
    case wire::MessageType::kChunk: {
      absl::StatusOr<std::string_view> chunk = wire::DecodeChunk(message.body);
      Check(chunk.ok() && wire::EncodeChunk(*chunk).substr(wire::kHeaderBytes) == message.body);
      break;
    }
    case wire::MessageType::kDone: {
      absl::StatusOr<wire::DoneMessage> done = wire::DecodeDone(message.body, limits);
      if (done.ok()) {
        Check(wire::EncodeDone(*done, limits).substr(wire::kHeaderBytes) == message.body);
      } else {
        Check(done.status().code() == absl::StatusCode::kInvalidArgument);
      }
      break;
    }
    case wire::MessageType::kCall: {
      absl::StatusOr<wire::CallMessage> call = wire::DecodeCall(message.body, limits);
      if (!call.ok()) {
        Check(call.status().code() == absl::StatusCode::kInvalidArgument);
        break;
      }
      absl::StatusOr<std::string> again = wire::EncodeCall(*call, limits);
      Check(again.ok() && again->substr(wire::kHeaderBytes) == message.body);
      // The worker's next step: the pairs become a frame (bounded, unknown names dropped).
      (void)Keys().Decode(call->frame);
      break;
    }
    case wire::MessageType::kCancel:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  wire::WireLimits limits;
  limits.max_message_bytes = 1 << 16;
  limits.max_status_message_bytes = 1 << 10;
  // The first byte picks the read size, so that messages split at every boundary.
  const std::size_t step = 1 + data[0] % 64;
  const std::string_view stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  wire::MessageBuffer buffer(limits);
  bool broken = false;
  for (std::size_t offset = 0; offset < stream.size() && !broken; offset += step) {
    buffer.Append(stream.substr(offset, step));
    for (;;) {
      absl::StatusOr<std::optional<wire::Message>> next = buffer.Next();
      if (!next.ok()) {
        Check(next.status().code() == absl::StatusCode::kInvalidArgument);
        broken = true;
        break;
      }
      if (!next->has_value()) break;
      Check(!(*next)->body.empty() && (*next)->body.size() <= limits.max_message_bytes);
      DecodeOne(**next, limits);
    }
  }
  Check(buffer.buffered() <= stream.size());
  const wire::FaultRecord record = wire::ParseFaultRecord(stream, 4096);
  Check(record.signal >= 0 && record.signal < 128 && record.stack.size() <= 4096 + 4096 &&
        record.detail.size() <= 8192);
  for (char c : record.stack) Check(c == '\n' || (c >= 0x20 && c <= 0x7e));
  return 0;
}
