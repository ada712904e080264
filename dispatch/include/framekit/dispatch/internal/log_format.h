// Helpers for dispatch's key=value log records.
#ifndef FRAMEKIT_DISPATCH_INTERNAL_LOG_FORMAT_H_
#define FRAMEKIT_DISPATCH_INTERNAL_LOG_FORMAT_H_

#include <string>
#include <string_view>

namespace framekit::dispatch_internal {

// `value` in double quotes with backslash, quote, newline, tab and other control characters
// escaped, so that one record stays on one line and parses as key="value".
std::string Quote(std::string_view value);

}  // namespace framekit::dispatch_internal

#endif  // FRAMEKIT_DISPATCH_INTERNAL_LOG_FORMAT_H_
