// The network overlay: the frame resolver that decides which network a call's outbound
// traffic takes, and the boot component that installs it.
//
// Selection, per call (fail-safe precedence): the option `network` when it is a non-empty
// string; else the selection inherited from the parent call (the NetworkKey() pair its frame
// carries); else the app default; else nothing. A root call has nothing to inherit, so it takes
// the app default as before; a nested call that names no network stays on its parent's
// network instead of falling back to the default's (possibly less private) route. The selection is
// carried on the call's frame as the pair `NetworkKey()` (inherited by forks), which Dial
// (framekit/net/dial.h) routes by. An id that is not a configured network fails the call with
// NotFound (IsNetworkNotFound); the overlay is never silently skipped. The reserved value
// `clearnet` selects no overlay, where the configuration allows it.
//
// Strict options: the overlay resolver declares the option key "network", so booting it (with
// NetworkComponent or RegisterNetworkOverlay) is all an application does for `network=...` to
// be accepted; an application that never booted it fails such calls with InvalidArgument in
// the dispatchers (IsUndeclaredOption) instead of running them with no route.
//
// Fail-closed claim: the claim "network" (a call whose `network` option is a non-empty
// string) is registered on the FrameResolvers, covered by the overlay resolver. A host
// registers it when it creates its registry (RegisterNetworkClaim); RegisterNetworkOverlay
// registers it too if it is missing. Then a registry whose overlay was forgotten fails such
// calls with FailedPrecondition (IsResolverNotRegistered) instead of sending them to clearnet.
//
// Example:
//   framekit::BootSequence boot;
//   FRAMEKIT_RETURN_IF_ERROR(boot.Add({"resolvers", {}, [](framekit::AppContext& app) {
//     auto resolvers = std::make_shared<framekit::FrameResolvers>();
//     FRAMEKIT_RETURN_IF_ERROR(framekit::net::RegisterNetworkClaim(*resolvers));
//     return app.SetFrameResolvers(resolvers);
//   }}));
//   FRAMEKIT_RETURN_IF_ERROR(boot.Add(framekit::net::NetworkComponent(
//       "default = tor\nnetwork tor socks5 127.0.0.1:9050\n", {"resolvers"})));
//   framekit::AppContext app;
//   FRAMEKIT_RETURN_IF_ERROR(boot.Run(app));
//
//   framekit::PairList pairs;
//   FRAMEKIT_RETURN_IF_ERROR(app.frame_resolvers()->Resolve(parent, options, pairs));
//   framekit::Frame call = parent.Fork().With(pairs);
//   call.Find(framekit::net::NetworkKey());  // "tor"
#ifndef FRAMEKIT_NET_OVERLAY_H_
#define FRAMEKIT_NET_OVERLAY_H_

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "framekit/app/app_context.h"
#include "framekit/app/boot.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/key.h"
#include "framekit/ctx/options.h"
#include "framekit/ctx/pair.h"
#include "framekit/net/network.h"
#include "framekit/resolvers/frame_resolvers.h"

namespace framekit::net {

// The overlay resolver's order in the FrameResolvers registry.
inline constexpr int kOverlayOrder = 200;
// The per-call option that selects a network.
inline constexpr std::string_view kNetworkOption = "network";
// The name the overlay resolver is registered under, and the claim it covers.
inline constexpr std::string_view kOverlayResolverName = "net.overlay";
inline constexpr std::string_view kNetworkClaim = "network";

// Payload type URLs of the net module's errors.
inline constexpr std::string_view kNetworkNotFoundUrl = "type.framekit/NetworkNotFound";
inline constexpr std::string_view kFrameResolversMissingUrl = "type.framekit/FrameResolversMissing";

// The pair naming the network selected for a call: a network id, or "clearnet" when the call
// forced clearnet where that is allowed. Inherited by Frame::Fork().
const Key<std::string>& NetworkKey();

// The AppContext service under which the network boot component stores the registry, so that
// code holding the AppContext can Dial.
const Key<std::shared_ptr<const NetworkRegistry>>& NetworkRegistryKey();

// The overlay resolver (see the file comment). Appends at most one pair, `NetworkKey()`:
//  - option `network` a non-empty string: that id; else the id `parent` carries under
//    NetworkKey() (inherited); else `app_default` when non-empty; else nothing;
//  - an inherited id is checked as an option's is: not in `networks` is NotFound, "clearnet"
//    where `networks` does not allow it is PermissionDenied (never the app default instead);
//  - the selected id not in `networks`, or `networks` null: NotFound (IsNetworkNotFound),
//    nothing appended;
//  - option `network` = "clearnet": appends NetworkKey() = "clearnet" (no overlay; the pair
//    shadows an overlay inherited from the parent frame) when `networks` allows clearnet, else
//    PermissionDenied;
//  - option `network` present but not a string: InvalidArgument.
// NOTE: allocates nothing when the selected id fits std::string's inline buffer (15 chars).
// Thread-safety: the returned function may be called concurrently.
FrameResolverFn OverlayResolver(std::shared_ptr<const NetworkRegistry> networks,
                                std::string app_default);

// Registers the fail-closed claim "network" on `resolvers` (see the file comment).
// AlreadyExists when it is registered; FailedPrecondition when `resolvers` is sealed.
absl::Status RegisterNetworkClaim(FrameResolvers& resolvers);

// Boot step: registers OverlayResolver(networks, app_default) as "net.overlay" at
// kOverlayOrder, declaring the option key "network" and covering the claim "network", and the
// claim itself when it is missing.
// FailedPrecondition (IsFrameResolversMissing) when `app` has no FrameResolvers: boot fails
// loud rather than skip the overlay. InvalidArgument for a null `networks`; NotFound
// (IsNetworkNotFound) when a non-empty `app_default` is not in `networks`; the registry's
// errors (AlreadyExists, FailedPrecondition when sealed) otherwise.
absl::Status RegisterNetworkOverlay(AppContext& app,
                                    std::shared_ptr<const NetworkRegistry> networks,
                                    std::string app_default);

// The network boot component, named "net": parses `config_text` (ParseNetworkConfig), builds
// the registry, stores it in the AppContext under NetworkRegistryKey() and calls
// RegisterNetworkOverlay. Any error fails boot with the component's name.
BootComponent NetworkComponent(std::string config_text, std::vector<std::string> dependencies = {});
// As above, from a configuration already parsed.
BootComponent NetworkComponent(NetworkConfig config, std::vector<std::string> dependencies = {});

// Whether `status` says a selected network is not configured.
bool IsNetworkNotFound(const absl::Status& status);
// Whether `status` says the AppContext had no FrameResolvers to register the overlay into.
bool IsFrameResolversMissing(const absl::Status& status);

// Applies the overlay resolver to one call: runs OverlayResolver(networks, app_default) on
// (parent, options) and appends its pair to `pairs`. Errors as for the resolver.
[[deprecated(
    "register OverlayResolver with RegisterNetworkOverlay and apply FrameResolvers")]] absl::Status
ApplyOverlayPair(const Frame& parent, const Options& options,
                 std::shared_ptr<const NetworkRegistry> networks, std::string app_default,
                 PairList& pairs);

}  // namespace framekit::net

#endif  // FRAMEKIT_NET_OVERLAY_H_
