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

// Tests the fail-safe precedence for nested calls: option, then the selection inherited from
// the parent call, then the app default. A call running on lo-eight whose handler makes a
// nested call naming no network keeps lo-eight: it never falls back to the app default's
// (possibly less private) route. A nested call may still name a network itself.
TEST_F(ExecutorNetworkTest, NestedCallWithoutOptionKeepsTheParentsNetwork) {
  ASSERT_TRUE(executor_
                  ->Register("outer",
                             [this](const Frame& frame, std::string_view payload,
                                    dispatch::Sink& out) -> absl::Status {
                               Options options;
                               if (!payload.empty()) options.Set("network", std::string(payload));
                               absl::StatusOr<std::string> inner =
                                   executor_->Invoke(frame, "fetch", "", options);
                               if (!inner.ok()) return inner.status();
                               return out.Write(*inner);
                             })
                  .ok());
  absl::StatusOr<std::string> seen =
      executor_->Invoke(Frame(), "outer", "", Options{{"network", "lo-eight"}});
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(*seen, "127.0.0.8\n");
  // The nested call's own option still wins over the inherited selection.
  seen = executor_->Invoke(Frame(), "outer", "lo-seven", Options{{"network", "lo-eight"}});
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(*seen, "127.0.0.7\n");
  // A root call with no inherited selection still takes the app default.
  seen = executor_->Invoke(Frame(), "outer", "");
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_EQ(*seen, "127.0.0.7\n");
}

// Tests that an application that never booted the overlay fails a call selecting a network
// with InvalidArgument, before the handler runs, with no registration beyond the boot it did:
// no silent downgrade to clearnet. The same call on the booted application dials lo-eight.
TEST_F(ExecutorNetworkTest, NetworkOptionWithoutTheOverlayFailsClosed) {
  AppContext bare;
  ASSERT_THAT(bare.SetFrameResolvers(std::make_shared<FrameResolvers>()),
              ::framekit::testing::IsOk());
  dispatch::FunctionExecutor executor(bare);
  ASSERT_TRUE(executor
                  .Register("fetch",
                            [this](const Frame&, std::string_view, dispatch::Sink&) {
                              ++handler_runs_;
                              return absl::OkStatus();
                            })
                  .ok());
  for (const Options& options : {Options{{"network", "tor"}}, Options{{"network", "lo-eight"}}}) {
    const absl::StatusOr<std::string> result = executor.Invoke(Frame(), "fetch", "", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("\"network\""));
  }
  dispatch::ProcessManager processes(bare);
  dispatch::ProcessSpec spec;
  spec.name = "p";
  spec.poll = [](dispatch::ProcessContext&) { return dispatch::Step::kDone; };
  EXPECT_EQ(processes.Start(Frame(), std::move(spec), Options{{"network", "tor"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(handler_runs_.load(), 0);
  // The booted application, which did nothing but boot the network component, still accepts it,
  // and a misspelt option fails there too.
  EXPECT_EQ(
      executor_->Invoke(Frame(), "fetch", "", Options{{"network", "lo-eight"}}).value_or("error"),
      "127.0.0.8\n");
  EXPECT_EQ(
      executor_->Invoke(Frame(), "fetch", "", Options{{"netwrok", "lo-eight"}}).status().code(),
      absl::StatusCode::kInvalidArgument);
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
