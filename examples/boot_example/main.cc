// A small host: boots an app, registers two frame resolvers, and resolves a frame for a few
// calls, printing each one. Run it with scripts/run.sh.
#include <cstdio>
#include <memory>
#include <string>

#include "framekit/base/status_macros.h"
#include "framekit/framekit.h"

namespace {

// Frame options, each defined once.
const framekit::Key<std::string> kTenant{"app.tenant"};
const framekit::Key<std::string> kRegion{"app.region"};
const framekit::Key<std::int64_t> kPriority{"app.priority", /*inherit=*/false};

// Boot: install the registry and register the resolvers. A new frame option is one resolver
// and one Register line; each resolver declares the option keys it reads.
absl::Status Boot(framekit::AppContext& app) {
  auto resolvers = std::make_shared<framekit::FrameResolvers>();
  FRAMEKIT_RETURN_IF_ERROR(app.SetFrameResolvers(resolvers));
  FRAMEKIT_RETURN_IF_ERROR(app.Set(kRegion, "eu-west"));

  // The tenant comes from the caller's identity; a call may not name another tenant.
  FRAMEKIT_RETURN_IF_ERROR(resolvers->Register(
      "app.tenant", 300, /*option_keys=*/{"tenant"},
      [](const framekit::Frame& parent, const framekit::Options& options,
         framekit::PairList& out) -> absl::Status {
        const framekit::CallerContext* caller = framekit::CallerOf(parent);
        if (caller == nullptr || caller->tenant_id.empty()) {
          return absl::UnauthenticatedError("no caller tenant");
        }
        if (auto asked = options.GetString("tenant"); asked && *asked != caller->tenant_id) {
          return absl::PermissionDeniedError("caller may not act for another tenant");
        }
        out.push_back(framekit::Pair::Of(kTenant, caller->tenant_id));
        return absl::OkStatus();
      }));
  // Priority: an option with a default.
  FRAMEKIT_RETURN_IF_ERROR(resolvers->Register(
      "app.priority", 400, /*option_keys=*/{"priority"},
      [](const framekit::Frame&, const framekit::Options& options, framekit::PairList& out) {
        out.push_back(framekit::Pair::Of(kPriority, options.GetInt("priority").value_or(0)));
        return absl::OkStatus();
      }));
  resolvers->Seal();
  app.Seal();
  return absl::OkStatus();
}

// What every dispatcher does for a call: check the options strictly (this one reads none
// itself), fork the parent, apply the registry, attach pairs.
absl::StatusOr<framekit::Frame> NewCallFrame(const framekit::AppContext& app,
                                             const framekit::Frame& parent,
                                             const framekit::Options& options) {
  FRAMEKIT_RETURN_IF_ERROR(framekit::CheckOptions(app.frame_resolvers(), options, {}));
  framekit::PairList pairs;
  FRAMEKIT_RETURN_IF_ERROR(framekit::Resolve(app.frame_resolvers(), parent, options, pairs));
  return parent.Fork().With(pairs);
}

void Call(const framekit::AppContext& app, const framekit::Frame& parent, const char* label,
          const framekit::Options& options) {
  absl::StatusOr<framekit::Frame> frame = NewCallFrame(app, parent, options);
  if (frame.ok()) {
    std::printf("%-28s ok    %s\n", label, frame->DebugString().c_str());
  } else {
    std::printf("%-28s error %s\n", label, frame.status().ToString().c_str());
  }
}

}  // namespace

int main() {
  framekit::AppContext app;
  if (absl::Status status = Boot(app); !status.ok()) {
    std::fprintf(stderr, "boot failed: %s\n", status.ToString().c_str());
    return 1;
  }
  std::printf("booted: region=%s, resolvers in order:", app.Get(kRegion)->c_str());
  for (const std::string& name : app.frame_resolvers()->names()) std::printf(" %s", name.c_str());
  std::printf("\n\n");

  const framekit::Frame request =
      framekit::WithCaller(framekit::Frame(), {.user_id = "u1", .tenant_id = "acme"});
  Call(app, request, "default options", {});
  Call(app, request, "priority=5", {{"priority", 5}});
  Call(app, request, "tenant=acme (own tenant)", {{"tenant", "acme"}});
  Call(app, request, "tenant=other (refused)", {{"tenant", "other"}});
  Call(app, request, "priorty=5 (misspelt)", {{"priorty", 5}});
  Call(app, framekit::Frame(), "no caller (refused)", {});

  // Every call succeeded or failed as shown above; exit 0 only if that is what happened.
  const bool ok = NewCallFrame(app, request, {}).ok() &&
                  !NewCallFrame(app, request, {{"tenant", "other"}}).ok() &&
                  !NewCallFrame(app, request, {{"priorty", 5}}).ok();
  return ok ? 0 : 1;
}
