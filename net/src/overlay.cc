#include "framekit/net/overlay.h"

#include <memory>
#include <string>
#include <utility>
#include <variant>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/internal/status_macros.h"
#include "framekit/net/internal/errors.h"

namespace framekit {
namespace net_internal {

absl::Status NetworkNotFoundError(std::string_view id, std::string_view what) {
  absl::Status status = absl::NotFoundError(
      absl::StrCat("network \"", AsAbsl(id), "\" (", AsAbsl(what), ") is not configured"));
  status.SetPayload(AsAbsl(net::kNetworkNotFoundUrl), absl::Cord(AsAbsl(id)));
  return status;
}

}  // namespace net_internal

namespace net {
namespace {

using net_internal::AsAbsl;
using net_internal::NetworkNotFoundError;

// What the overlay resolver closes over. Everything that does not depend on the call is
// decided here, once, so that the per-call path is an option lookup, at most one hash lookup
// and one push_back.
struct OverlayState {
  std::shared_ptr<const NetworkRegistry> networks;
  std::string app_default;
  bool default_known = false;
  bool clearnet_allowed = false;
  const Key<std::string>* key = nullptr;
};

absl::Status Select(const OverlayState& state, const Options& options, PairList& out) {
  if (const OptionValue* value = options.Get(kNetworkOption); value != nullptr) {
    const std::string* id = std::get_if<std::string>(value);
    if (id == nullptr) {
      return absl::InvalidArgumentError("option \"network\" must be a string");
    }
    if (!id->empty()) {
      if (*id == kClearnet) {
        if (!state.clearnet_allowed) {
          return absl::PermissionDeniedError(
              "option network=clearnet: the network configuration does not allow clearnet "
              "overrides");
        }
        out.push_back(Pair::Of(*state.key, *id));
        return absl::OkStatus();
      }
      if (state.networks == nullptr || !state.networks->Contains(*id)) {
        return NetworkNotFoundError(*id, "selected by option \"network\"");
      }
      out.push_back(Pair::Of(*state.key, *id));
      return absl::OkStatus();
    }
  }
  if (state.app_default.empty()) return absl::OkStatus();
  if (!state.default_known) [[unlikely]] {
    return NetworkNotFoundError(state.app_default, "the app default");
  }
  out.push_back(Pair::Of(*state.key, state.app_default));
  return absl::OkStatus();
}

}  // namespace

const Key<std::string>& NetworkKey() {
  static const Key<std::string> key{"net.network", /*inherit=*/true};
  return key;
}

const Key<std::shared_ptr<const NetworkRegistry>>& NetworkRegistryKey() {
  static const Key<std::shared_ptr<const NetworkRegistry>> key{"net.registry"};
  return key;
}

FrameResolverFn OverlayResolver(std::shared_ptr<const NetworkRegistry> networks,
                                std::string app_default) {
  auto state = std::make_shared<OverlayState>();
  state->default_known = networks != nullptr && networks->Contains(app_default);
  state->clearnet_allowed = networks != nullptr && networks->clearnet_allowed();
  state->networks = std::move(networks);
  state->app_default = std::move(app_default);
  state->key = &NetworkKey();
  return [state = std::shared_ptr<const OverlayState>(std::move(state))](
             const Frame&, const Options& options, PairList& out) -> absl::Status {
    return Select(*state, options, out);
  };
}

absl::Status RegisterNetworkClaim(FrameResolvers& resolvers) {
  return resolvers.RegisterClaim(
      std::string(kNetworkClaim), [](const Frame&, const Options& options) {
        const std::optional<std::string_view> id = options.GetString(kNetworkOption);
        return id.has_value() && !id->empty();
      });
}

absl::Status RegisterNetworkOverlay(AppContext& app,
                                    std::shared_ptr<const NetworkRegistry> networks,
                                    std::string app_default) {
  FrameResolvers* resolvers = app.frame_resolvers();
  if (resolvers == nullptr) {
    absl::Status status = absl::FailedPreconditionError(
        "net.overlay: the app context has no FrameResolvers; refusing to boot without the "
        "network overlay");
    status.SetPayload(AsAbsl(kFrameResolversMissingUrl), absl::Cord("net.overlay"));
    return status;
  }
  if (networks == nullptr) {
    return absl::InvalidArgumentError("net.overlay: no network registry");
  }
  if (!app_default.empty() && !networks->Contains(app_default)) {
    return NetworkNotFoundError(app_default, "the app default");
  }
  FRAMEKIT_RETURN_IF_ERROR(resolvers->Register(
      std::string(kOverlayResolverName), kOverlayOrder,
      OverlayResolver(std::move(networks), std::move(app_default)), {std::string(kNetworkClaim)}));
  absl::Status claim = RegisterNetworkClaim(*resolvers);
  if (claim.ok() || absl::IsAlreadyExists(claim)) return absl::OkStatus();
  return claim;
}

namespace {

absl::Status StartNetwork(AppContext& app, const NetworkConfig& config) {
  FRAMEKIT_ASSIGN_OR_RETURN(std::shared_ptr<const NetworkRegistry> registry,
                            BuildNetworkRegistry(config));
  FRAMEKIT_RETURN_IF_ERROR(RegisterNetworkOverlay(app, registry, config.app_default));
  return app.Set(NetworkRegistryKey(), std::move(registry));
}

}  // namespace

BootComponent NetworkComponent(std::string config_text, std::vector<std::string> dependencies) {
  return BootComponent{"net", std::move(dependencies),
                       [text = std::move(config_text)](AppContext& app) -> absl::Status {
                         FRAMEKIT_ASSIGN_OR_RETURN(NetworkConfig config, ParseNetworkConfig(text));
                         return StartNetwork(app, config);
                       }};
}

BootComponent NetworkComponent(NetworkConfig config, std::vector<std::string> dependencies) {
  return BootComponent{
      "net", std::move(dependencies),
      [config = std::move(config)](AppContext& app) { return StartNetwork(app, config); }};
}

bool IsNetworkNotFound(const absl::Status& status) {
  return status.code() == absl::StatusCode::kNotFound &&
         status.GetPayload(AsAbsl(kNetworkNotFoundUrl)).has_value();
}

bool IsFrameResolversMissing(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(AsAbsl(kFrameResolversMissingUrl)).has_value();
}

absl::Status ApplyOverlayPair(const Frame& parent, const Options& options,
                              std::shared_ptr<const NetworkRegistry> networks,
                              std::string app_default, PairList& pairs) {
  return OverlayResolver(std::move(networks), std::move(app_default))(parent, options, pairs);
}

}  // namespace net
}  // namespace framekit
