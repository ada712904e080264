#include "framekit/app/boot.h"

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "framekit/app/app_context.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/panic.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {
namespace {

using ::framekit::testing::IsOk;

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

inline const Key<int> kServiceA{"test.service_a"};
inline const Key<int> kServiceB{"test.service_b"};

// A component that appends its name to `log` and succeeds.
BootComponent Logging(std::string name, std::vector<std::string> deps,
                      std::vector<std::string>* log) {
  std::string copy = name;
  return BootComponent{std::move(name), std::move(deps), [log, copy](AppContext&) {
                         log->push_back(copy);
                         return absl::OkStatus();
                       }};
}

absl::Status Noop(const Frame&, const Options&, PairList&) { return absl::OkStatus(); }

TEST(BootSequence, RunsInDependencyOrderThenSeals) {
  std::vector<std::string> log;
  BootSequence boot;
  ASSERT_THAT(boot.Add(Logging("net", {"resolvers", "config"}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("config", {}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("resolvers", {"config"}, &log)), IsOk());
  AppContext app;
  ASSERT_THAT(boot.Run(app), IsOk());
  EXPECT_THAT(log, ElementsAre("config", "resolvers", "net"));
  EXPECT_TRUE(app.sealed());
}

// Tests that boot leaves the FrameResolvers sealed with the AppContext: a resolver registered
// after boot (by a late component, a plugin, an attacker holding the app) is refused.
TEST(BootSequence, SealsTheFrameResolvers) {
  BootSequence boot;
  ASSERT_TRUE(boot.Add({"resolvers",
                        {},
                        [](AppContext& app) -> absl::Status {
                          auto resolvers = std::make_shared<FrameResolvers>();
                          FRAMEKIT_RETURN_IF_ERROR(resolvers->Register("test.noop", 10, Noop));
                          return app.SetFrameResolvers(resolvers);
                        }})
                  .ok());
  AppContext app;
  const absl::Status booted = boot.Run(app);
  ASSERT_TRUE(booted.ok()) << booted;
  ASSERT_NE(app.frame_resolvers(), nullptr);
  EXPECT_TRUE(app.frame_resolvers()->sealed());
  const absl::Status late = app.frame_resolvers()->Register("test.late", 20, Noop);
  EXPECT_EQ(late.code(), absl::StatusCode::kFailedPrecondition) << late;
  EXPECT_THAT(app.frame_resolvers()->names(), ElementsAre("test.noop"));
}

// Tests that independent components run in the order they were added.
TEST(BootSequence, TiesRunInRegistrationOrder) {
  std::vector<std::string> log;
  BootSequence boot;
  ASSERT_THAT(boot.Add(Logging("zeta", {}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("alpha", {}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("mid", {"zeta"}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("beta", {}, &log)), IsOk());
  absl::StatusOr<std::vector<std::string>> order = boot.Order();
  ASSERT_THAT(order, IsOk());
  EXPECT_THAT(*order, ElementsAre("zeta", "alpha", "mid", "beta"));
  AppContext app;
  ASSERT_THAT(boot.Run(app), IsOk());
  EXPECT_THAT(log, ElementsAre("zeta", "alpha", "mid", "beta"));
}

TEST(BootSequence, CycleFailsBeforeAnythingRuns) {
  std::vector<std::string> log;
  BootSequence boot;
  ASSERT_THAT(boot.Add(Logging("first", {}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("a", {"c"}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("b", {"a"}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("c", {"b"}, &log)), IsOk());
  AppContext app;
  absl::Status status = boot.Run(app);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("a -> c -> b -> a"));
  EXPECT_THAT(log, IsEmpty());
  EXPECT_FALSE(app.sealed());
}

TEST(BootSequence, MissingDependencyFailsBeforeAnythingRuns) {
  std::vector<std::string> log;
  BootSequence boot;
  ASSERT_THAT(boot.Add(Logging("first", {}, &log)), IsOk());
  ASSERT_THAT(boot.Add(Logging("net", {"resolvers"}, &log)), IsOk());
  AppContext app;
  absl::Status status = boot.Run(app);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("\"net\" depends on \"resolvers\""));
  EXPECT_THAT(log, IsEmpty());
}

TEST(BootSequence, AddRejectsBadComponents) {
  BootSequence boot;
  std::vector<std::string> log;
  EXPECT_EQ(boot.Add(Logging("", {}, &log)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(boot.Add(BootComponent{"nofn", {}, nullptr}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(boot.Add(Logging("self", {"self"}, &log)).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_THAT(boot.Add(Logging("x", {}, &log)), IsOk());
  EXPECT_EQ(boot.Add(Logging("x", {}, &log)).code(), absl::StatusCode::kAlreadyExists);
}

// Tests that a failing component's staged resolver registrations and services are dropped,
// earlier components' survive, later components never run, and the error names it.
TEST(BootSequence, FailingComponentIsRolledBack) {
  std::vector<std::string> log;
  BootSequence boot;
  ASSERT_THAT(boot.Add({"resolvers",
                        {},
                        [](AppContext& app) {
                          auto resolvers = std::make_shared<FrameResolvers>();
                          FRAMEKIT_RETURN_IF_ERROR(resolvers->Register("base", 100, Noop));
                          FRAMEKIT_RETURN_IF_ERROR(app.Set(kServiceA, 1));
                          return app.SetFrameResolvers(resolvers);
                        }}),
              IsOk());
  ASSERT_THAT(
      boot.Add({"broken",
                {"resolvers"},
                [](AppContext& app) {
                  FRAMEKIT_RETURN_IF_ERROR(app.frame_resolvers()->Register("half", 150, Noop));
                  FRAMEKIT_RETURN_IF_ERROR(app.Set(kServiceB, 2));
                  absl::Status error = absl::UnavailableError("database down");
                  error.SetPayload("type.test/Detail", absl::Cord("kept"));
                  return error;
                }}),
      IsOk());
  ASSERT_THAT(boot.Add(Logging("after", {"broken"}, &log)), IsOk());
  AppContext app;
  absl::Status status = boot.Run(app);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "boot component \"broken\": database down");
  EXPECT_EQ(FailedBootComponent(status), "broken");
  EXPECT_TRUE(status.GetPayload("type.test/Detail").has_value());
  ASSERT_NE(app.frame_resolvers(), nullptr);
  EXPECT_THAT(app.frame_resolvers()->names(), ElementsAre("base"));
  EXPECT_NE(app.Get(kServiceA), nullptr);
  EXPECT_EQ(app.Get(kServiceB), nullptr);
  EXPECT_THAT(log, IsEmpty());
  EXPECT_FALSE(app.sealed());
}

TEST(BootSequence, ThrowingComponentIsIsolated) {
  BootSequence boot;
  ASSERT_THAT(
      boot.Add(
          {"thrower", {}, [](AppContext&) -> absl::Status { throw std::runtime_error("kaboom"); }}),
      IsOk());
  AppContext app;
  absl::Status status = boot.Run(app);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(FailedBootComponent(status), "thrower");
  std::optional<ExtensionPanic> panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->message, "kaboom");
  EXPECT_EQ(panic->phase, Phase::kSetup);
}

TEST(BootSequence, RunsOnlyOnceAndNotOnSealedContext) {
  std::vector<std::string> log;
  BootSequence boot;
  ASSERT_THAT(boot.Add(Logging("a", {}, &log)), IsOk());
  AppContext app;
  ASSERT_THAT(boot.Run(app), IsOk());
  AppContext other;
  EXPECT_EQ(boot.Run(other).code(), absl::StatusCode::kFailedPrecondition);
  BootSequence again;
  ASSERT_THAT(again.Add(Logging("b", {}, &log)), IsOk());
  EXPECT_EQ(again.Run(app).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(log, ElementsAre("a"));
}

}  // namespace
}  // namespace framekit
