#include "framekit/net/dial.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/base/status_macros.h"
#include "framekit/net/internal/errors.h"
#include "framekit/net/internal/route_check.h"
#include "framekit/net/overlay.h"

namespace framekit::net {
namespace {

using net_internal::AsAbsl;

void InitCurlOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlDeleter {
  void operator()(CURL* curl) const { curl_easy_cleanup(curl); }
};

std::string HostForUrl(std::string_view host) {
  if (host.find(':') != std::string_view::npos) return absl::StrCat("[", AsAbsl(host), "]");
  return std::string(host);
}

// "network \"ID\": hop N (WHAT): why".
absl::Status HopError(absl::StatusCode code, const Network& network, int hop, std::string_view what,
                      std::string_view why) {
  return absl::Status(code, absl::StrCat("network \"", network.id, "\": hop ", hop, " (",
                                         AsAbsl(what), "): ", AsAbsl(why)));
}

// The SOCKS5 reply (RFC 1928 section 6) behind a libcurl proxy code, spelled out, with the
// reply number a proxy's own logs would show.
std::string SocksReplyText(long proxy_code) {
  switch (static_cast<CURLproxycode>(proxy_code)) {
    case CURLPX_REPLY_GENERAL_SERVER_FAILURE:
      return "general SOCKS server failure (SOCKS5 reply 1)";
    case CURLPX_REPLY_NOT_ALLOWED:
      return "connection not allowed by ruleset (SOCKS5 reply 2)";
    case CURLPX_REPLY_NETWORK_UNREACHABLE:
      return "network unreachable (SOCKS5 reply 3)";
    case CURLPX_REPLY_HOST_UNREACHABLE:
      return "host unreachable (SOCKS5 reply 4)";
    case CURLPX_REPLY_CONNECTION_REFUSED:
      return "connection refused (SOCKS5 reply 5)";
    case CURLPX_REPLY_TTL_EXPIRED:
      return "TTL expired (SOCKS5 reply 6)";
    case CURLPX_REPLY_COMMAND_NOT_SUPPORTED:
      return "command not supported (SOCKS5 reply 7)";
    case CURLPX_REPLY_ADDRESS_TYPE_NOT_SUPPORTED:
      return "address type not supported (SOCKS5 reply 8)";
    case CURLPX_REPLY_UNASSIGNED:
      return "an unassigned SOCKS5 reply code (above 8)";
    default:
      return "the proxy's reply could not be read";
  }
}

absl::Status MapCurlError(CURL* curl, CURLcode code, const char* detail, const Network& network,
                          std::string_view host, std::uint16_t port,
                          std::chrono::milliseconds timeout) {
  const bool socks = network.kind == Network::Kind::kSocks5;
  const std::string proxy =
      absl::StrCat("SOCKS5 proxy ", HostForUrl(network.proxy_host), ":", network.proxy_port);
  const std::string destination =
      absl::StrCat("destination ", HostForUrl(host), ":", port, socks ? " via the proxy" : "");
  const std::string why = detail[0] != '\0' ? std::string(detail) : curl_easy_strerror(code);
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT:
      return HopError(absl::StatusCode::kDeadlineExceeded, network, 1, socks ? proxy : destination,
                      absl::StrCat("timed out after ", timeout.count(), " ms: ", why));
    case CURLE_COULDNT_RESOLVE_PROXY:
      return HopError(absl::StatusCode::kUnavailable, network, 1, proxy,
                      absl::StrCat("cannot resolve the proxy host: ", why));
    case CURLE_COULDNT_RESOLVE_HOST:
      return HopError(absl::StatusCode::kUnavailable, network, 1, destination,
                      absl::StrCat("cannot resolve the host: ", why));
    case CURLE_INTERFACE_FAILED:
      return HopError(absl::StatusCode::kUnavailable, network, 1, destination,
                      absl::StrCat("cannot bind source address ", network.bind_address, ": ", why));
    case CURLE_COULDNT_CONNECT:
      return HopError(absl::StatusCode::kUnavailable, network, 1, socks ? proxy : destination,
                      absl::StrCat("connection refused or unreachable: ", why));
    case CURLE_PROXY: {
      long px = CURLPX_OK;
      curl_easy_getinfo(curl, CURLINFO_PROXY_ERROR, &px);
      switch (static_cast<CURLproxycode>(px)) {
        case CURLPX_USER_REJECTED:
        case CURLPX_NO_AUTH:
        case CURLPX_SEND_AUTH:
        case CURLPX_RECV_AUTH:
        case CURLPX_LONG_USER:
        case CURLPX_LONG_PASSWD:
          return HopError(absl::StatusCode::kPermissionDenied, network, 1, proxy,
                          absl::StrCat("authentication failed: ", why));
        case CURLPX_REPLY_NOT_ALLOWED:
          return HopError(absl::StatusCode::kPermissionDenied, network, 2, destination,
                          absl::StrCat("refused by the proxy: ", SocksReplyText(px)));
        case CURLPX_REPLY_CONNECTION_REFUSED:
        case CURLPX_REPLY_HOST_UNREACHABLE:
        case CURLPX_REPLY_NETWORK_UNREACHABLE:
        case CURLPX_REPLY_TTL_EXPIRED:
        case CURLPX_REPLY_GENERAL_SERVER_FAILURE:
        case CURLPX_REPLY_COMMAND_NOT_SUPPORTED:
        case CURLPX_REPLY_ADDRESS_TYPE_NOT_SUPPORTED:
        case CURLPX_REPLY_UNASSIGNED:
        case CURLPX_REQUEST_FAILED:
          return HopError(absl::StatusCode::kUnavailable, network, 2, destination,
                          absl::StrCat("the proxy could not connect: ", SocksReplyText(px)));
        default:
          return HopError(absl::StatusCode::kUnavailable, network, 1, proxy,
                          absl::StrCat("SOCKS5 handshake failed: ", why));
      }
    }
    default:
      return HopError(absl::StatusCode::kUnavailable, network, 1, socks ? proxy : destination, why);
  }
}

// The strings libcurl keeps pointers to while it connects.
struct RouteOptions {
  std::string proxy;
  std::string interface;
};

// Sets every libcurl option that decides where a dial goes, explicitly, so that neither the
// process environment nor a libcurl default can change the route:
//  - CURLOPT_PROXY is always set (to the network's proxy, or to "" for a direct network): libcurl
//    then ignores ALL_PROXY, all_proxy, http_proxy, HTTPS_PROXY and the like;
//  - CURLOPT_NOPROXY is set to "": libcurl then ignores NO_PROXY/no_proxy, which would
//    otherwise connect straight to a matching destination, resolving its name locally;
//  - CURLOPT_SOCKS5_AUTH offers only the configured method: username/password when the network
//    has credentials, otherwise no authentication. libcurl's default also offers GSS-API, which
//    would hand a proxy that picks it the host's Kerberos credentials. (libcurl always lists
//    "no authentication" as well; a proxy that picks it is sent no credentials at all);
//  - no .netrc, no DNS-over-HTTPS, no redirection: none is set, and CURLOPT_NETRC is pinned off.
void PinRoute(CURL* c, const Network& network, RouteOptions& route) {
  curl_easy_setopt(c, CURLOPT_NOPROXY, "");
  curl_easy_setopt(c, CURLOPT_NETRC, static_cast<long>(CURL_NETRC_IGNORED));
  if (network.kind == Network::Kind::kSocks5) {
    // socks5h: the proxy resolves the destination name; nothing is looked up locally.
    route.proxy =
        absl::StrCat("socks5h://", HostForUrl(network.proxy_host), ":", network.proxy_port);
    curl_easy_setopt(c, CURLOPT_PROXY, route.proxy.c_str());
    curl_easy_setopt(c, CURLOPT_PROXYTYPE, static_cast<long>(CURLPROXY_SOCKS5_HOSTNAME));
    if (network.username.empty()) {
      curl_easy_setopt(c, CURLOPT_SOCKS5_AUTH, static_cast<unsigned long>(CURLAUTH_NONE));
    } else {
      curl_easy_setopt(c, CURLOPT_SOCKS5_AUTH, static_cast<unsigned long>(CURLAUTH_BASIC));
      curl_easy_setopt(c, CURLOPT_PROXYUSERNAME, network.username.c_str());
      curl_easy_setopt(c, CURLOPT_PROXYPASSWORD, network.password.c_str());
    }
    return;
  }
  curl_easy_setopt(c, CURLOPT_PROXY, "");
  if (!network.bind_address.empty()) {
    route.interface = absl::StrCat("host!", network.bind_address);
    curl_easy_setopt(c, CURLOPT_INTERFACE, route.interface.c_str());
  }
}

// The clearnet route: direct, unbound.
const Network& ClearnetNetwork() {
  static const Network* network = new Network(Network::Direct(std::string(kClearnet)));
  return *network;
}

}  // namespace

