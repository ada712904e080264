#include "framekit/net/testing/loopback.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

extern char** environ;

namespace framekit::net::loopback {
namespace {

sockaddr_in Ipv4(const std::string& ip, std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  inet_pton(AF_INET, ip.c_str(), &addr.sin_addr);
  return addr;
}

absl::Status Errno(const char* call) {
  return absl::InternalError(absl::StrCat(call, ": ", std::strerror(errno)));
}

// Opens a listening socket on 127.0.0.1 at an ephemeral port.
absl::Status ListenOnLoopback(int& fd, std::uint16_t& port) {
  fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr = Ipv4("127.0.0.1", 0);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return Errno("bind");
  if (::listen(fd, 128) != 0) return Errno("listen");
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Errno("getsockname");
  }
  port = ntohs(addr.sin_port);
  return absl::OkStatus();
}

// Accepts connections on `listen_fd` and hands each to `handle`, which must not close it, until
// `stop_fd` becomes readable (its write end closed).
template <class Handle>
void AcceptUntilStopped(int listen_fd, int stop_fd, Handle handle) {
  pollfd fds[2] = {{listen_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
  while (true) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    const int fd = ::accept4(listen_fd, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (fd < 0) continue;
    handle(fd, peer);
    ::close(fd);
  }
}

// Reads exactly `n` bytes within 5 s; false on EOF, error or timeout.
bool ReadExactly(int fd, void* buffer, std::size_t n) {
  auto* out = static_cast<unsigned char*>(buffer);
  while (n > 0) {
    pollfd pfd{fd, POLLIN, 0};
    if (::poll(&pfd, 1, 5000) <= 0) return false;
    const ssize_t got = ::recv(fd, out, n, 0);
    if (got <= 0) return false;
    out += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

bool SendAll(int fd, const void* data, std::size_t n) {
  const auto* in = static_cast<const unsigned char*>(data);
  while (n > 0) {
    const ssize_t sent = ::send(fd, in, n, MSG_NOSIGNAL);
    if (sent <= 0) return false;
    in += sent;
    n -= static_cast<std::size_t>(sent);
  }
  return true;
}

// Copies bytes both ways between `a` and `b` until either side closes (or 10 s pass quietly).
void Relay(int a, int b) {
  pollfd fds[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
  char buffer[4096];
  while (::poll(fds, 2, 10000) > 0) {
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      const ssize_t n = ::recv(fds[i].fd, buffer, sizeof(buffer), 0);
      if (n <= 0 || !SendAll(fds[1 - i].fd, buffer, static_cast<std::size_t>(n))) return;
    }
  }
}

}  // namespace

absl::StatusOr<std::uint16_t> FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  sockaddr_in addr = Ipv4("127.0.0.1", 0);
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const absl::Status status = Errno("bind");
    ::close(fd);
    return status;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

absl::StatusOr<std::unique_ptr<PeerEchoServer>> PeerEchoServer::Start() {
  std::unique_ptr<PeerEchoServer> server(new PeerEchoServer());
  if (absl::Status s = ListenOnLoopback(server->listen_fd_, server->port_); !s.ok()) return s;
  if (::pipe2(server->stop_pipe_, O_CLOEXEC) != 0) return Errno("pipe2");
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

PeerEchoServer::~PeerEchoServer() {
  if (stop_pipe_[1] >= 0) ::close(stop_pipe_[1]);
  if (thread_.joinable()) thread_.join();
  if (stop_pipe_[0] >= 0) ::close(stop_pipe_[0]);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::vector<std::string> PeerEchoServer::peers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peers_;
}

void PeerEchoServer::Serve() {
  AcceptUntilStopped(listen_fd_, stop_pipe_[0], [this](int fd, const sockaddr_in& peer) {
    char ip[INET_ADDRSTRLEN] = {0};
    inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
    {
      std::lock_guard<std::mutex> lock(mu_);
      peers_.push_back(ip);
    }
    const std::string reply = std::string(ip) + "\n";
    (void)::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
  });
}

bool Socks5Proxy::Available(const std::string& binary) {
  return ::access(binary.c_str(), X_OK) == 0;
}

absl::StatusOr<std::unique_ptr<Socks5Proxy>> Socks5Proxy::Start(Options options) {
  if (!Available(options.binary)) {
    return absl::UnavailableError(
        absl::StrCat(options.binary, " is not installed (apt-get install microsocks)"));
  }
  std::unique_ptr<Socks5Proxy> proxy(new Socks5Proxy());
  absl::StatusOr<std::uint16_t> port = FreeLoopbackPort();
  if (!port.ok()) return port.status();
  proxy->port_ = *port;
  std::vector<std::string> args = {options.binary, "-i", options.listen_address, "-p",
                                   std::to_string(proxy->port_)};
  if (!options.bind_address.empty()) {
    args.insert(args.end(), {"-b", options.bind_address});
  }
  if (!options.username.empty()) {
    args.insert(args.end(), {"-u", options.username, "-P", options.password});
  }
  std::vector<char*> argv;
  for (std::string& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // microsocks logs every client to stderr; keep the caller's output readable.
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  const int err =
      posix_spawn(&proxy->pid_, options.binary.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (err != 0) {
    proxy->pid_ = -1;
    return absl::InternalError(
        absl::StrCat("posix_spawn ", options.binary, ": ", std::strerror(err)));
  }
  // Poll-connect until the proxy listens: bounded, failing early if the process died.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    int wstatus = 0;
    if (::waitpid(proxy->pid_, &wstatus, WNOHANG) == proxy->pid_) {
      proxy->pid_ = -1;
      return absl::InternalError(absl::StrCat(options.binary, " exited during start-up"));
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr = Ipv4(options.listen_address, proxy->port_);
    const bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    if (up) return proxy;
    ::poll(nullptr, 0, 5);  // back off between attempts
  }
  return absl::DeadlineExceededError(
      absl::StrCat(options.binary, " did not listen on port ", proxy->port_, " within 10 s"));
}

Socks5Proxy::~Socks5Proxy() { Stop(); }

void Socks5Proxy::Stop() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  int wstatus = 0;
  while (::waitpid(pid_, &wstatus, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
}

absl::StatusOr<std::unique_ptr<RecordingSocks5Server>> RecordingSocks5Server::Start(Script script) {
  std::unique_ptr<RecordingSocks5Server> server(new RecordingSocks5Server(std::move(script)));
  if (absl::Status s = ListenOnLoopback(server->listen_fd_, server->port_); !s.ok()) return s;
  if (::pipe2(server->stop_pipe_, O_CLOEXEC) != 0) return Errno("pipe2");
  server->thread_ = std::thread([s = server.get()] { s->Serve(); });
  return server;
}

RecordingSocks5Server::~RecordingSocks5Server() {
  if (stop_pipe_[1] >= 0) ::close(stop_pipe_[1]);
  if (thread_.joinable()) thread_.join();
  if (stop_pipe_[0] >= 0) ::close(stop_pipe_[0]);
  if (listen_fd_ >= 0) ::close(listen_fd_);
}

std::vector<RecordingSocks5Server::Handshake> RecordingSocks5Server::handshakes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return handshakes_;
}

void RecordingSocks5Server::Serve() {
  AcceptUntilStopped(listen_fd_, stop_pipe_[0], [this](int fd, const sockaddr_in&) { Handle(fd); });
}

namespace {

// Reads an RFC 1929 sub-negotiation; false when it is malformed.
bool ReadCredentials(int fd, std::string& username, std::string& password) {
  unsigned char header[2];
  if (!ReadExactly(fd, header, 2) || header[0] != 0x01) return false;
  username.resize(header[1]);
  unsigned char length = 0;
  if (!ReadExactly(fd, username.data(), username.size()) || !ReadExactly(fd, &length, 1)) {
    return false;
  }
  password.resize(length);
  return ReadExactly(fd, password.data(), password.size());
}

// Reads the CONNECT request after the version, command and reserved bytes.
bool ReadDestination(int fd, RecordingSocks5Server::Handshake& h) {
  unsigned char request[4];
  if (!ReadExactly(fd, request, 4) || request[0] != 0x05 || request[1] != 0x01) return false;
  h.address_type = request[3];
  if (h.address_type == 0x03) {
    unsigned char length = 0;
    if (!ReadExactly(fd, &length, 1)) return false;
    h.destination.resize(length);
    if (!ReadExactly(fd, h.destination.data(), length)) return false;
  } else {
    const int family = h.address_type == 0x01 ? AF_INET : AF_INET6;
    unsigned char address[16];
    const std::size_t size = family == AF_INET ? 4 : 16;
    if ((h.address_type != 0x01 && h.address_type != 0x04) || !ReadExactly(fd, address, size)) {
      return false;
    }
    char text[INET6_ADDRSTRLEN] = {0};
    inet_ntop(family, address, text, sizeof(text));
    h.destination = text;
  }
  unsigned char port[2];
  if (!ReadExactly(fd, port, 2)) return false;
  h.port = static_cast<std::uint16_t>(port[0] << 8 | port[1]);
  return true;
}

// Connects to ip:port from `source` (when not empty); -1 on failure.
int ConnectFrom(const std::string& source, const std::string& ip, std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in from = Ipv4(source, 0);
  sockaddr_in to = Ipv4(ip, port);
  if ((!source.empty() && ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0) ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

void RecordingSocks5Server::Handle(int fd) {
  Handshake h;
  // Records whatever arrived, however far the client got.
  auto record = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    handshakes_.push_back(h);
  };
  unsigned char greeting[2];
  if (!ReadExactly(fd, greeting, 2) || greeting[0] != 0x05) return record();
  h.methods.resize(greeting[1]);
  if (!ReadExactly(fd, h.methods.data(), h.methods.size())) return record();
  const bool offered =
      std::find(h.methods.begin(), h.methods.end(), script_.method) != h.methods.end();
  const unsigned char choice[2] = {0x05, offered ? script_.method : std::uint8_t{0xFF}};
  if (!offered) {
    // Recorded before the refusal goes out: the client returns as soon as it reads it.
    record();
    SendAll(fd, choice, 2);
    return;
  }
  if (!SendAll(fd, choice, 2)) return record();
  if (script_.method == 0x02) {
    if (!ReadCredentials(fd, h.username, h.password)) return record();
    const unsigned char accepted[2] = {0x01, 0x00};
    if (!SendAll(fd, accepted, 2)) return record();
  }
  if (!ReadDestination(fd, h)) return record();
  record();
  std::string ip = h.destination;
  std::uint8_t reply = script_.reply;
  if (h.address_type == 0x03) {
    const auto it = script_.hosts.find(h.destination);
    if (it == script_.hosts.end()) {
      if (reply == 0) reply = 0x04;  // host unreachable: this server knows no such name
    } else {
      ip = it->second;
    }
  }
  const int upstream = reply == 0 ? ConnectFrom(script_.egress_address, ip, h.port) : -1;
  if (reply == 0 && upstream < 0) reply = 0x05;
  // The bound address in the reply is not used by clients that only connect; send zeros.
  const unsigned char answer[10] = {0x05, reply, 0x00, 0x01, 0, 0, 0, 0, 0, 0};
  if (SendAll(fd, answer, sizeof(answer)) && upstream >= 0) Relay(fd, upstream);
  if (upstream >= 0) ::close(upstream);
}

}  // namespace framekit::net::loopback
