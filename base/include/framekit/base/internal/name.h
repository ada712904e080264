// The one name grammar for things a host registers by name: functions, processes, frame
// resolvers, interceptors (and the extension names faults are reported under), and the bounded
// echo of user input in error messages.
//
// Grammar: 1 to kMaxNameLength characters of [A-Za-z0-9_.-], the first a letter or a digit.
// The first-character rule keeps names usable as file names, metric labels and log fields
// ("-x" is not an option, "." and ".." are not directories).
#ifndef FRAMEKIT_BASE_INTERNAL_NAME_H_
#define FRAMEKIT_BASE_INTERNAL_NAME_H_

#include <cstddef>
#include <string>
#include <string_view>

namespace framekit::base_internal {

inline constexpr std::size_t kMaxNameLength = 128;

// Whether `name` follows the grammar above.
bool IsValidName(std::string_view name);

// "KIND name \"ECHO\" is invalid: use 1-128 of [A-Za-z0-9_.-], starting with a letter or digit".
std::string InvalidNameMessage(std::string_view kind, std::string_view name);

}  // namespace framekit::base_internal

#endif  // FRAMEKIT_BASE_INTERNAL_NAME_H_
