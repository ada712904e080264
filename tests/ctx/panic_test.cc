#include "framekit/ctx/panic.h"

#include <exception>
#include <stdexcept>
#include <string>

#include "absl/strings/cord.h"
#include "framekit/base/internal/strings.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {

using base_internal::AsAbsl;
namespace {

using ::framekit::testing::IsOk;

struct UserError {
  int code;
};

absl::Status Throwing(auto thrower) {
  return IsolateStatus("ext", Phase::kResolve, [&]() -> absl::Status {
    thrower();
    return absl::OkStatus();
  });
}

TEST(ExtensionPanic, StdExceptionIsDescribed) {
  const absl::Status status = Throwing([] { throw std::runtime_error("boom"); });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  ASSERT_TRUE(IsExtensionPanic(status));
  const auto panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->extension, "ext");
  EXPECT_EQ(panic->phase, Phase::kResolve);
  EXPECT_EQ(panic->type, "std::runtime_error");
  EXPECT_EQ(panic->message, "boom");
  EXPECT_THAT(std::string(status.message()),
              ::testing::HasSubstr("extension \"ext\" threw in resolve: std::runtime_error: boom"));
}

TEST(ExtensionPanic, NonStdExceptionsAreDescribed) {
  EXPECT_EQ(GetExtensionPanic(Throwing([] { throw 42; }))->message, "42");
  EXPECT_EQ(GetExtensionPanic(Throwing([] { throw 42; }))->type, "int");
  EXPECT_EQ(GetExtensionPanic(Throwing([] { throw "text"; }))->message, "text");
  const auto user = GetExtensionPanic(Throwing([] { throw UserError{3}; }));
  EXPECT_THAT(user->type, ::testing::HasSubstr("UserError"));
  EXPECT_THAT(user->message, ::testing::HasSubstr("UserError"));
}

TEST(ExtensionPanic, NestedExceptionsAreListed) {
  const auto panic = GetExtensionPanic(Throwing([] {
    try {
      throw std::invalid_argument("inner");
    } catch (...) {
      std::throw_with_nested(std::runtime_error("outer"));
    }
  }));
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->message, "outer");
  ASSERT_EQ(panic->nested.size(), 1u);
  EXPECT_EQ(panic->nested[0], "std::invalid_argument: inner");
}

TEST(ExtensionPanic, OkAndOtherErrorsPassThrough) {
  EXPECT_THAT(IsolateStatus("ext", Phase::kInvoke, [] { return absl::OkStatus(); }), IsOk());
  const absl::Status own =
      IsolateStatus("ext", Phase::kInvoke, [] { return absl::NotFoundError("own"); });
  EXPECT_EQ(own.code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(IsExtensionPanic(own));
  EXPECT_FALSE(GetExtensionPanic(own).has_value());
}

TEST(ExtensionPanic, PayloadRoundTripsEveryField) {
  ExtensionPanic panic{"e", Phase::kTeardown, "T", "m:with:colons", {"a: 1", "b: 2"}, "#0 f\n"};
  EXPECT_EQ(GetExtensionPanic(PanicStatus(panic)), panic);
  for (Phase phase : {Phase::kSetup, Phase::kPoll, Phase::kTeardown, Phase::kFinalize, Phase::kHost,
                      Phase::kResolve, Phase::kInvoke}) {
    panic.phase = phase;
    EXPECT_EQ(GetExtensionPanic(PanicStatus(panic))->phase, phase);
  }
}

TEST(ExtensionPanic, CorruptPayloadReadsAsNothing) {
  absl::Status status = absl::InternalError("x");
  status.SetPayload(AsAbsl(kExtensionPanicUrl), absl::Cord("9999:short"));
  EXPECT_TRUE(IsExtensionPanic(status));
  EXPECT_FALSE(GetExtensionPanic(status).has_value());
}

// Tests that a panic status renders as readable text: no length-prefixed payload bytes, no raw
// newlines from the stack, every field named.
TEST(StatusToString, PanicPayloadIsReadable) {
  ExtensionPanic panic;
  panic.extension = "billing";
  panic.phase = Phase::kSetup;
  panic.type = "std::runtime_error";
  panic.message = "disk \"full\"";
  panic.nested = {"std::logic_error: inner"};
  panic.stack = "#0 0x1 Foo()\n#1 0x2 Bar()\n";
  const absl::Status status = PanicStatus(panic);
  const std::string text = StatusToString(status);
  EXPECT_THAT(text, ::testing::StartsWith("INTERNAL: "));
  EXPECT_THAT(text, ::testing::HasSubstr("extension=\"billing\""));
  EXPECT_THAT(text, ::testing::HasSubstr("phase=\"setup\""));
  EXPECT_THAT(text, ::testing::HasSubstr("type=\"std::runtime_error\""));
  EXPECT_THAT(text, ::testing::HasSubstr("nested=[\"std::logic_error: inner\"]"));
  EXPECT_THAT(text, ::testing::HasSubstr("stack_frames=2"));
  EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  EXPECT_EQ(text.find("7:billing"), std::string::npos) << text;  // the raw encoding
  // Status::ToString shows the raw bytes; that is what the helper replaces.
  EXPECT_NE(status.ToString().find("7:billing"), std::string::npos);
}

TEST(StatusToString, OtherStatusesAsToStringWithEscapedPayloads) {
  EXPECT_EQ(StatusToString(absl::OkStatus()), "OK");
  const absl::Status plain = absl::NotFoundError("no such thing");
  EXPECT_EQ(StatusToString(plain), plain.ToString());
  absl::Status binary = absl::InternalError("bad");
  binary.SetPayload("type.example/Bytes", absl::Cord(std::string("a\0\n\xff", 4)));
  const std::string text = StatusToString(binary);
  EXPECT_THAT(text, ::testing::HasSubstr("type.example/Bytes="));
  EXPECT_EQ(text.find('\n'), std::string::npos) << text;
  EXPECT_EQ(text.find('\0'), std::string::npos) << text;
}

}  // namespace
}  // namespace framekit
