// Deprecated forwarding header, kept for one release: app_context.h moved to the app module.
// Include "framekit/app/app_context.h" (target framekit::app) instead; this path goes away in the
// next release. Define FRAMEKIT_NO_DEPRECATED_HEADER_MESSAGES to silence the notice.
#ifndef FRAMEKIT_CTX_APP_CONTEXT_H_
#define FRAMEKIT_CTX_APP_CONTEXT_H_

// A note, not a warning: builds with -Werror keep building.
#ifndef FRAMEKIT_NO_DEPRECATED_HEADER_MESSAGES
#pragma message("framekit/ctx/app_context.h is deprecated: include framekit/app/app_context.h")
#endif

#include "framekit/app/app_context.h"  // IWYU pragma: export

#endif  // FRAMEKIT_CTX_APP_CONTEXT_H_
