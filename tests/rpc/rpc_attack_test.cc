// Hostile and careless uses of rpc/: options at their edges, deadlines already past or
// infinite, odd names, payloads and tokens, peers claiming what they may not, and servers and
// nodes destroyed or cycled while in use.
#include <dirent.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/caller.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "rpc/rpc_support.h"
#include "support/status_matchers.h"

namespace framekit::rpc {
namespace {

using ::framekit::rpc_testing::Call;
using ::framekit::rpc_testing::Portable;
using ::framekit::rpc_testing::StringSink;
using ::framekit::rpc_testing::TestNode;
using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

constexpr char kToken[] = "attack-token";

std::shared_ptr<RemoteNode> MustConnect(RemoteOptions options) {
  if (options.portable == nullptr) options.portable = Portable();
  options.connect_timeout =
      std::max<std::chrono::milliseconds>(options.connect_timeout, 2s * rpc_testing::kSlowdown);
  absl::StatusOr<std::shared_ptr<RemoteNode>> node = RemoteNode::Connect(std::move(options));
  EXPECT_THAT(node, IsOk());
  return node.ok() ? *node : nullptr;
}

int OpenFds() {
  int n = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (dirent* entry = readdir(dir)) n += entry->d_name[0] != '.' ? 1 : 0;
  closedir(dir);
  return n;
}

TEST(RpcAttack, NonsenseOptionsAreRefused) {
  TestNode node;
  ASSERT_THAT(node.start_status, IsOk());
  for (ServerOptions bad :
       {ServerOptions{.default_timeout = 0ms}, ServerOptions{.default_timeout = -1ms},
        ServerOptions{.max_concurrent_calls = 0}, ServerOptions{.max_concurrent_calls = -3},
        ServerOptions{.max_message_bytes = 0}, ServerOptions{.max_message_bytes = -1}}) {
    EXPECT_THAT(Server::Start(*node.executor, bad).status(),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  for (RemoteOptions bad : {RemoteOptions{.target = "x", .default_timeout = 0ms},
                            RemoteOptions{.target = "x", .default_timeout = -1ms},
                            RemoteOptions{.target = "x", .connect_timeout = 0ms},
                            RemoteOptions{.target = "x", .connect_timeout = -1ms},
                            RemoteOptions{.target = "x", .max_frame_header_bytes = 0},
                            RemoteOptions{.target = "x", .max_message_bytes = 0},
                            RemoteOptions{.target = "x", .max_message_bytes = -1}}) {
    EXPECT_THAT(RemoteNode::Connect(bad).status(), StatusIs(absl::StatusCode::kInvalidArgument));
  }
}

// Tests that the largest timeouts do not overflow into a deadline that has passed.
TEST(RpcAttack, HugeDefaultTimeoutsDoNotOverflow) {
  TestNode node({.default_timeout = std::chrono::milliseconds::max()});
  ASSERT_THAT(node.start_status, IsOk());
  std::shared_ptr<RemoteNode> remote =
      MustConnect({.target = node.target(),
                   .default_timeout = std::chrono::milliseconds::max(),
                   .connect_timeout = std::chrono::milliseconds::max()});
  ASSERT_NE(remote, nullptr);
  EXPECT_THAT(Call(*remote, "echo", Frame(), "x"), IsOk());
  EXPECT_THAT(Call(*remote, "echo", Frame().WithDeadline(Deadline::max()), "x"), IsOk());
  absl::StatusOr<std::string> seen = Call(*remote, "whoami", Frame());
  ASSERT_THAT(seen, IsOk());
  EXPECT_THAT(*seen, Not(HasSubstr("remaining_ms=-")));
}

TEST(RpcAttack, PastDeadlineAndCancelledParentEndAtOnce) {
  TestNode node;
  ASSERT_THAT(node.start_status, IsOk());
  std::shared_ptr<RemoteNode> remote = MustConnect({.target = node.target()});
  const auto start = Clock::now();
  EXPECT_THAT(Call(*remote, "echo", Frame().WithTimeout(-1s), "x"),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  auto [frame, canceller] = Frame().WithCancel();
  canceller.Cancel();
  EXPECT_THAT(Call(*remote, "wait", frame, "x"), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_EQ(node.started.load(), 0);
}

TEST(RpcAttack, OddFunctionNamesAndPayloads) {
  TestNode node;
  ASSERT_THAT(node.start_status, IsOk());
  std::shared_ptr<RemoteNode> remote = MustConnect({.target = node.target()});
  Frame frame = Frame().WithTimeout(5s * rpc_testing::kSlowdown);
  for (const std::string& name :
       {std::string(), std::string(1 << 20, 'f'), std::string("\xff\xfe\0x", 4)}) {
    // Refused before it leaves: a non-UTF-8 name used to reach the server as an unparsable
    // request (Unimplemented).
    EXPECT_THAT(Call(*remote, name, frame, "x"), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  const std::string binary("\0\xff\xfe\x80", 4);
  EXPECT_THAT(Call(*remote, "echo", frame, binary), IsOk());
  EXPECT_EQ(*Call(*remote, "echo", frame, binary), binary);
  EXPECT_EQ(Call(*remote, "echo", frame, std::string(1 << 20, 'p'))->size(), 1u << 20);
  EXPECT_THAT(Call(*remote, "echo", frame, std::string(5 << 20, 'p')),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // The node still serves.
  EXPECT_THAT(Call(*remote, "echo", frame, "after"), IsOk());
}

// Tests that tokens gRPC cannot carry as header values are refused with a status, not a crash
// or an abort in gRPC.
TEST(RpcAttack, TokensThatCannotBeHeadersFailCleanly) {
  ServerOptions options;
  options.trusted.push_back(
      {.token = kToken, .policy = {.name = "a", .accepted_keys = {}, .identity = true}});
  TestNode node(options);
  ASSERT_THAT(node.start_status, IsOk());
  for (const std::string& token : {std::string("line\nbreak"), std::string("\xff\xfe"),
                                   std::string("nul\0x", 5), std::string(1 << 20, 't')}) {
    // A token with a line break used to abort the process inside gRPC at the first call.
    EXPECT_THAT(
        RemoteNode::Connect({.target = node.target(), .portable = Portable(), .peer_token = token})
            .status(),
        StatusIs(absl::StatusCode::kInvalidArgument));
  }
  for (const std::string& token : {std::string("line\nbreak"), std::string("\xff\xfe")}) {
    ServerOptions bad;
    bad.trusted.push_back({.token = token, .policy = {}});
    EXPECT_THAT(Server::Start(*node.executor, bad).status(),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // The right token still works afterwards.
  EXPECT_THAT(Call(*MustConnect({.target = node.target(), .peer_token = kToken}), "echo",
                   Frame().WithTimeout(5s * rpc_testing::kSlowdown), "x"),
              IsOk());
}

// Tests that a trusted peer not allowed identity cannot assert the caller by listing the caller
// key among its accepted keys.
TEST(RpcAttack, AcceptedKeysCannotGrantIdentity) {
  ServerOptions options;
  options.trusted.push_back(
      {.token = kToken,
       .policy = {.name = "a", .accepted_keys = {"framekit.caller", "app.tenant"}}});
  options.anonymous.accepted_keys = {"framekit.caller"};
  TestNode node(options);
  ASSERT_THAT(node.start_status, IsOk());
  Frame claim = WithCaller(Frame(), {.user_id = "root"}).WithTimeout(5s * rpc_testing::kSlowdown);
  EXPECT_THAT(Call(*MustConnect({.target = node.target(), .peer_token = kToken}), "whoami", claim),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(Call(*MustConnect({.target = node.target()}), "whoami", claim),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

// Tests that destroying the server while calls run ends them with a status, and that a call
// after Shutdown is refused.
TEST(RpcAttack, ServerDestroyedWhileCallsRun) {
  auto node = std::make_unique<TestNode>();
  ASSERT_THAT(node->start_status, IsOk());
  std::shared_ptr<RemoteNode> remote = MustConnect({.target = node->target()});
  std::vector<std::thread> threads;
  std::atomic<int> ended{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<std::string> r = Call(*remote, "wait", Frame().WithTimeout(20s));
      EXPECT_FALSE(r.ok());
      ended.fetch_add(1);
    });
  }
  for (int i = 0; i < 500 && node->started.load() < 8; ++i) std::this_thread::sleep_for(10ms);
  const auto start = Clock::now();
  node->server->Shutdown(100ms);
  for (auto& t : threads) t.join();
  EXPECT_EQ(ended.load(), 8);
  EXPECT_LT(Clock::now() - start, 5s * rpc_testing::kSlowdown);
  EXPECT_THAT(Call(*remote, "echo", Frame().WithTimeout(2s), "x"),
              StatusIs(absl::StatusCode::kUnavailable));
  node->server.reset();
  node.reset();
}

// Tests that creating, using and destroying nodes and servers many times leaks no fds.
TEST(RpcAttack, CyclesLeakNoFds) {
  {
    TestNode warm;
    (void)Call(*MustConnect({.target = warm.target()}), "echo",
               Frame().WithTimeout(5s * rpc_testing::kSlowdown), "x");
  }
  const int fds = OpenFds();
  for (int i = 0; i < 20; ++i) {
    TestNode node;
    ASSERT_THAT(node.start_status, IsOk());
    for (int j = 0; j < 20; ++j) {
      std::shared_ptr<RemoteNode> remote = MustConnect({.target = node.target()});
      EXPECT_THAT(Call(*remote, "echo", Frame().WithTimeout(5s * rpc_testing::kSlowdown), "x"),
                  IsOk());
    }
  }
  std::this_thread::sleep_for(200ms);
  EXPECT_LE(OpenFds(), fds + 4);
}

}  // namespace
}  // namespace framekit::rpc
