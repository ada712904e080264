// The options step of a call, in both dispatchers, as a hostile caller sees it: options that try
// to change who the caller is, options nothing reads, wrong types, oversized and non-UTF-8 keys
// and values. Every one must fail before a resolver's pair reaches a handler or a process.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/frame.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/process_manager.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "support/tenant_app.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::TenantApp;

using ::testing::HasSubstr;
using ::testing::Not;

const CallerContext kAdmin{.user_id = "admin",
                           .role = "admin",
                           .tenant_id = "acme",
                           .email = "admin@acme.test",
                           .groups = {"ops", "root"}};

// The longest message a rejected option may produce: the echo of a hostile value is bounded.
constexpr std::size_t kMaxMessage = 400;

// A function that reports who called it and which trace it is in, and counts its runs.
struct WhoAmI {
  std::atomic<int> runs{0};
  Handler handler() {
    return [this](const Frame& frame, std::string_view, Sink& out) {
      ++runs;
      const CallerContext* caller = CallerOf(frame);
      const std::string* trace = frame.Find(TraceIdKey());
      return out.Write(absl::StrCat(caller != nullptr ? caller->DebugString() : "-", "/",
                                    trace != nullptr ? *trace : "-"));
    };
  }
};

ProcessSpec Done(std::string name) {
  ProcessSpec spec;
  spec.name = std::move(name);
  spec.poll = [](ProcessContext&) { return Step::kDone; };
  return spec;
}

// Tests the spoofing attack of issue 12: an authenticated admin frame, a request-supplied
// {"caller": "mallory"}. The frame's caller wins: the call is refused and the handler never
// runs, on the direct path and on the deadline path.
TEST(FunctionExecutor, CallerOptionCannotReplaceTheFramesCaller) {
  TenantApp app;
  FunctionExecutor executor(app.app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  const Frame admin = WithCaller(Frame(), kAdmin);
  for (const Options& options :
       {Options{{"caller", "mallory"}}, Options{{"caller", "mallory"}, {"timeout_ms", 5000}},
        Options{{"caller", "admin"}}}) {
    absl::StatusOr<std::string> result = executor.Invoke(admin, "who", "", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("caller"));
  }
  EXPECT_EQ(who.runs.load(), 0);
  // Without the option the admin's full identity reaches the handler.
  absl::StatusOr<std::string> result = executor.Invoke(admin, "who", "");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, absl::StrCat(kAdmin.DebugString(), "/-"));
}

