#include "framekit/ctx/panic.h"

#include <exception>
#include <stdexcept>
#include <string>

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

}  // namespace
}  // namespace framekit
