// Deprecated forwarding header, kept for one release: boot.h moved to the app module.
// Include "framekit/app/boot.h" (target framekit::app) instead; this path goes away in the
// next release. Define FRAMEKIT_NO_DEPRECATED_HEADER_MESSAGES to silence the notice.
#ifndef FRAMEKIT_CTX_BOOT_H_
#define FRAMEKIT_CTX_BOOT_H_

// A note, not a warning: builds with -Werror keep building.
#ifndef FRAMEKIT_NO_DEPRECATED_HEADER_MESSAGES
#pragma message("framekit/ctx/boot.h is deprecated: include framekit/app/boot.h")
#endif

#include "framekit/app/boot.h"  // IWYU pragma: export

#endif  // FRAMEKIT_CTX_BOOT_H_