// Tests that naming a caller by option is off by default, even where the frame has none.
TEST(FunctionExecutor, CallerOptionIsRefusedByDefault) {
  AppContext app;
  FunctionExecutor executor(app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", {{"caller", "u1"}});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
  EXPECT_EQ(who.runs.load(), 0);
}

// Tests that a caller or trace id of the wrong type is InvalidArgument, not silently ignored.
TEST(FunctionExecutor, WrongTypedIdentityOptionsAreInvalid) {
  AppContext app;
  FunctionExecutor executor(app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  for (const Options& options :
       {Options{{"caller", std::int64_t{7}}}, Options{{"caller", true}},
        Options{{"trace_id", std::int64_t{42}}}, Options{{"trace_id", 1.5}},
        Options{{"trace_id", false}, {"timeout_ms", 5000}}}) {
    absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument)
        << options.ToString() << ": " << result.status();
  }
  EXPECT_EQ(who.runs.load(), 0);
}

// Tests the trace id's bounds: 1-128 bytes of [A-Za-z0-9._:-]; anything else is
// InvalidArgument whose message echoes a bounded, escaped prefix only.
TEST(FunctionExecutor, TraceIdIsBoundedAndRestricted) {
  AppContext app;
  FunctionExecutor executor(app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  const std::string longest(128, 'a');
  for (const std::string& good :
       {std::string("4bf92f3577b34da6a3ce929d0e0e4736"), std::string("svc.a:span-1_2"), longest}) {
    absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", {{"trace_id", good}});
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(*result, absl::StrCat("-/", good));
  }
  const int good_runs = who.runs.load();
  const std::string huge(1 << 20, 'b');
  for (const std::string& bad :
       {std::string(), std::string(129, 'a'), huge, std::string("a b"), std::string("a\nb"),
        std::string("\xff\xfe"), std::string("a\0b", 3), std::string("<script>"),
        std::string("caf\xc3\xa9")}) {
    absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", {{"trace_id", bad}});
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr("trace_id"));
    EXPECT_LE(result.status().message().size(), kMaxMessage);
    EXPECT_THAT(result.status().message(), Not(HasSubstr("\n")));
  }
  EXPECT_EQ(who.runs.load(), good_runs);
  // A rejected call is recorded; its record echoes nothing of the hostile value.
  absl::StatusOr<std::vector<InvocationRecord>> records = executor.ListInvocations("who");
  ASSERT_TRUE(records.ok()) << records.status();
  for (const InvocationRecord& record : *records) {
    EXPECT_LE(record.trace_id.size(), 128u);
    EXPECT_LE(record.error.message().size(), kMaxMessage);
  }
}

// Tests fail-closed by default: `network=tor` on an application that never booted the overlay
// (no registry at all, or a registry without it), and the misspelling `netwrok`, fail with
// InvalidArgument naming the option before the handler runs: no silent downgrade to clearnet.
TEST(FunctionExecutor, OptionNothingReadsFailsBeforeTheHandler) {
  AppContext bare;
  TenantApp tenant_app;
  for (const AppContext* app : {&bare, &tenant_app.app}) {
    FunctionExecutor executor(*app);
    WhoAmI who;
    ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
    for (const Options& options :
         {Options{{"network", "tor"}}, Options{{"netwrok", "tor"}, {"timeout_ms", 5000}}}) {
      absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", options);
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
      EXPECT_THAT(result.status().message(), HasSubstr(options.begin()->first.substr(0, 3)));
    }
    EXPECT_EQ(who.runs.load(), 0);
  }
}

// Tests that a function's default options are checked too (at call time): a default nothing
// reads fails every call of that function.
TEST(FunctionExecutor, DefaultOptionNothingReadsFailsTheCall) {
  AppContext app;
  FunctionExecutor executor(app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler(), {{"network", "tor"}}),
              ::framekit::testing::IsOk());
  absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("\"network\""));
  EXPECT_EQ(who.runs.load(), 0);
}

// Tests that an option key no one reads is echoed bounded and escaped, however hostile.
TEST(FunctionExecutor, HostileOptionKeysAreRejectedWithABoundedEcho) {
  AppContext app;
  FunctionExecutor executor(app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  for (const std::string& key :
       {std::string(), std::string(1 << 20, 'k'), std::string("\xff\xfe\n"),
        std::string("time\0out_ms", 11), std::string("timeout_ms "), std::string("CALLER")}) {
    Options options;
    options.Set(key, "x");
    absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
    EXPECT_LE(result.status().message().size(), kMaxMessage);
    EXPECT_THAT(result.status().message(), Not(HasSubstr("\n")));
  }
  EXPECT_EQ(who.runs.load(), 0);
}

// Tests that a timeout is bounded: a huge one would overflow the deadline arithmetic (undefined
// behaviour that UBSan reports) instead of being refused.
TEST(FunctionExecutor, TimeoutIsPositiveAndSaturates) {
  AppContext app;
  FunctionExecutor executor(app);
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  for (const std::int64_t ms :
       {std::int64_t{0}, std::int64_t{-1}, std::numeric_limits<std::int64_t>::min()}) {
    absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", {{"timeout_ms", ms}});
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
  }
  EXPECT_EQ(who.runs.load(), 0);
  // Huge timeouts saturate to "no deadline" instead of overflowing into the past.
  for (const std::int64_t ms :
       {std::numeric_limits<std::int64_t>::max(), std::int64_t{10'000'000'000'000}}) {
    absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", {{"timeout_ms", ms}});
    EXPECT_TRUE(result.ok()) << result.status();
  }
  EXPECT_EQ(who.runs.load(), 2);
}

// Tests that a huge function name is echoed bounded in NotFound.
TEST(FunctionExecutor, UnknownFunctionNameIsEchoedBounded) {
  AppContext app;
  FunctionExecutor executor(app);
  absl::StatusOr<std::string> result = executor.Invoke(Frame(), std::string(1 << 20, 'f'), "");
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound) << result.status();
  EXPECT_LE(result.status().message().size(), kMaxMessage);
}

