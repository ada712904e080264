// FRAMEKIT_RETURN_IF_ERROR / FRAMEKIT_ASSIGN_OR_RETURN: the installed abseil (20220623) has
// no status macros; these are the project's only ones.
#ifndef FRAMEKIT_CTX_INTERNAL_STATUS_MACROS_H_
#define FRAMEKIT_CTX_INTERNAL_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FRAMEKIT_RETURN_IF_ERROR(expr)                   \
  do {                                                   \
    ::absl::Status framekit_status_ = (expr);            \
    if (!framekit_status_.ok()) return framekit_status_; \
  } while (false)

#define FRAMEKIT_STATUS_CONCAT_INNER_(a, b) a##b
#define FRAMEKIT_STATUS_CONCAT_(a, b) FRAMEKIT_STATUS_CONCAT_INNER_(a, b)

#define FRAMEKIT_ASSIGN_OR_RETURN(lhs, expr) \
  FRAMEKIT_ASSIGN_OR_RETURN_IMPL_(FRAMEKIT_STATUS_CONCAT_(framekit_statusor_, __LINE__), lhs, expr)

#define FRAMEKIT_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                    \
  if (!statusor.ok()) return std::move(statusor).status();   \
  lhs = std::move(statusor).value()

#endif  // FRAMEKIT_CTX_INTERNAL_STATUS_MACROS_H_
