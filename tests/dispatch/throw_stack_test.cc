// Throw-site stack capture (ctx's __cxa_throw interposition) as seen through the guards.
#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/guard.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/fault_log.h"

// Outside any namespace and not inlined, so its symbol is plain to find in the stack.
[[gnu::noinline]] void FramekitThrowSiteMarkerFunction(int code) {
  asm volatile("");  // keep the frame: no tail merging
  throw std::runtime_error("thrown at the marker " + std::to_string(code));
}

namespace framekit::dispatch {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

class ThrowStackTest : public ::testing::Test {
 protected:
  ~ThrowStackTest() override { SetThrowStackCapture(previous_); }
  bool previous_ = ThrowStackCaptureEnabled();
  FaultMonitor monitor_{
      ::framekit::testing::LoggerOptions(std::make_shared<::framekit::testing::CollectingSink>())};
};

TEST_F(ThrowStackTest, CaptureOnNamesTheThrowingFunction) {
  SetThrowStackCapture(true);
  const absl::Status status = CallSetup({"ext", monitor_}, [] {
    FramekitThrowSiteMarkerFunction(1);
    return absl::OkStatus();
  });
  const auto panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_THAT(panic->stack, HasSubstr("FramekitThrowSiteMarkerFunction"));
}

TEST_F(ThrowStackTest, CaptureOffLeavesStackEmpty) {
  SetThrowStackCapture(false);
  const absl::Status status = CallSetup({"ext", monitor_}, [] {
    FramekitThrowSiteMarkerFunction(2);
    return absl::OkStatus();
  });
  const auto panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_THAT(panic->stack, IsEmpty());
}

// Tests that a stack recorded for an exception the extension caught itself is not attributed to
// a later fault thrown while capture was off.
TEST_F(ThrowStackTest, StaleStackIsNotReused) {
  SetThrowStackCapture(true);
  try {
    FramekitThrowSiteMarkerFunction(3);
  } catch (const std::exception&) {
  }
  SetThrowStackCapture(false);
  const absl::Status status = CallSetup({"ext", monitor_}, []() -> absl::Status { throw 5; });
  const auto panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_THAT(panic->stack, IsEmpty());
}

// Tests that a stack recorded for an earlier, internally caught exception of another type is not
// attributed to the fault being described.
TEST_F(ThrowStackTest, StackBelongsToTheCaughtException) {
  SetThrowStackCapture(true);
  const absl::Status status = CallSetup({"ext", monitor_}, []() -> absl::Status {
    try {
      FramekitThrowSiteMarkerFunction(4);
    } catch (const std::runtime_error&) {
      // Rethrow as something else, through std::rethrow_exception, which bypasses __cxa_throw.
      std::rethrow_exception(std::make_exception_ptr(7));
    }
    return absl::OkStatus();
  });
  const auto panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->type, "int");
  EXPECT_THAT(panic->stack, ::testing::Not(HasSubstr("FramekitThrowSiteMarkerFunction")));
}

}  // namespace
}  // namespace framekit::dispatch
