// Fuzzes the net module's input handling. The first byte picks the target, the rest is the
// input:
//  0: network ids. NetworkRegistry::Add accepts exactly the ids of the documented grammar
//     (1 to 64 of [a-z0-9._-], not "clearnet"), Contains agrees, and a second Add of an
//     accepted id is AlreadyExists.
//  1: addresses. A direct network's bind address is accepted exactly when it is a numeric IP
//     address; a SOCKS5 proxy host exactly when IsValidHost, and an accepted host never holds
//     a character that could change the meaning of the proxy URL handed to libcurl.
//  2: the configuration parser. Any text parses or fails with InvalidArgument naming a line;
//     what parses formats back to text that parses to an equal configuration, and builds a
//     registry unless its default names no network (NotFound).
//  3: the overlay resolver. Whatever the option, the call selects exactly the configured id
//     or fails without appending.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/net/network.h"
#include "framekit/net/overlay.h"

namespace {

using framekit::net::Network;
using framekit::net::NetworkRegistry;

void Check(bool condition) {
  if (!condition) std::abort();
}

// The id grammar, written independently of the library's.
bool ReferenceId(std::string_view id) {
  if (id.empty() || id.size() > 64 || id == "clearnet") return false;
  for (unsigned char c : id) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void FuzzId(std::string_view input) {
  const std::string id(input);
  NetworkRegistry networks;
  const absl::Status added = networks.Add(Network::Direct(id));
  Check(added.ok() == ReferenceId(id));
  Check(added.ok() || added.code() == absl::StatusCode::kInvalidArgument);
  Check(framekit::net::IsValidNetworkId(id) == ReferenceId(id));
  Check(networks.Contains(id) == added.ok());
  if (added.ok()) {
    Check(networks.Add(Network::Socks5(id, "127.0.0.1", 1)).code() ==
          absl::StatusCode::kAlreadyExists);
  }
}

void FuzzAddress(std::string_view input) {
  const std::string address(input);
  NetworkRegistry networks;
  const absl::Status bind = networks.Add(Network::Direct("lan", address));
  Check(bind.ok() == (address.empty() || framekit::net::IsValidIpAddress(address)));
  const absl::Status proxy = networks.Add(Network::Socks5("tor", address, 9050));
  Check(proxy.ok() == framekit::net::IsValidHost(address));
  if (proxy.ok()) {
    for (unsigned char c : address) {
      const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '.' || c == '-' || c == ':';
      Check(ok);
    }
  }
}

void FuzzConfig(std::string_view text) {
  absl::StatusOr<framekit::net::NetworkConfig> config = framekit::net::ParseNetworkConfig(text);
  if (!config.ok()) {
    Check(config.status().code() == absl::StatusCode::kInvalidArgument);
    Check(config.status().message().substr(0, 5) == "line ");
    return;
  }
  const std::string formatted = framekit::net::FormatNetworkConfig(*config);
  absl::StatusOr<framekit::net::NetworkConfig> again = framekit::net::ParseNetworkConfig(formatted);
  Check(again.ok());
  Check(*again == *config);
  auto registry = framekit::net::BuildNetworkRegistry(*config);
  if (!registry.ok()) {
    Check(framekit::net::IsNetworkNotFound(registry.status()));
    return;
  }
  Check((*registry)->size() == config->networks.size());
}

void FuzzResolver(std::string_view value) {
  static const auto* const kNetworks = [] {
    auto networks = std::make_shared<NetworkRegistry>();
    Check(networks->Add(Network::Socks5("tor", "127.0.0.1", 9050)).ok());
    return new std::shared_ptr<const NetworkRegistry>(std::move(networks));
  }();
  static const auto* const kResolver =
      new framekit::FrameResolverFn(framekit::net::OverlayResolver(*kNetworks, "tor"));
  framekit::PairList pairs;
  const absl::Status status =
      (*kResolver)(framekit::Frame(), framekit::Options{{"network", std::string(value)}}, pairs);
  if (value.empty() || value == "tor") {
    Check(status.ok() && pairs.size() == 1 && *pairs[0].As(framekit::net::NetworkKey()) == "tor");
  } else if (value == "clearnet") {
    Check(status.code() == absl::StatusCode::kPermissionDenied && pairs.size() == 0);
  } else {
    Check(framekit::net::IsNetworkNotFound(status) && pairs.size() == 0);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 4) {
    case 0:
      FuzzId(input);
      break;
    case 1:
      FuzzAddress(input);
      break;
    case 2:
      FuzzConfig(input);
      break;
    default:
      FuzzResolver(input);
      break;
  }
  return 0;
}
