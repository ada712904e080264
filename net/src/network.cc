#include "framekit/net/network.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstddef>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"
#include "framekit/base/status_macros.h"
#include "framekit/net/internal/errors.h"

namespace framekit::net {
namespace {

using net_internal::AsAbsl;

constexpr std::size_t kMaxCredentialLength = 255;  // RFC 1929

bool IsIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\r'; }

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> Tokens(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && IsSpace(s[i])) ++i;
    const std::size_t start = i;
    while (i < s.size() && !IsSpace(s[i])) ++i;
    if (i > start) out.push_back(s.substr(start, i - start));
  }
  return out;
}

absl::Status ValidateCredential(std::string_view what, std::string_view value,
                                std::string_view id) {
  if (value.size() > kMaxCredentialLength || value.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("network \"", AsAbsl(id), "\": ", AsAbsl(what),
                                                   " must be at most 255 bytes without NUL"));
  }
  return absl::OkStatus();
}

absl::Status ValidateNetwork(const Network& n) {
  if (!IsValidNetworkId(n.id)) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid network id \"", n.id,
                     "\": use 1 to 64 of [a-z0-9._-], and not the reserved \"clearnet\""));
  }
  switch (n.kind) {
    case Network::Kind::kDirect:
      if (!n.proxy_host.empty() || n.proxy_port != 0 || !n.username.empty() ||
          !n.password.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("network \"", n.id, "\": a direct network has no proxy settings"));
      }
      if (!n.bind_address.empty() && !IsValidIpAddress(n.bind_address)) {
        return absl::InvalidArgumentError(absl::StrCat("network \"", n.id, "\": bind address \"",
                                                       n.bind_address,
                                                       "\" is not a numeric IP address"));
      }
      return absl::OkStatus();
    case Network::Kind::kSocks5:
      if (!n.bind_address.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("network \"", n.id, "\": a SOCKS5 network has no bind address"));
      }
      if (!IsValidHost(n.proxy_host)) {
        return absl::InvalidArgumentError(
            absl::StrCat("network \"", n.id, "\": proxy host \"", n.proxy_host, "\" is malformed"));
      }
      if (n.proxy_port == 0) {
        return absl::InvalidArgumentError(absl::StrCat("network \"", n.id, "\": proxy port 0"));
      }
      if (n.username.empty() && !n.password.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("network \"", n.id, "\": a password without a username"));
      }
      FRAMEKIT_RETURN_IF_ERROR(ValidateCredential("username", n.username, n.id));
      FRAMEKIT_RETURN_IF_ERROR(ValidateCredential("password", n.password, n.id));
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError("network of unknown kind");
}

std::optional<std::uint16_t> ParsePort(std::string_view s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  unsigned value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || ptr != s.data() + s.size() || value == 0 || value > 65535) {
    return std::nullopt;
  }
  return static_cast<std::uint16_t>(value);
}

std::string LineError(std::size_t line, std::string_view key, std::string_view message) {
  return absl::StrCat("line ", line, ": key \"", AsAbsl(key), "\": ", AsAbsl(message));
}

}  // namespace

bool IsValidNetworkId(std::string_view id) {
  if (id.empty() || id.size() > kMaxNetworkIdLength || id == kClearnet) return false;
  for (char c : id) {
    if (!IsIdChar(c)) return false;
  }
  return true;
}

bool IsValidIpAddress(std::string_view address) {
  char buf[INET6_ADDRSTRLEN + 1];
  // inet_pton reads a C string: an embedded NUL would hide the rest of the input.
  if (address.empty() || address.size() >= sizeof(buf) ||
      address.find('\0') != std::string_view::npos) {
    return false;
  }
  address.copy(buf, address.size());
  buf[address.size()] = '\0';
  unsigned char out[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, buf, out) == 1 || inet_pton(AF_INET6, buf, out) == 1;
}

bool IsValidHost(std::string_view host) {
  if (IsValidIpAddress(host)) return true;
  if (host.empty() || host.size() > 253) return false;
  std::size_t label = 0;
  for (char c : host) {
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
    if (!ok || ++label > 63) return false;
  }
  return label > 0;
}

Network Network::Direct(std::string id) {
  Network n;
  n.id = std::move(id);
  n.kind = Kind::kDirect;
  return n;
}

Network Network::Direct(std::string id, std::string bind_address) {
  return Direct(std::move(id)).WithBindAddress(std::move(bind_address));
}

Network Network::Socks5(std::string id, std::string host, std::uint16_t port) {
  Network n;
  n.id = std::move(id);
  n.kind = Kind::kSocks5;
  n.proxy_host = std::move(host);
  n.proxy_port = port;
  return n;
}

Network Network::Socks5(std::string id, std::string host, std::uint16_t port, std::string username,
                        std::string password) {
  return Socks5(std::move(id), std::move(host), port)
      .WithCredentials(std::move(username), std::move(password));
}

