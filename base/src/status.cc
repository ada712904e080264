#include "framekit/base/internal/status.h"

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"

namespace framekit::base_internal {

absl::Status PrefixStatus(std::string_view prefix, const absl::Status& status) {
  if (status.ok()) return status;
  absl::Status wrapped(status.code(), absl::StrCat(AsAbsl(prefix), status.message()));
  status.ForEachPayload([&wrapped](absl::string_view url, const absl::Cord& payload) {
    wrapped.SetPayload(url, payload);
  });
  return wrapped;
}

absl::Status PrefixStatus(std::string_view what, std::string_view name,
                          const absl::Status& status) {
  if (status.ok()) return status;
  return PrefixStatus(absl::StrCat(AsAbsl(what), " \"", AsAbsl(name), "\": "), status);
}

}  // namespace framekit::base_internal
