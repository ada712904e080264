// Error helpers shared by the net module's sources.
#ifndef FRAMEKIT_NET_INTERNAL_ERRORS_H_
#define FRAMEKIT_NET_INTERNAL_ERRORS_H_

#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "framekit/base/internal/strings.h"

namespace framekit::net_internal {

// The project's one string_view bridge, under the name the net sources use.
using base_internal::AsAbsl;

// NotFound "network \"ID\" (WHAT) is not configured", with the kNetworkNotFoundUrl payload
// holding the id.
absl::Status NetworkNotFoundError(std::string_view id, std::string_view what);

}  // namespace framekit::net_internal

#endif  // FRAMEKIT_NET_INTERNAL_ERRORS_H_
