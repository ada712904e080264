// A call between two real processes: this test and a node it starts (rpc_node.cc).
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include "framekit/ctx/caller.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/rpc/remote.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/rpc_support.h"
#include "support/status_matchers.h"

extern char** environ;

namespace framekit::rpc {
namespace {

using ::framekit::testing::IsOk;
using ::testing::HasSubstr;

// The node process: its stdin is our pipe (closing it ends the node), its stdout gives the port.
class NodeProcess {
 public:
  NodeProcess() {
    int in[2];
    int out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_addclose(&actions, in[1]);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    char* argv[] = {const_cast<char*>(FRAMEKIT_RPC_NODE_PATH), nullptr};
    if (posix_spawn(&pid_, FRAMEKIT_RPC_NODE_PATH, &actions, nullptr, argv, environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    std::string line;
    char c;
    while (::read(out[0], &c, 1) == 1 && c != '\n') line.push_back(c);
    ::close(out[0]);
    if (!line.empty()) port_ = std::stoi(line);
  }
  ~NodeProcess() {
    if (stdin_ >= 0) ::close(stdin_);
    if (pid_ > 0) {
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  int port() const { return port_; }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int port_ = 0;
};

// Long enough for a sanitizer build's node to start answering.
constexpr std::chrono::milliseconds kTimeout{10000};

TEST(RpcProcess, FrameCrossesToAnotherProcess) {
  NodeProcess b;
  ASSERT_GT(b.port(), 0);
  absl::StatusOr<std::shared_ptr<RemoteNode>> to_b =
      RemoteNode::Connect({.target = "127.0.0.1:" + std::to_string(b.port()),
                           .portable = rpc_testing::Portable(),
                           .peer_token = "node-a-token"});
  ASSERT_THAT(to_b, IsOk());
  Frame frame =
      WithCaller(Frame(), {.user_id = "alice"})
          .With({Pair::Of(rpc_testing::kTenant, std::string("acme")),
                 Pair::Of(dispatch::TraceIdKey(), std::string("4bf92f3577b34da6a3ce929d0e0e4736"))})
          .WithTimeout(kTimeout);
  rpc_testing::StringSink sink;
  dispatch::RunStats stats;
  ASSERT_THAT((*to_b)->Function("whoami")->Run(frame, "", sink, stats), IsOk());
  const std::string seen = sink.text();
  EXPECT_THAT(seen, HasSubstr("caller=alice caller_origin=inherited"));
  EXPECT_THAT(seen, HasSubstr("trace=4bf92f3577b34da6a3ce929d0e0e4736"));
  EXPECT_THAT(seen, HasSubstr("tenant=acme tenant_origin=inherited route=- region=acme-eu"));
  const int remaining = std::stoi(seen.substr(seen.find("remaining_ms=") + 13));
  EXPECT_GT(remaining, 0) << seen;
  EXPECT_LE(remaining, kTimeout.count()) << seen;
}

}  // namespace
}  // namespace framekit::rpc
