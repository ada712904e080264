// GoogleTest matchers for absl::Status and absl::StatusOr<T> that print the status on failure.
//
// `EXPECT_TRUE(status.ok())` reports only "false"; these report the code and the message.
// Installed abseil (20220623) ships no status matchers, so the project's tests use these.
//
// Example:
//   using ::framekit::testing::IsOk;
//   using ::framekit::testing::StatusIs;
//
//   EXPECT_THAT(registry.Register("a", 1, fn), IsOk());
//   ASSERT_THAT(executor.Invoke(frame, "echo", "hi"), IsOk());  // absl::StatusOr<T> too
//   EXPECT_THAT(registry.Register("", 1, fn), StatusIs(absl::StatusCode::kInvalidArgument));
//   EXPECT_THAT(status, StatusIs(absl::StatusCode::kNotFound, HasSubstr("not configured")));
//
// NOTE: inside namespace framekit, `testing::` names this namespace; write `::testing::` for
// GoogleTest's.
#ifndef FRAMEKIT_TESTS_SUPPORT_STATUS_MATCHERS_H_
#define FRAMEKIT_TESTS_SUPPORT_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace framekit::testing {
namespace status_matchers_internal {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <class T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

}  // namespace status_matchers_internal

// Matches an OK absl::Status or absl::StatusOr<T>; on failure prints the status.
MATCHER(IsOk, negation ? "is not OK" : "is OK") {
  const absl::Status& status = status_matchers_internal::GetStatus(arg);
  *result_listener << "whose status is " << status;
  return status.ok();
}

// Matches a status (or StatusOr) whose code is `code`.
MATCHER_P(StatusIs, code,
          std::string(negation ? "has a code other than " : "has code ") +
              absl::StatusCodeToString(code)) {
  const absl::Status& status = status_matchers_internal::GetStatus(arg);
  *result_listener << "whose status is " << status;
  return status.code() == code;
}

// Matches a status (or StatusOr) whose code is `code` and whose message matches
// `message_matcher` (a matcher, or a string for equality).
MATCHER_P2(StatusIs, code, message_matcher,
           std::string(negation ? "does not have code " : "has code ") +
               absl::StatusCodeToString(code) + " and a message that " +
               ::testing::DescribeMatcher<const std::string&>(message_matcher)) {
  const absl::Status& status = status_matchers_internal::GetStatus(arg);
  *result_listener << "whose status is " << status;
  if (status.code() != code) return false;
  return ::testing::ExplainMatchResult(
      ::testing::SafeMatcherCast<const std::string&>(message_matcher),
      std::string(status.message()), result_listener);
}

}  // namespace framekit::testing

#endif  // FRAMEKIT_TESTS_SUPPORT_STATUS_MATCHERS_H_
