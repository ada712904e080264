// Test support for the rpc suites: a node (app, resolvers, executor, server) whose functions
// report what they see of their frame, and raw TCP peers that never answer or answer garbage.
#ifndef FRAMEKIT_TESTS_RPC_RPC_SUPPORT_H_
#define FRAMEKIT_TESTS_RPC_RPC_SUPPORT_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"

namespace framekit::rpc_testing {

inline const Key<std::string> kTenant{"app.tenant"};
inline const Key<std::string> kRoute{"app.route"};
// Set by the receiving node's own resolver from the tenant it was sent.
inline const Key<std::string> kRegion{"app.region"};

// Time budgets of the suites are multiplied by this in the sanitizer builds, where gRPC's calls
// and TLS handshakes run several times slower (more so on a loaded machine). The plain build
// keeps the tight bounds.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
inline constexpr int kSlowdown = 5;
#else
inline constexpr int kSlowdown = 1;
#endif

// tenant, route and the caller: the keys the test nodes exchange.
inline std::shared_ptr<const PortableKeys> Portable() {
  auto portable = std::make_shared<PortableKeys>();
  (void)portable->Add(kTenant);
  (void)portable->Add(kRoute);
  (void)portable->Add(CallerKey());
  return portable;
}

// "key=value" of what a handler sees, for the checks.
inline std::string Describe(const Frame& frame) {
  auto value = [&](const Key<std::string>& key) {
    const std::string* v = frame.Find(key);
    return v == nullptr ? std::string("-") : *v;
  };
  auto origin = [&](const KeyBase& key) {
    switch (frame.Origin(key)) {
      case ValueOrigin::kAbsent:
        return "absent";
      case ValueOrigin::kSetHere:
        return "here";
      case ValueOrigin::kInherited:
        return "inherited";
    }
    return "?";
  };
  const CallerContext* caller = CallerOf(frame);
  long long remaining_ms = -1;
  if (std::optional<Deadline> d = frame.deadline()) {
    remaining_ms = std::chrono::duration_cast<std::chrono::milliseconds>(*d - Clock::now()).count();
  }
  return absl::StrCat(
      "caller=", caller == nullptr ? "-" : caller->user_id, " caller_origin=", origin(CallerKey()),
      " trace=", value(dispatch::TraceIdKey()), " span=", value(rpc::ParentSpanKey()),
      " tenant=", value(kTenant), " tenant_origin=", origin(kTenant), " route=", value(kRoute),
      " region=", value(kRegion), " remaining_ms=", remaining_ms);
}

// One node: its app with a resolver of its own, an executor with test functions, a server.
struct TestNode {
  explicit TestNode(rpc::ServerOptions options = {}) {
    resolvers = std::make_shared<FrameResolvers>();
    (void)resolvers->Register("app.region", 300, {},
                              [](const Frame& parent, const Options&, PairList& out) {
                                if (const std::string* tenant = parent.Find(kTenant)) {
                                  out.push_back(Pair::Of(kRegion, *tenant + "-eu"));
                                }
                                return absl::OkStatus();
                              });
    (void)app.SetFrameResolvers(resolvers);
    app.Seal();
    executor = std::make_unique<dispatch::FunctionExecutor>(app);
    (void)executor->Register("whoami",
                             [](const Frame& frame, std::string_view, dispatch::Sink& out) {
                               return out.Write(Describe(frame));
                             });
    (void)executor->Register("echo", [](const Frame&, std::string_view payload,
                                        dispatch::Sink& out) { return out.Write(payload); });
    (void)executor->Register("chunks", [](const Frame&, std::string_view, dispatch::Sink& out) {
      for (const char* chunk : {"one", "two", "three"}) {
        if (absl::Status s = out.Write(chunk); !s.ok()) return s;
      }
      return absl::OkStatus();
    });
    (void)executor->Register(
        "wait", [this](const Frame& frame, std::string_view, dispatch::Sink&) -> absl::Status {
          started.fetch_add(1);
          const auto until = Clock::now() + std::chrono::seconds(10);
          while (!frame.stop_token().stop_requested() && Clock::now() < until) {
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
          }
          if (frame.stop_token().stop_requested()) stopped.fetch_add(1);
          return absl::CancelledError("stopped");
        });
    (void)executor->Register("fail", [](const Frame&, std::string_view, dispatch::Sink&) {
      absl::Status status = absl::NotFoundError("no such order: 42");
      status.SetPayload("type.test/Detail", absl::Cord("detail bytes"));
      return status;
    });
    (void)executor->Register("throw",
                             [](const Frame&, std::string_view, dispatch::Sink&) -> absl::Status {
                               throw std::runtime_error("handler exploded");
                             });
    if (options.portable == nullptr) options.portable = Portable();
    absl::StatusOr<std::unique_ptr<rpc::Server>> started_server =
        rpc::Server::Start(*executor, std::move(options));
    start_status = started_server.status();
    if (started_server.ok()) server = *std::move(started_server);
  }
  ~TestNode() {
    if (server != nullptr) server->Shutdown(std::chrono::milliseconds(200));
  }
  std::string target() const { return absl::StrCat("127.0.0.1:", server->port()); }

