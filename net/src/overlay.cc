#include "framekit/net/overlay.h"

#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/base/status_macros.h"
#include "framekit/net/internal/errors.h"

namespace framekit {
namespace net_internal {

absl::Status NetworkNotFoundError(std::string_view id, std::string_view what) {
  // The id may come from a request: echoed bounded and escaped, in the message and the payload.
  const std::string echo = base_internal::Echo(id);
  absl::Status status = absl::NotFoundError(
      absl::StrCat("network \"", echo, "\" (", AsAbsl(what), ") is not configured"));
  status.SetPayload(AsAbsl(net::kNetworkNotFoundUrl), absl::Cord(echo));
  return status;
}

}  // namespace net_internal

namespace net {
namespace {

using net_internal::AsAbsl;
using net_internal::NetworkNotFoundError;

// What the overlay resolver closes over. Everything that does not depend on the call is
// decided here, once: the pair of every configured network is built ahead, so that the
// per-call path is an option lookup, an id lookup and one copy of a prebuilt pair (an inline
// string copy, no allocation for ids of up to 15 characters).
class OverlayState {
 public:
  OverlayState(std::shared_ptr<const NetworkRegistry> networks, std::string app_default)
      : networks_(std::move(networks)), app_default_(std::move(app_default)) {
    const Key<std::string>& key = NetworkKey();
    if (networks_ != nullptr) {
      clearnet_allowed_ = networks_->clearnet_allowed();
      for (const std::string& id : networks_->ids()) {
        if (networks_->ids().size() <= kLinearLimit) {
          small_.push_back({id, Pair::Of(key, id)});
        } else {
          large_.emplace(id, Pair::Of(key, id));
        }
      }
      if (const Pair* pair = FindPair(app_default_)) default_pair_ = *pair;
    }
    clearnet_pair_ = Pair::Of(key, std::string(kClearnet));
  }

  absl::Status Select(const Frame& parent, const Options& options, PairList& out) const {
    if (const OptionValue* value = options.Get(kNetworkOption); value != nullptr) {
      const std::string* id = std::get_if<std::string>(value);
      if (id == nullptr) {
        return absl::InvalidArgumentError("option \"network\" must be a string");
      }
      if (!id->empty()) {
        if (const Pair* pair = FindPair(*id); pair != nullptr) [[likely]] {
          out.push_back(*pair);
          return absl::OkStatus();
        }
        // "clearnet" is never a network id, so it is only looked at once the lookup missed.
        if (*id == kClearnet) {
          if (!clearnet_allowed_) {
            return absl::PermissionDeniedError(
                "option network=clearnet: the network configuration does not allow clearnet "
                "overrides");
          }
          out.push_back(clearnet_pair_);
          return absl::OkStatus();
        }
        return NetworkNotFoundError(*id, "selected by option \"network\"");
      }
    }
    // A nested call keeps the selection it inherited: falling back to the app default could
    // move a call running on an overlay onto a less private route.
    if (const std::string* inherited = parent.Find(NetworkKey()); inherited != nullptr) {
      return SelectInherited(*inherited, out);
    }
    if (app_default_.empty()) return absl::OkStatus();
    if (default_pair_.empty()) [[unlikely]] {
      return NetworkNotFoundError(app_default_, "the app default");
    }
    out.push_back(default_pair_);
    return absl::OkStatus();
  }

 private:
  // Up to this many networks, a linear scan comparing sizes first beats hashing the id.
  static constexpr std::size_t kLinearLimit = 8;

  struct Entry {
    std::string id;
    Pair pair;
  };

  // The inherited selection `id`, checked against this registry as an option would be: a
  // frame may come from another node or be built by hand.
  absl::Status SelectInherited(const std::string& id, PairList& out) const {
    if (const Pair* pair = FindPair(id); pair != nullptr) [[likely]] {
      out.push_back(*pair);
      return absl::OkStatus();
    }
    if (id == kClearnet) {
      if (!clearnet_allowed_) {
        return absl::PermissionDeniedError(
            "inherited network=clearnet: the network configuration does not allow clearnet "
            "overrides");
      }
      out.push_back(clearnet_pair_);
      return absl::OkStatus();
    }
    return NetworkNotFoundError(id, "inherited from the parent call");
  }

  const Pair* FindPair(std::string_view id) const {
    for (const Entry& entry : small_) {
      if (entry.id.size() == id.size() && entry.id == id) return &entry.pair;
    }
    if (large_.empty()) return nullptr;
    const auto it = large_.find(AsAbsl(id));
    return it == large_.end() ? nullptr : &it->second;
  }

  std::shared_ptr<const NetworkRegistry> networks_;
  std::string app_default_;
  bool clearnet_allowed_ = false;
  std::vector<Entry> small_;
  absl::flat_hash_map<std::string, Pair> large_;
  Pair default_pair_;  // empty when the default is unset or not configured
  Pair clearnet_pair_;
};

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
  auto state = std::make_shared<const OverlayState>(std::move(networks), std::move(app_default));
  return [state = std::move(state)](const Frame& parent, const Options& options,
                                    PairList& out) -> absl::Status {
    return state->Select(parent, options, out);
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
  FRAMEKIT_RETURN_IF_ERROR(resolvers->RegisterAll({{
      .name = std::string(kOverlayResolverName),
      .order = kOverlayOrder,
      .fn = OverlayResolver(std::move(networks), std::move(app_default)),
      .covers = {std::string(kNetworkClaim)},
      .option_keys = {std::string(kNetworkOption)},
  }}));
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