Connection::Connection(Connection&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

Connection& Connection::operator=(Connection&& other) noexcept {
  if (this != &other) {
    Close();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

Connection::~Connection() { Close(); }

int Connection::Release() { return std::exchange(fd_, -1); }

void Connection::Close() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

absl::Status Connection::Write(std::string_view data) {
  if (fd_ < 0) return absl::FailedPreconditionError("connection is closed");
  while (!data.empty()) {
    const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Connection::Read(std::size_t max_bytes,
                                             std::chrono::milliseconds timeout) {
  if (fd_ < 0) return absl::FailedPreconditionError("connection is closed");
  pollfd pfd{fd_, POLLIN, 0};
  int ready;
  do {
    ready = ::poll(&pfd, 1, static_cast<int>(std::max<std::int64_t>(0, timeout.count())));
  } while (ready < 0 && errno == EINTR);
  if (ready < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
  if (ready == 0) {
    return absl::DeadlineExceededError(
        absl::StrCat("nothing received within ", timeout.count(), " ms"));
  }
  std::string out(max_bytes, '\0');
  ssize_t n;
  do {
    n = ::recv(fd_, out.data(), out.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

absl::StatusOr<Connection> DialNetwork(const Network& network, std::string_view host,
                                       std::uint16_t port, std::chrono::milliseconds timeout) {
  if (!IsValidHost(host)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "network \"", network.id, "\": malformed destination host \"", AsAbsl(host), "\""));
  }
  if (port == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("network \"", network.id, "\": destination port 0"));
  }
  if (timeout.count() <= 0) {
    return absl::DeadlineExceededError(
        absl::StrCat("network \"", network.id, "\": no time left to connect"));
  }
  InitCurlOnce();
  std::unique_ptr<CURL, CurlDeleter> curl(curl_easy_init());
  if (curl == nullptr) return absl::ResourceExhaustedError("curl_easy_init failed");
  CURL* c = curl.get();
  char detail[CURL_ERROR_SIZE] = {0};
  const std::string url = absl::StrCat("http://", HostForUrl(host), ":", port, "/");
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, detail);
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(timeout.count()));
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(timeout.count()));
  RouteOptions route;
  PinRoute(c, network, route);
  const CURLcode code = curl_easy_perform(c);
  if (code != CURLE_OK) return MapCurlError(c, code, detail, network, host, port, timeout);
  curl_socket_t socket = CURL_SOCKET_BAD;
  if (curl_easy_getinfo(c, CURLINFO_ACTIVESOCKET, &socket) != CURLE_OK ||
      socket == CURL_SOCKET_BAD) {
    return absl::InternalError(
        absl::StrCat("network \"", network.id, "\": connected, but no socket to take over"));
  }
  // The easy handle closes its socket on cleanup; keep a duplicate.
  Connection connection(::fcntl(socket, F_DUPFD_CLOEXEC, 0));
  if (!connection.is_open()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("network \"", network.id, "\": dup: ", std::strerror(errno)));
  }
  FRAMEKIT_RETURN_IF_ERROR(net_internal::VerifyRoute(connection.fd(), network));
  return connection;
}

absl::StatusOr<Connection> Dial(const Frame& frame, const NetworkRegistry& networks,
                                std::string_view host, std::uint16_t port,
                                std::chrono::milliseconds timeout) {
  if (const std::optional<Deadline> deadline = frame.deadline()) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - Clock::now());
    timeout = std::min(timeout, left);
  }
  const std::string* selected = frame.Find(NetworkKey());
  if (selected == nullptr || *selected == kClearnet) {
    if (!networks.clearnet_allowed()) {
      return absl::FailedPreconditionError(absl::StrCat(
          selected == nullptr ? "no network selected for this call" : "network \"clearnet\"",
          ": hop 1 (destination ", HostForUrl(host), ":", port,
          "): the clearnet policy denies direct connections"));
    }
    return DialNetwork(ClearnetNetwork(), host, port, timeout);
  }
  const Network* network = networks.Find(*selected);
  if (network == nullptr) {
    return net_internal::NetworkNotFoundError(*selected, "selected by the call's frame");
  }
  return DialNetwork(*network, host, port, timeout);
}

}  // namespace framekit::net