  AppContext app;
  std::shared_ptr<FrameResolvers> resolvers;
  std::unique_ptr<dispatch::FunctionExecutor> executor;
  absl::Status start_status;
  std::unique_ptr<rpc::Server> server;
  std::atomic<int> started{0};
  std::atomic<int> stopped{0};
};

// Waits until `done()` is true, at most `limit`; false when the time ran out. The suites' waits
// for another thread's progress: a call that never arrives is a failure, not a hang.
template <class Fn>
bool WaitUntil(Fn done, std::chrono::milliseconds limit = std::chrono::seconds(30)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Collects everything written to it.
class StringSink : public dispatch::Sink {
 public:
  absl::Status Write(std::string_view chunk) override {
    std::lock_guard<std::mutex> lock(mu_);
    chunks_.emplace_back(chunk);
    return absl::OkStatus();
  }
  std::vector<std::string> chunks() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_;
  }
  std::string text() {
    std::string out;
    for (const std::string& c : chunks()) out += c;
    return out;
  }

 private:
  std::mutex mu_;
  std::vector<std::string> chunks_;
};

// Runs `function` on `node` through its Code, as a local function backed by it would.
inline absl::StatusOr<std::string> Call(rpc::RemoteNode& node, const std::string& function,
                                        const Frame& frame, std::string_view payload = "",
                                        rpc::CallMode mode = rpc::CallMode::kUnary) {
  StringSink sink;
  dispatch::RunStats stats;
  absl::Status status = node.Function(function, mode)->Run(frame, payload, sink, stats);
  if (!status.ok()) return status;
  return sink.text();
}

// A loopback TCP listener that accepts connections and then either says nothing or writes
// `reply` and keeps the connection open: a peer that never answers, or one that answers garbage.
class RawPeer {
 public:
  explicit RawPeer(std::string reply = "") : reply_(std::move(reply)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::listen(fd_, 16);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] {
      while (true) {
        const int conn = ::accept(fd_, nullptr, nullptr);
        if (conn < 0) return;  // the listener was shut down
        accepted_.fetch_add(1);
        if (!reply_.empty()) (void)!::write(conn, reply_.data(), reply_.size());
        std::lock_guard<std::mutex> lock(mu_);
        conns_.push_back(conn);
      }
    });
  }
  ~RawPeer() {
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
    for (int c : conns_) ::close(c);
  }
  std::string target() const { return absl::StrCat("127.0.0.1:", port_); }
  int accepted() const { return accepted_.load(); }

 private:
  std::string reply_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::atomic<int> accepted_{0};
  std::mutex mu_;
  std::vector<int> conns_;
};

}  // namespace framekit::rpc_testing

#endif  // FRAMEKIT_TESTS_RPC_RPC_SUPPORT_H_
