// FRAMEKIT_RETURN_IF_ERROR / FRAMEKIT_ASSIGN_OR_RETURN: early returns on a non-OK
// absl::Status or absl::StatusOr<T>. The installed abseil (20220623) has no status macros;
// these are the project's only ones, and part of its public API (the umbrella header
// framekit/framekit.h includes them).
//
// Example:
//   absl::StatusOr<int> ParsePort(std::string_view text);
//
//   absl::Status Boot(framekit::AppContext& app) {
//     FRAMEKIT_ASSIGN_OR_RETURN(int port, ParsePort("8080"));
//     FRAMEKIT_RETURN_IF_ERROR(app.SetFrameResolvers(
//         std::make_shared<framekit::FrameResolvers>()));
//     return port > 0 ? absl::OkStatus() : absl::InvalidArgumentError("port");
//   }
#ifndef FRAMEKIT_BASE_STATUS_MACROS_H_
#define FRAMEKIT_BASE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Evaluates `expr` (an absl::Status) once and returns it from the enclosing function when it
// is not OK.
#define FRAMEKIT_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::absl::Status framekit_status_ = (expr);            \
    if (!framekit_status_.ok()) return framekit_status_; \
  } while (false)

#define FRAMEKIT_STATUS_CONCAT_INNER_(a, b) a##b
#define FRAMEKIT_STATUS_CONCAT_(a, b) FRAMEKIT_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::StatusOr<T>) once; returns its status from the enclosing function
// when it is not OK, otherwise moves the value into `lhs` (a declaration or an lvalue).
// NOTE: expands to more than one statement; do not use it as the body of an unbraced if.
#define FRAMEKIT_ASSIGN_OR_RETURN(lhs, expr) \
  FRAMEKIT_ASSIGN_OR_RETURN_IMPL_(FRAMEKIT_STATUS_CONCAT_(framekit_statusor_, __LINE__), lhs, expr)

#define FRAMEKIT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // FRAMEKIT_BASE_STATUS_MACROS_H_
