// PrefixStatus: "prefix the message, keep the code and the payloads", the one way framekit
// says which resolver, boot component or step an error came from.
#ifndef FRAMEKIT_BASE_INTERNAL_STATUS_H_
#define FRAMEKIT_BASE_INTERNAL_STATUS_H_

#include <string_view>

#include "absl/status/status.h"

namespace framekit::base_internal {

// `status` with the message `<prefix><original message>`, the same code and every payload.
// An OK `status` is returned unchanged (an OK status carries no message).
absl::Status PrefixStatus(std::string_view prefix, const absl::Status& status);

// As PrefixStatus, with the prefix `WHAT "NAME": ` (for example `frame resolver "net.overlay": `).
absl::Status PrefixStatus(std::string_view what, std::string_view name, const absl::Status& status);

}  // namespace framekit::base_internal

#endif  // FRAMEKIT_BASE_INTERNAL_STATUS_H_
