#include "framekit/isolate/internal/wire.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::isolate_internal {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;

std::string BodyOf(const std::string& message) { return message.substr(kHeaderBytes); }

TEST(Wire, CallRoundTrip) {
  CallMessage call;
  call.handler = "thumb";
  call.frame.pairs = {{"a", "1"}, {"b", std::string("\0x", 2)}};
  call.frame.remaining = std::chrono::milliseconds(250);
  call.payload = "payload";
  absl::StatusOr<std::string> wire = EncodeCall(call, WireLimits{});
  ASSERT_THAT(wire, IsOk());
  absl::StatusOr<CallMessage> back = DecodeCall(BodyOf(*wire), WireLimits{});
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->handler, "thumb");
  EXPECT_EQ(back->frame.pairs, call.frame.pairs);
  EXPECT_EQ(back->frame.remaining, call.frame.remaining);
  EXPECT_EQ(back->payload, "payload");
}

TEST(Wire, NoDeadlineStaysNone) {
  CallMessage call;
  call.handler = "h";
  absl::StatusOr<std::string> wire = EncodeCall(call, WireLimits{});
  ASSERT_THAT(wire, IsOk());
  absl::StatusOr<CallMessage> back = DecodeCall(BodyOf(*wire), WireLimits{});
  ASSERT_THAT(back, IsOk());
  EXPECT_FALSE(back->frame.remaining.has_value());
}

TEST(Wire, DoneRoundTripAndBadCode) {
  DoneMessage done;
  done.code = absl::StatusCode::kPermissionDenied;
  done.message = "no";
  done.threw = true;
  done.panic_type = "std::runtime_error";
  done.panic_message = "boom";
  done.peak_rss_bytes = 1234;
  std::string body = BodyOf(EncodeDone(done, WireLimits{}));
  absl::StatusOr<DoneMessage> back = DecodeDone(body, WireLimits{});
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->code, absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(back->message, "no");
  EXPECT_TRUE(back->threw);
  EXPECT_EQ(back->panic_type, "std::runtime_error");
  EXPECT_EQ(back->peak_rss_bytes, 1234u);
  body[1] = 99;  // status code 99
  EXPECT_THAT(DecodeDone(body, WireLimits{}), StatusIs(absl::StatusCode::kInvalidArgument));
}

// Tests that every truncation of a valid message, and trailing bytes, are rejected.
TEST(Wire, TruncatedAndPaddedBodiesAreRejected) {
  CallMessage call;
  call.handler = "h";
  call.frame.pairs = {{"k", "v"}};
  call.payload = "p";
  const std::string body = BodyOf(*EncodeCall(call, WireLimits{}));
  for (std::size_t n = 0; n < body.size(); ++n) {
    EXPECT_THAT(DecodeCall(body.substr(0, n), WireLimits{}),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << n;
  }
  EXPECT_THAT(DecodeCall(body + "x", WireLimits{}), StatusIs(absl::StatusCode::kInvalidArgument));
  const std::string done = BodyOf(EncodeDone(DoneMessage{}, WireLimits{}));
  for (std::size_t n = 0; n < done.size(); ++n) {
    EXPECT_THAT(DecodeDone(done.substr(0, n), WireLimits{}),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

TEST(Wire, HugeCountsAndLengthsAreRejectedWithoutAllocating) {
  std::string body(1, static_cast<char>(MessageType::kCall));
  body += std::string("\x01\x00\x00\x00h", 5);
  body += std::string(8, '\xff');              // remaining -1
  body += std::string("\xff\xff\xff\xff", 4);  // 4 billion pairs
  EXPECT_THAT(DecodeCall(body, WireLimits{}), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string stream("\xff\xff\xff\xff\x04", 5);
  MessageBuffer buffer(WireLimits{});
  buffer.Append(stream);
  EXPECT_THAT(buffer.Next(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("length")));
}

TEST(Wire, BufferSplitsAStreamFedByteByByte) {
  const std::string stream = EncodeChunk("ab") + EncodeChunk("") + EncodeHello(42);
  MessageBuffer buffer(WireLimits{});
  std::vector<Message> got;
  for (char c : stream) {
    buffer.Append(std::string_view(&c, 1));
    for (;;) {
      absl::StatusOr<std::optional<Message>> next = buffer.Next();
      ASSERT_THAT(next, IsOk());
      if (!next->has_value()) break;
      got.push_back(**next);
    }
  }
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(*DecodeChunk(got[0].body), "ab");
  EXPECT_EQ(*DecodeChunk(got[1].body), "");
  EXPECT_EQ(*DecodeHello(got[2].body), 42);
  EXPECT_EQ(buffer.buffered(), 0u);
}

TEST(Wire, UnknownTypeIsRejected) {
  MessageBuffer buffer(WireLimits{});
  buffer.Append(std::string("\x01\x00\x00\x00\x09", 5));
  EXPECT_THAT(buffer.Next(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("type")));
}

TEST(Wire, FaultRecordParsesAndSanitises) {
  const FaultRecord record =
      ParseFaultRecord("signal 31\nsyscall 59\ndetail terminate: x\n./w(+0x1)[0x2]\n\x01\x02\n");
  EXPECT_EQ(record.signal, 31);
  EXPECT_EQ(record.syscall, 59);
  EXPECT_EQ(record.detail, "terminate: x");
  EXPECT_EQ(record.stack, "./w(+0x1)[0x2]\n??\n");
  EXPECT_EQ(ParseFaultRecord("signal 999\n").signal, 0);
  EXPECT_EQ(ParseFaultRecord(std::string(100000, 'a'), 10).stack, "aaaaaaaaaa\n");
}

}  // namespace
}  // namespace framekit::isolate_internal