// Tests the opt-outs: allow_caller_option lets an option name the caller of a frame that has
// none (never one that has one); allow_undeclared_options ignores an option nothing reads.
TEST(FunctionExecutor, OptOutsAreExplicitAndNarrow) {
  AppContext app;
  FunctionExecutor executor(app, {.allow_caller_option = true, .allow_undeclared_options = true});
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  absl::StatusOr<std::string> result =
      executor.Invoke(Frame(), "who", "", {{"caller", "svc@batch"}, {"netwrok", "tor"}});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(*result, "caller{user=svc@batch}/-");
  result = executor.Invoke(WithCaller(Frame(), kAdmin), "who", "", {{"caller", "mallory"}});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
  // Still typed and bounded.
  result = executor.Invoke(Frame(), "who", "", {{"caller", std::string(129, 'u')}});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << result.status();
}

// Tests that a caller a resolver set is not replaced by an option either.
TEST(FunctionExecutor, CallerOptionCannotReplaceAResolversCaller) {
  auto resolvers = std::make_shared<FrameResolvers>();
  ASSERT_TRUE(resolvers
                  ->Register("auth", 10,
                             [](const Frame&, const Options&, PairList& out) {
                               out.push_back(Pair::Of(CallerKey(), kAdmin));
                               return absl::OkStatus();
                             })
                  .ok());
  AppContext app;
  ASSERT_THAT(app.SetFrameResolvers(resolvers), ::framekit::testing::IsOk());
  FunctionExecutor executor(app, {.allow_caller_option = true});
  WhoAmI who;
  ASSERT_THAT(executor.Register("who", who.handler()), ::framekit::testing::IsOk());
  absl::StatusOr<std::string> result = executor.Invoke(Frame(), "who", "", {{"caller", "mallory"}});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
  EXPECT_EQ(who.runs.load(), 0);
}

// The same attacks on ProcessManager::Start: nothing starts.
TEST(ProcessManager, CallerOptionCannotReplaceTheFramesCaller) {
  TenantApp app;
  ProcessManager manager(app.app, {.workers = 1});
  const Frame admin = WithCaller(Frame(), kAdmin);
  absl::StatusOr<Pid> pid = manager.Start(admin, Done("p"), {{"caller", "mallory"}});
  EXPECT_EQ(pid.status().code(), absl::StatusCode::kPermissionDenied) << pid.status();
  pid = manager.Start(Frame(), Done("p"), {{"caller", "mallory"}});
  EXPECT_EQ(pid.status().code(), absl::StatusCode::kPermissionDenied) << pid.status();
  EXPECT_TRUE(manager.List().empty());
}

TEST(ProcessManager, OptionNothingReadsFailsBeforeStart) {
  AppContext bare;
  TenantApp tenant_app;
  for (const AppContext* app : {&bare, &tenant_app.app}) {
    ProcessManager manager(*app, {.workers = 1});
    for (const Options& options :
         {Options{{"network", "tor"}}, Options{{"netwrok", "tor"}},
          Options{{"trace_id", std::int64_t{1}}}, Options{{"trace_id", std::string(4096, 'x')}}}) {
      absl::StatusOr<Pid> pid = manager.Start(Frame(), Done("p"), options);
      EXPECT_EQ(pid.status().code(), absl::StatusCode::kInvalidArgument)
          << options.ToString().substr(0, 64) << ": " << pid.status();
      EXPECT_LE(pid.status().message().size(), kMaxMessage);
    }
    EXPECT_TRUE(manager.List().empty());
  }
}

}  // namespace
}  // namespace framekit::dispatch
