// Status matchers for the test suites: IsOk() and StatusIs(code, message_matcher), which print
// the status on failure. Works for absl::Status and absl::StatusOr<T>.
#ifndef FRAMEKIT_TESTS_SUPPORT_STATUS_MATCHERS_H_
#define FRAMEKIT_TESTS_SUPPORT_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace framekit::testing {

inline const absl::Status& GetStatus(const absl::Status& status) { return status; }
template <class T>
const absl::Status& GetStatus(const absl::StatusOr<T>& result) {
  return result.status();
}

MATCHER(IsOk, "is OK") {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status: " << status.ToString();
  return status.ok();
}

MATCHER_P2(StatusIs, code, message_matcher,
           "has code " + absl::StatusCodeToString(code) + " and a matching message") {
  const absl::Status& status = GetStatus(arg);
  *result_listener << "status: " << status.ToString();
  return status.code() == code &&
         ::testing::Matches(message_matcher)(std::string(status.message()));
}

}  // namespace framekit::testing

#endif  // FRAMEKIT_TESTS_SUPPORT_STATUS_MATCHERS_H_
