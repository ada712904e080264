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
  server->listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (server->listen_fd_ < 0) return Errno("socket");
  sockaddr_in addr = Ipv4("127.0.0.1", 0);
  socklen_t len = sizeof(addr);
  if (::bind(server->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Errno("bind");
  }
  if (::listen(server->listen_fd_, 128) != 0) return Errno("listen");
  if (::getsockname(server->listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Errno("getsockname");
  }
  server->port_ = ntohs(addr.sin_port);
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
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {stop_pipe_[0], POLLIN, 0}};
  while (true) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    sockaddr_in peer{};
    socklen_t len = sizeof(peer);
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC);
    if (fd < 0) continue;
    char ip[INET_ADDRSTRLEN] = {0};
    inet_ntop(AF_INET, &peer.sin_addr, ip, sizeof(ip));
    {
      std::lock_guard<std::mutex> lock(mu_);
      peers_.push_back(ip);
    }
    const std::string reply = std::string(ip) + "\n";
    (void)::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
    ::close(fd);
  }
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

}  // namespace framekit::net::loopback
