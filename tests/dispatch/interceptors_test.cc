// Interceptors: ordering, registration rules, and how the executor runs them (short-circuit,
// the call's frame and options, fault isolation).
#include "framekit/dispatch/interceptors.h"

#include <atomic>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/function_executor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "support/tenant_app.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::kTenant;
using ::framekit::testing::StatusIs;
using ::framekit::testing::TenantApp;
using ::testing::ElementsAre;

TEST(Interceptors, RunInOrderThenName) {
  Interceptors interceptors;
  std::vector<std::string> seen;
  auto record = [&seen](std::string name) {
    return [&seen, name](Call& call, const Next& next) {
      seen.push_back(name);
      return next(call);
    };
  };
  ASSERT_THAT(interceptors.Register("b", 10, record("b")), IsOk());
  ASSERT_THAT(interceptors.Register("a", 10, record("a")), IsOk());
  ASSERT_THAT(interceptors.Register("z", 1, record("z")), IsOk());
  EXPECT_THAT(interceptors.names(), ElementsAre("z", "a", "b"));
  Call call;
  bool ran = false;
  ASSERT_THAT(interceptors.Run(call,
                               [&](Call&) {
                                 ran = true;
                                 return absl::OkStatus();
                               }),
              IsOk());
  EXPECT_TRUE(ran);
  EXPECT_THAT(seen, ElementsAre("z", "a", "b"));
}

TEST(Interceptors, RejectsDuplicatesAndUnregisters) {
  Interceptors interceptors;
  auto pass = [](Call& call, const Next& next) { return next(call); };
  ASSERT_THAT(interceptors.Register("a", 1, pass), IsOk());
  EXPECT_THAT(interceptors.Register("a", 2, pass), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(interceptors.Register("", 2, pass), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(interceptors.Register("b", 2, nullptr), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(interceptors.Unregister("a"), IsOk());
  EXPECT_THAT(interceptors.Unregister("a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(interceptors.size(), 0u);
  interceptors.Seal();
  EXPECT_THAT(interceptors.Register("c", 1, pass), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(FunctionExecutor, InterceptorShortCircuitsAndSeesFrameAndOptions) {
  TenantApp app;
  auto interceptors = std::make_shared<Interceptors>();
  std::string seen_tenant;
  ASSERT_THAT(interceptors->Register("quota", 1,
                                     [&](Call& call, const Next& next) -> absl::Status {
                                       if (const std::string* t = call.frame.Find(kTenant))
                                         seen_tenant = *t;
                                       if (call.options->GetBool("over_quota").value_or(false)) {
                                         return absl::ResourceExhaustedError("quota");
                                       }
                                       return next(call);
                                     }),
              IsOk());
  FunctionExecutor executor(app.app, {.interceptors = interceptors});
  std::atomic<int> runs{0};
  ASSERT_THAT(executor.Register("f",
                                [&](const Frame&, std::string_view, Sink& out) {
                                  ++runs;
                                  return out.Write("ran");
                                }),
              IsOk());
  auto blocked = executor.Invoke(Frame(), "f", "", {{"tenant", "acme"}, {"over_quota", true}});
  EXPECT_THAT(blocked.status(), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(runs.load(), 0);
  EXPECT_EQ(seen_tenant, "acme");
  auto passed = executor.Invoke(Frame(), "f", "", {{"tenant", "acme"}});
  ASSERT_THAT(passed, IsOk()) << passed.status();
  EXPECT_EQ(*passed, "ran");
}

TEST(FunctionExecutor, ThrowingInterceptorIsIsolated) {
  AppContext app;
  auto interceptors = std::make_shared<Interceptors>();
  ASSERT_THAT(interceptors->Register("boom", 1,
                                     [](Call&, const Next&) -> absl::Status {
                                       throw std::runtime_error("interceptor broke");
                                     }),
              IsOk());
  FunctionExecutor executor(app, {.interceptors = interceptors});
  bool ran = false;
  ASSERT_THAT(executor.Register("f",
                                [&](const Frame&, std::string_view, Sink&) {
                                  ran = true;
                                  return absl::OkStatus();
                                }),
              IsOk());
  auto result = executor.Invoke(Frame(), "f", "");
  ASSERT_TRUE(IsExtensionPanic(result.status())) << result.status();
  EXPECT_EQ(GetExtensionPanic(result.status())->extension, "interceptor boom");
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace framekit::dispatch
