// Interceptors: ordering, registration rules, and how the executor runs them (short-circuit,
// the call's frame and options, fault isolation).
#include "framekit/dispatch/interceptors.h"

#include <atomic>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
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
using ::testing::HasSubstr;

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
  // The interceptor reads "over_quota": declared, so that strict options accept it.
  FunctionExecutor executor(app.app, {.interceptors = interceptors, .option_keys = {"over_quota"}});
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

InterceptorFn PassThrough() {
  return [](Call& call, const Next& next) { return next(call); };
}

absl::Status RunOnce(const Interceptors& interceptors) {
  Options options;
  Call call{.kind = CallKind::kInvoke,
            .target = "f",
            .frame = Frame(),
            .options = &options,
            .payload = {}};
  return interceptors.Run(call, [](Call&) { return absl::OkStatus(); });
}

// Tests that register/unregister churn at run time does not keep every retired snapshot.
TEST(Interceptors, ChurnKeepsRetainedSnapshotsBounded) {
  Interceptors interceptors;
  ASSERT_THAT(interceptors.Register("base", 1, PassThrough()), ::framekit::testing::IsOk());
  for (int i = 0; i < 100000; ++i) {
    absl::Status s = interceptors.Register("churn", 2, PassThrough());
    ASSERT_TRUE(s.ok()) << s;
    s = RunOnce(interceptors);
    ASSERT_TRUE(s.ok()) << s;
    s = interceptors.Unregister("churn");
    ASSERT_TRUE(s.ok()) << s;
  }
  EXPECT_LE(interceptors.retained_snapshots(), 2u);
  EXPECT_EQ(interceptors.names(), std::vector<std::string>{"base"});
}

// Tests that an unregistered interceptor, and what it captured, is released once no call runs it.
TEST(Interceptors, UnregisterReleasesCapturesWhenIdle) {
  Interceptors interceptors;
  auto resource = std::make_shared<int>(1);
  ASSERT_TRUE(
      interceptors
          .Register("holder", 1, [resource](Call& call, const Next& next) { return next(call); })
          .ok());
  EXPECT_THAT(RunOnce(interceptors), ::framekit::testing::IsOk());
  ASSERT_THAT(interceptors.Unregister("holder"), ::framekit::testing::IsOk());
  EXPECT_EQ(resource.use_count(), 1);
}

// Tests that a call inside the chain keeps running an interceptor unregistered meanwhile (the
// AddressSanitizer build would see a use after free), and that it is released afterwards.
TEST(Interceptors, ConcurrentUnregisterWhileCallInsideChain) {
  auto interceptors = std::make_shared<Interceptors>();
  std::latch inside(1), removed(1);
  auto resource = std::make_shared<std::string>("kept alive");
  ASSERT_TRUE(interceptors
                  ->Register("slow", 1,
                             [resource, &inside, &removed](Call& call, const Next& next) {
                               inside.count_down();
                               removed.wait();
                               EXPECT_EQ(*resource, "kept alive");
                               return next(call);
                             })
                  .ok());
  std::thread caller([&] {
    const absl::Status s = RunOnce(*interceptors);
    EXPECT_TRUE(s.ok()) << s;
  });
  inside.wait();
  ASSERT_THAT(interceptors->Unregister("slow"), ::framekit::testing::IsOk());
  removed.count_down();
  caller.join();
  EXPECT_EQ(resource.use_count(), 1);
  EXPECT_EQ(interceptors->retained_snapshots(), 1u);
}

// Tests that readers racing with register/unregister churn see whole snapshots.
TEST(Interceptors, ConcurrentRunsDuringChurn) {
  Interceptors interceptors;
  ASSERT_THAT(interceptors.Register("base", 1, PassThrough()), ::framekit::testing::IsOk());
  std::atomic<bool> stop{false};
  std::latch go(3);
  std::vector<std::thread> readers;
  std::atomic<int> failures{0};
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      go.arrive_and_wait();
      while (!stop.load()) {
        if (!RunOnce(interceptors).ok()) ++failures;
      }
    });
  }
  go.arrive_and_wait();
  for (int i = 0; i < 5000; ++i) {
    ASSERT_THAT(interceptors.Register(absl::StrCat("c", i % 3), 2, PassThrough()),
                ::framekit::testing::IsOk());
    ASSERT_THAT(interceptors.Unregister(absl::StrCat("c", i % 3)), ::framekit::testing::IsOk());
  }
  stop = true;
  for (auto& reader : readers) reader.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LE(interceptors.retained_snapshots(), 3u);
}

TEST(Interceptors, NamesFollowTheFunctionNameGrammar) {
  Interceptors interceptors;
  for (const std::string& bad : {std::string(""), std::string("-lead"), std::string("has space"),
                                 std::string("slash/x"), std::string(129, 'a')}) {
    const absl::Status s = interceptors.Register(bad, 1, PassThrough());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
  }
  const absl::Status s = interceptors.Register(std::string(100000, '*'), 1, PassThrough());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_LT(s.message().size(), 200u);
  EXPECT_THAT(s.message(), HasSubstr("..."));
  for (const std::string& good :
       {std::string("auth"), std::string("a.b-c_d"), std::string("9x"), std::string(128, 'z')}) {
    const absl::Status ok = interceptors.Register(good, 1, PassThrough());
    EXPECT_TRUE(ok.ok()) << good << ": " << ok;
  }
}

}  // namespace
}  // namespace framekit::dispatch