Network& Network::WithBindAddress(std::string address) & {
  bind_address = std::move(address);
  return *this;
}
Network&& Network::WithBindAddress(std::string address) && {
  bind_address = std::move(address);
  return std::move(*this);
}
Network& Network::WithCredentials(std::string user, std::string pass) & {
  username = std::move(user);
  password = std::move(pass);
  return *this;
}
Network&& Network::WithCredentials(std::string user, std::string pass) && {
  username = std::move(user);
  password = std::move(pass);
  return std::move(*this);
}

std::string_view Network::kind_name() const { return kind == Kind::kSocks5 ? "socks5" : "direct"; }

absl::Status NetworkRegistry::Add(Network network) {
  FRAMEKIT_RETURN_IF_ERROR(ValidateNetwork(network));
  if (networks_.contains(network.id)) {
    return absl::AlreadyExistsError(
        absl::StrCat("network \"", network.id, "\" is registered already"));
  }
  ids_.push_back(network.id);
  std::string id = network.id;
  networks_.emplace(std::move(id), std::move(network));
  return absl::OkStatus();
}

const Network* NetworkRegistry::Find(std::string_view id) const {
  const auto it = networks_.find(AsAbsl(id));
  return it == networks_.end() ? nullptr : &it->second;
}

namespace {

// ParseNetworkConfig, one named step per function. Every error is InvalidArgument naming the
// line and the key (see LineError).

absl::Status LineFailure(std::size_t line, std::string_view key, std::string_view message) {
  return absl::InvalidArgumentError(LineError(line, key, message));
}

// Takes the next line off `text`, without its comment and surrounding blanks.
std::string_view TakeLine(std::string_view& text) {
  const std::size_t eol = text.find('\n');
  std::string_view line = text.substr(0, eol);
  text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
  if (const std::size_t hash = line.find('#'); hash != std::string_view::npos) {
    line = line.substr(0, hash);
  }
  return Trim(line);
}

// The socks5 proxy `HOST:PORT` or `[IPV6]:PORT` into `network`.
absl::Status ParseProxy(std::size_t line, std::string_view hostport, Network& network) {
  std::string_view host;
  std::string_view port;
  if (!hostport.empty() && hostport.front() == '[') {
    const std::size_t close = hostport.find(']');
    if (close == std::string_view::npos || close + 1 >= hostport.size() ||
        hostport[close + 1] != ':') {
      return LineFailure(
          line, "network",
          absl::StrCat("malformed proxy \"", AsAbsl(hostport), "\": expected [IPV6]:PORT"));
    }
    host = hostport.substr(1, close - 1);
    port = hostport.substr(close + 2);
  } else {
    const std::size_t colon = hostport.rfind(':');
    if (colon == std::string_view::npos) {
      return LineFailure(
          line, "network",
          absl::StrCat("malformed proxy \"", AsAbsl(hostport), "\": expected HOST:PORT"));
    }
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  const std::optional<std::uint16_t> parsed_port = ParsePort(port);
  if (!parsed_port) {
    return LineFailure(line, "network",
                       absl::StrCat("proxy port \"", AsAbsl(port), "\" is not in 1..65535"));
  }
  network.proxy_host = std::string(host);
  network.proxy_port = *parsed_port;
  return absl::OkStatus();
}

// `network ID KIND [PROXY]`: the id, the kind and a socks5 proxy into `network`. Returns the
// index of the first KEY=VALUE option token.
absl::StatusOr<std::size_t> ParseNetworkHead(std::size_t line,
                                             const std::vector<std::string_view>& tokens,
                                             Network& network) {
  if (tokens.size() < 3) {
    return LineFailure(line, "network", "expected `network ID direct|socks5 ...`");
  }
  network.id = std::string(tokens[1]);
  if (tokens[2] == "direct") {
    network.kind = Network::Kind::kDirect;
    return 3;
  }
  if (tokens[2] != "socks5") {
    return LineFailure(
        line, "network",
        absl::StrCat("unknown kind \"", AsAbsl(tokens[2]), "\": expected direct or socks5"));
  }
  network.kind = Network::Kind::kSocks5;
  if (tokens.size() < 4) {
    return LineFailure(line, "network", "socks5 needs the proxy as HOST:PORT");
  }
  FRAMEKIT_RETURN_IF_ERROR(ParseProxy(line, tokens[3], network));
  return 4;
}

// The KEY=VALUE options of a network line (bind for direct; user, password for socks5).
absl::Status ParseNetworkOptions(std::size_t line, const std::vector<std::string_view>& tokens,
                                 std::size_t first, Network& network) {
  for (std::size_t i = first; i < tokens.size(); ++i) {
    const std::size_t eq = tokens[i].find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return LineFailure(line, "network",
                         absl::StrCat("expected KEY=VALUE, got \"", AsAbsl(tokens[i]), "\""));
    }
    const std::string_view key = tokens[i].substr(0, eq);
    const std::string value(tokens[i].substr(eq + 1));
    std::string* field = nullptr;
    if (network.kind == Network::Kind::kDirect && key == "bind") {
      field = &network.bind_address;
    } else if (network.kind == Network::Kind::kSocks5 && key == "user") {
      field = &network.username;
    } else if (network.kind == Network::Kind::kSocks5 && key == "password") {
      field = &network.password;
    } else {
      return LineFailure(
          line, key, absl::StrCat("not an option of a ", AsAbsl(network.kind_name()), " network"));
    }
    if (!field->empty() || value.empty()) {
      return LineFailure(line, key, value.empty() ? "empty value" : "given twice");
    }
    *field = value;
  }
  return absl::OkStatus();
}

// A whole `network ...` line: parsed, validated as Add() would, and appended to `config`.
absl::Status ParseNetworkLine(std::size_t line, const std::vector<std::string_view>& tokens,
                              NetworkConfig& config) {
  Network network;
  FRAMEKIT_ASSIGN_OR_RETURN(const std::size_t first, ParseNetworkHead(line, tokens, network));
  FRAMEKIT_RETURN_IF_ERROR(ParseNetworkOptions(line, tokens, first, network));
  if (absl::Status valid = ValidateNetwork(network); !valid.ok()) {
    return LineFailure(line, "network", base_internal::AsStd(valid.message()));
  }
  for (const Network& existing : config.networks) {
    if (existing.id == network.id) {
      return LineFailure(line, "network",
                         absl::StrCat("network \"", network.id, "\" is defined twice"));
    }
  }
  config.networks.push_back(std::move(network));
  return absl::OkStatus();
}

// Which of the single settings have been given already.
struct SeenSettings {
  bool default_network = false;
  bool clearnet = false;
};

// A `default = ID` or `clearnet = allow|deny` line into `config`.
absl::Status ParseSettingLine(std::size_t line, std::string_view text, SeenSettings& seen,
                              NetworkConfig& config) {
  const std::size_t eq = text.find('=');
  const std::string_view key = Trim(text.substr(0, eq));
  if (key != "default" && key != "clearnet") {
    return LineFailure(line, key, "unknown key: expected default, clearnet or network");
  }
  if (eq == std::string_view::npos) return LineFailure(line, key, "expected KEY = VALUE");
  const std::string_view value = Trim(text.substr(eq + 1));
  if (key == "default") {
    if (seen.default_network) return LineFailure(line, key, "given twice");
    seen.default_network = true;
    if (!IsValidNetworkId(value)) {
      return LineFailure(line, key,
                         absl::StrCat("\"", AsAbsl(value), "\" is not a valid network id"));
    }
    config.app_default = std::string(value);
    return absl::OkStatus();
  }
  if (seen.clearnet) return LineFailure(line, key, "given twice");
  seen.clearnet = true;
  if (value == "allow") {
    config.clearnet = ClearnetPolicy::kAllow;
  } else if (value == "deny") {
    config.clearnet = ClearnetPolicy::kDeny;
  } else {
    return LineFailure(line, key,
                       absl::StrCat("expected allow or deny, got \"", AsAbsl(value), "\""));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<NetworkConfig> ParseNetworkConfig(std::string_view text) {
  NetworkConfig config;
  SeenSettings seen;
  std::size_t line_number = 0;
  while (!text.empty() || line_number == 0) {
    ++line_number;
    const std::string_view line = TakeLine(text);
    if (line.empty()) continue;
    const std::vector<std::string_view> tokens = Tokens(line);
    if (tokens[0] == "network") {
      FRAMEKIT_RETURN_IF_ERROR(ParseNetworkLine(line_number, tokens, config));
    } else {
      FRAMEKIT_RETURN_IF_ERROR(ParseSettingLine(line_number, line, seen, config));
    }
  }
  return config;
}

std::string FormatNetworkConfig(const NetworkConfig& config) {
  std::string out;
  if (!config.app_default.empty()) absl::StrAppend(&out, "default = ", config.app_default, "\n");
  absl::StrAppend(&out, "clearnet = ", config.clearnet == ClearnetPolicy::kAllow ? "allow" : "deny",
                  "\n");
  for (const Network& n : config.networks) {
    absl::StrAppend(&out, "network ", n.id, " ", AsAbsl(n.kind_name()));
    if (n.kind == Network::Kind::kSocks5) {
      const bool v6 = n.proxy_host.find(':') != std::string::npos;
      absl::StrAppend(&out, " ", v6 ? "[" : "", n.proxy_host, v6 ? "]" : "", ":", n.proxy_port);
      if (!n.username.empty()) absl::StrAppend(&out, " user=", n.username);
      if (!n.password.empty()) absl::StrAppend(&out, " password=", n.password);
    } else if (!n.bind_address.empty()) {
      absl::StrAppend(&out, " bind=", n.bind_address);
    }
    out.push_back('\n');
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const NetworkRegistry>> BuildNetworkRegistry(
    const NetworkConfig& config) {
  auto registry = std::make_shared<NetworkRegistry>(config.clearnet);
  for (const Network& network : config.networks) {
    FRAMEKIT_RETURN_IF_ERROR(registry->Add(network));
  }
  if (!config.app_default.empty() && !registry->Contains(config.app_default)) {
    return net_internal::NetworkNotFoundError(config.app_default, "the app default");
  }
  return std::shared_ptr<const NetworkRegistry>(std::move(registry));
}

}  // namespace framekit::net
