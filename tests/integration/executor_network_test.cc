// The function executor with the network overlay: the executor applies FrameResolvers without
// knowing about networks, and a handler's connection takes the network its call selected.
#include <atomic>
#include <memory>
#include <string>

#include "framekit/base/status_macros.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/process_manager.h"
#include "framekit/framekit.h"
#include "framekit/net/testing/loopback.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {
namespace {

using ::framekit::testing::IsOk;

using ::testing::HasSubstr;

class ExecutorNetworkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<net::loopback::PeerEchoServer>> echo =
        net::loopback::PeerEchoServer::Start();
    ASSERT_THAT(echo, IsOk()) << echo.status();
    echo_ = *std::move(echo);

    net::NetworkConfig config;
    config.networks.push_back(net::Network::Direct("lo-seven", "127.0.0.7"));
    config.networks.push_back(net::Network::Direct("lo-eight", "127.0.0.8"));
    config.app_default = "lo-seven";
    BootSequence boot;
    ASSERT_THAT(boot.Add({"resolvers",
                          {},
                          [](AppContext& app) -> absl::Status {
                            auto resolvers = std::make_shared<FrameResolvers>();
                            FRAMEKIT_RETURN_IF_ERROR(net::RegisterNetworkClaim(*resolvers));
                            return app.SetFrameResolvers(resolvers);
                          }}),
                IsOk());
    ASSERT_THAT(boot.Add(net::NetworkComponent(config, {"resolvers"})), IsOk());
    const absl::Status booted = boot.Run(app_);
    ASSERT_THAT(booted, IsOk()) << booted;
    networks_ = *app_.Get(net::NetworkRegistryKey());

    executor_ = std::make_unique<dispatch::FunctionExecutor>(app_);
    ASSERT_THAT(
        executor_->Register(
            "fetch",
            [this](const Frame& frame, std::string_view, dispatch::Sink& out) -> absl::Status {
              ++handler_runs_;
              absl::StatusOr<net::Connection> conn =
                  net::Dial(frame, *networks_, "127.0.0.1", echo_->port(), std::chrono::seconds(5));
              if (!conn.ok()) return conn.status();
              absl::StatusOr<std::string> seen = conn->Read(64, std::chrono::seconds(5));
              if (!seen.ok()) return seen.status();
              return out.Write(*seen);
            }),
        IsOk());
  }

  AppContext app_;
  std::unique_ptr<net::loopback::PeerEchoServer> echo_;
  std::shared_ptr<const net::NetworkRegistry> networks_;
  std::unique_ptr<dispatch::FunctionExecutor> executor_;
  std::atomic<int> handler_runs_{0};
};

TEST_F(ExecutorNetworkTest, AppDefaultNetworkCarriesACallWithoutOption) {
  absl::StatusOr<std::string> seen = executor_->Invoke(Frame(), "fetch", "");
  ASSERT_THAT(seen, IsOk()) << seen.status();
  EXPECT_EQ(*seen, "127.0.0.7\n");
}

TEST_F(ExecutorNetworkTest, PerCallOptionBeatsTheAppDefault) {
  absl::StatusOr<std::string> seen =
      executor_->Invoke(Frame(), "fetch", "", Options{{"network", "lo-eight"}});
  ASSERT_THAT(seen, IsOk()) << seen.status();
  EXPECT_EQ(*seen, "127.0.0.8\n");
}

TEST_F(ExecutorNetworkTest, PerCallOptionBeatsTheFunctionDefault) {
  ASSERT_THAT(executor_->Register(
                  "fetch-eight",
                  [this](const Frame& frame, std::string_view, dispatch::Sink& out) {
                    const std::string* network = frame.Find(net::NetworkKey());
                    return out.Write(network == nullptr ? "none" : *network);
                  },
                  Options{{"network", "lo-eight"}}),
              IsOk());
  EXPECT_EQ(executor_->Invoke(Frame(), "fetch-eight", "").value_or("error"), "lo-eight");
  EXPECT_EQ(executor_->Invoke(Frame(), "fetch-eight", "", Options{{"network", "lo-seven"}})
                .value_or("error"),
            "lo-seven");
}

TEST_F(ExecutorNetworkTest, UnknownNetworkStopsTheCallBeforeTheHandler) {
  const absl::StatusOr<std::string> result =
      executor_->Invoke(Frame(), "fetch", "", Options{{"network", "tor"}});
  EXPECT_TRUE(net::IsNetworkNotFound(result.status())) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("frame resolver \"net.overlay\""));
  EXPECT_EQ(handler_runs_.load(), 0);
  EXPECT_TRUE(echo_->peers().empty());
}

// Tests the contract's precedence for nested calls: option, then app default. The parent's
// selection is inherited by the fork, but the overlay resolver appends the app default for a
// nested call that names no network, and that pair shadows the inherited one.
TEST_F(ExecutorNetworkTest, NestedCallWithoutOptionTakesTheAppDefault) {
  ASSERT_THAT(
      executor_->Register(
          "outer",
          [this](const Frame& frame, std::string_view, dispatch::Sink& out) -> absl::Status {
            absl::StatusOr<std::string> inner = executor_->Invoke(frame, "fetch", "");
            if (!inner.ok()) return inner.status();
            return out.Write(*inner);
          }),
      IsOk());
  absl::StatusOr<std::string> seen =
      executor_->Invoke(Frame(), "outer", "", Options{{"network", "lo-eight"}});
  ASSERT_THAT(seen, IsOk()) << seen.status();
  EXPECT_EQ(*seen, "127.0.0.7\n");
}

TEST_F(ExecutorNetworkTest, ProcessFramesCarryTheSelectedNetwork) {
  dispatch::ProcessManager processes(app_);
  std::atomic<bool> saw_network{false};
  dispatch::ProcessSpec spec;
  spec.name = "watcher";
  spec.poll = [&saw_network](dispatch::ProcessContext& context) {
    const std::string* network = context.frame().Find(net::NetworkKey());
    saw_network = network != nullptr && *network == "lo-eight";
    return dispatch::Step::kDone;
  };
  absl::StatusOr<dispatch::Pid> pid =
      processes.Start(Frame(), std::move(spec), Options{{"network", "lo-eight"}});
  ASSERT_THAT(pid, IsOk()) << pid.status();
  absl::StatusOr<dispatch::ProcessExit> exit = processes.Wait(*pid, std::chrono::seconds(10));
  ASSERT_THAT(exit, IsOk()) << exit.status();
  EXPECT_THAT(exit->status, IsOk()) << exit->status;
  EXPECT_TRUE(saw_network.load());

  dispatch::ProcessSpec refused;
  refused.name = "refused";
  refused.poll = [](dispatch::ProcessContext&) { return dispatch::Step::kDone; };
  EXPECT_TRUE(net::IsNetworkNotFound(
      processes.Start(Frame(), std::move(refused), Options{{"network", "tor"}}).status()));
}

}  // namespace
}  // namespace framekit
