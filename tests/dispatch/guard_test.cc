#include "framekit/dispatch/guard.h"

#include <pthread.h>
#include <unistd.h>

#include <exception>
#include <latch>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/fault_monitor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/fault_log.h"
#include "support/status_matchers.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;

using ::framekit::testing::CollectingSink;
using ::framekit::testing::MakeLogger;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

struct UserError {
  int code;
};

enum class Kind { kRuntimeError, kInt, kCString, kUserType, kNested, kBadAlloc };

struct KindCase {
  Kind kind;
  const char* name;
  const char* type;     // expected ExtensionPanic::type
  const char* message;  // expected ExtensionPanic::message (substring)
};

[[noreturn]] void Throw(Kind kind) {
  switch (kind) {
    case Kind::kRuntimeError:
      throw std::runtime_error("disk on fire");
    case Kind::kInt:
      throw 42;
    case Kind::kCString:
      throw "plain string";
    case Kind::kUserType:
      throw UserError{7};
    case Kind::kNested:
      try {
        throw std::logic_error("inner cause");
      } catch (...) {
        std::throw_with_nested(std::runtime_error("outer failure"));
      }
    case Kind::kBadAlloc:
      throw std::bad_alloc();
  }
  throw 0;
}

const KindCase kCases[] = {
    {Kind::kRuntimeError, "RuntimeError", "std::runtime_error", "disk on fire"},
    {Kind::kInt, "Int", "int", "42"},
    {Kind::kCString, "CString", "char const*", "plain string"},
    {Kind::kUserType, "UserType", "framekit::dispatch::(anonymous namespace)::UserError",
     "thrown object of type"},
    {Kind::kNested, "Nested", "std::_Nested_exception<std::runtime_error>", "outer failure"},
    {Kind::kBadAlloc, "BadAlloc", "std::bad_alloc", "std::bad_alloc"},
};

class GuardKindTest : public ::testing::TestWithParam<KindCase> {
 protected:
  void ExpectPanic(const ExtensionPanic& panic, Phase phase) {
    EXPECT_EQ(panic.extension, "ext");
    EXPECT_EQ(panic.phase, phase);
    EXPECT_EQ(panic.type, GetParam().type);
    EXPECT_THAT(panic.message, HasSubstr(GetParam().message));
    if (GetParam().kind == Kind::kNested) {
      EXPECT_THAT(panic.nested, ElementsAre("std::logic_error: inner cause"));
    } else {
      EXPECT_TRUE(panic.nested.empty());
    }
  }
  // The one fault record the monitor wrote, checked for the fields every record carries.
  void ExpectOneRecord(Phase phase) {
    const std::vector<std::string> records = sink_->WithPrefix("fault extension=");
    ASSERT_EQ(records.size(), 1u);
    EXPECT_THAT(records[0], HasSubstr("extension=\"ext\""));
    EXPECT_THAT(records[0], HasSubstr(std::string("phase=\"") + std::string(PhaseName(phase))));
    EXPECT_THAT(records[0], HasSubstr("type=\""));
    EXPECT_THAT(records[0], HasSubstr(GetParam().message));
    EXPECT_THAT(records[0], HasSubstr("stack="));
    EXPECT_EQ(monitor_.faults("ext", phase), 1u);
  }

  std::shared_ptr<CollectingSink> sink_ = std::make_shared<CollectingSink>();
  FaultMonitor monitor_{::framekit::testing::LoggerOptions(sink_)};
  ExtRef ext_{"ext", monitor_};
};

TEST_P(GuardKindTest, SetupReturnsPanicStatus) {
  const absl::Status status = CallSetup(ext_, [&]() -> absl::Status { Throw(GetParam().kind); });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  ASSERT_TRUE(IsExtensionPanic(status));
  ExpectPanic(*GetExtensionPanic(status), Phase::kSetup);
  ExpectOneRecord(Phase::kSetup);
}

TEST_P(GuardKindTest, PollReturnsNoEvent) {
  FaultVerdict verdict = FaultVerdict::kEvict;
  const std::optional<int> event = CallPoll(
      ext_, [&]() -> std::optional<int> { Throw(GetParam().kind); }, &verdict);
  EXPECT_FALSE(event.has_value());
  EXPECT_EQ(verdict, FaultVerdict::kContinue);
  ExpectOneRecord(Phase::kPoll);
}

TEST_P(GuardKindTest, TeardownSwallows) {
  CallTeardown(ext_, [&] { Throw(GetParam().kind); });
  ExpectOneRecord(Phase::kTeardown);
}

TEST_P(GuardKindTest, FinalizeSwallowsAndLogsId) {
  CallFinalize(ext_, 1234, [&] { Throw(GetParam().kind); });
  ExpectOneRecord(Phase::kFinalize);
  EXPECT_THAT(sink_->WithPrefix("fault extension=")[0], HasSubstr("detail=\"id=1234\""));
}

TEST_P(GuardKindTest, HostFuncReturnsZeroValue) {
  auto add = HostFunc(ext_, "math.add", [&](int a, int b) {
    if (a < 0) Throw(GetParam().kind);
    return a + b;
  });
  EXPECT_EQ(add(1, 2), 3);
  EXPECT_EQ(add(-1, 2), 0);
  ExpectOneRecord(Phase::kHost);
  EXPECT_THAT(sink_->WithPrefix("fault extension=")[0], HasSubstr("detail=\"math.add\""));
}

TEST_P(GuardKindTest, HostFuncReturnsErrorStatus) {
  auto get = HostFunc(ext_, "kv.get", [&](const std::string& key) -> absl::StatusOr<std::string> {
    if (key.empty()) Throw(GetParam().kind);
    return "value of " + key;
  });
  EXPECT_EQ(*get("a"), "value of a");
  const absl::StatusOr<std::string> failed = get("");
  ASSERT_THAT(failed, ::testing::Not(IsOk()));
  EXPECT_THAT(std::string(failed.status().message()), StartsWith("host function \"kv.get\": "));
  ASSERT_TRUE(IsExtensionPanic(failed.status()));
  ExpectPanic(*GetExtensionPanic(failed.status()), Phase::kHost);
}

TEST_P(GuardKindTest, RawGuardUsesCallersFallback) {
  const std::string result = Guard(
      ext_, Phase::kInvoke, [&]() -> std::string { Throw(GetParam().kind); },
      [&](FaultReport report) {
        ExpectPanic(report.panic, Phase::kInvoke);
        return std::string("fallback");
      });
  EXPECT_EQ(result, "fallback");
  ExpectOneRecord(Phase::kInvoke);
}

INSTANTIATE_TEST_SUITE_P(AllKinds, GuardKindTest, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

class GuardTest : public ::testing::Test {
 protected:
  std::shared_ptr<CollectingSink> sink_ = std::make_shared<CollectingSink>();
  FaultMonitor monitor_{::framekit::testing::LoggerOptions(sink_)};
  ExtRef ext_{"ext", monitor_};
};

TEST_F(GuardTest, SetupReturnsExtensionsOwnError) {
  EXPECT_THAT(CallSetup(ext_, [] { return absl::OkStatus(); }), IsOk());
  EXPECT_THAT(CallSetup(ext_, [] {}), IsOk());
  const absl::Status status = CallSetup(ext_, [] { return absl::NotFoundError("no config"); });
  EXPECT_EQ(status, absl::NotFoundError("no config"));
  EXPECT_FALSE(IsExtensionPanic(status));
  EXPECT_TRUE(monitor_.Counters().empty());
}

TEST_F(GuardTest, SetupKeepsStatusOrValue) {
  const absl::StatusOr<int> ok = CallSetup(ext_, []() -> absl::StatusOr<int> { return 5; });
  EXPECT_EQ(*ok, 5);
  const absl::StatusOr<int> thrown =
      CallSetup(ext_, []() -> absl::StatusOr<int> { throw std::runtime_error("x"); });
  EXPECT_TRUE(IsExtensionPanic(thrown.status()));
}

TEST_F(GuardTest, PollPassesEventsThrough) {
  EXPECT_EQ(CallPoll(ext_, [] { return std::optional<int>(3); }), std::optional<int>(3));
  EXPECT_EQ(CallPoll(ext_, [] { return std::make_unique<int>(4); }) == nullptr, false);
  EXPECT_EQ(CallPoll(ext_, []() -> std::unique_ptr<int> { throw 1; }), nullptr);
}

// Tests that the poll guard hands the policy's verdict to the step loop.
TEST_F(GuardTest, PollReportsVerdictAtIntensityLimit) {
  FaultMonitorOptions options = ::framekit::testing::LoggerOptions(sink_);
  options.policy.max_faults = 2;
  options.policy.on_trip = FaultVerdict::kEvict;
  FaultMonitor strict(options);
  const auto throwing = []() -> std::optional<int> { throw 1; };
  FaultVerdict verdict = FaultVerdict::kContinue;
  CallPoll({"p", strict}, throwing, &verdict);
  EXPECT_EQ(verdict, FaultVerdict::kContinue);
  CallPoll({"p", strict}, throwing, &verdict);
  EXPECT_EQ(verdict, FaultVerdict::kEvict);
  CallPoll(
      {"p", strict}, [] { return std::optional<int>(1); }, &verdict);
  EXPECT_EQ(verdict, FaultVerdict::kContinue);
}

TEST_F(GuardTest, TeardownLogsReturnedErrorWithoutCountingAFault) {
  CallTeardown(ext_, [] { return absl::UnavailableError("socket gone"); });
  EXPECT_THAT(sink_->WithPrefix("error swallowed"), ElementsAre(HasSubstr("socket gone")));
  EXPECT_TRUE(monitor_.Counters().empty());
}

TEST_F(GuardTest, HostFuncVoidAndStringFallbacks) {
  int calls = 0;
  auto notify = HostFunc(ext_, "notify", [&calls](int n) {
    ++calls;
    if (n < 0) throw std::runtime_error("negative");
  });
  notify(1);
  notify(-1);
  EXPECT_EQ(calls, 2);
  auto name = HostFunc(ext_, "name", [](bool fail) -> std::string {
    if (fail) throw "nope";
    return "ok";
  });
  EXPECT_EQ(name(false), "ok");
  EXPECT_EQ(name(true), "");
  EXPECT_EQ(monitor_.faults("ext", Phase::kHost), 2u);
}

int PlainFunction(int x) {
  if (x == 0) throw std::invalid_argument("zero");
  return 10 / x;
}

TEST_F(GuardTest, HostFuncWrapsFunctionPointersAndGenericLambdas) {
  auto plain = HostFunc(ext_, "div", &PlainFunction);
  EXPECT_EQ(plain(5), 2);
  EXPECT_EQ(plain(0), 0);
  auto generic = HostFunc<absl::Status(int)>(ext_, "generic", [](auto x) -> absl::Status {
    if (x > 0) throw std::runtime_error("positive");
    return absl::OkStatus();
  });
  EXPECT_THAT(generic(0), IsOk());
  EXPECT_TRUE(IsExtensionPanic(generic(1)));
}

TEST_F(GuardTest, HostFuncKeepsMutableState) {
  auto counter = HostFunc(ext_, "counter", [n = 0]() mutable { return ++n; });
  EXPECT_EQ(counter(), 1);
  EXPECT_EQ(counter(), 2);
}

// Tests that a guard with no monitor named reports to DefaultFaultMonitor().
TEST_F(GuardTest, NameOnlyReportsToDefaultMonitor) {
  const std::uint64_t before = DefaultFaultMonitor().faults("guard_test.default", Phase::kPoll);
  CallPoll("guard_test.default", []() -> std::optional<int> { throw 1; });
  EXPECT_EQ(DefaultFaultMonitor().faults("guard_test.default", Phase::kPoll), before + 1);
}

// Thread cancellation: a thread cancelled while blocked inside a guarded call must unwind and
// end (the guard rethrows abi::__forced_unwind); swallowing it would abort the process.
struct CancelCase {
  const char* name;
  void (*run)(int fd, std::latch& entered);
};

void BlockingRead(int fd, std::latch& entered) {
  entered.count_down();
  // read() is a cancellation point: the pending cancel is acted on here. The byte lives on the
  // heap: the forced unwind does not clear ASan's stack poison, and a poisoned local here trips
  // a false positive in GCC 12's libasan (sigaltstack interceptor) when the guard rethrows.
  const auto byte = std::make_unique<char>();
  [[maybe_unused]] ssize_t n = read(fd, byte.get(), 1);
}

const CancelCase kCancelCases[] = {
    {"Setup",
     [](int fd, std::latch& entered) {
       (void)CallSetup("cancel", [&] { BlockingRead(fd, entered); });
     }},
    {"Poll",
     [](int fd, std::latch& entered) {
       (void)CallPoll("cancel", [&] {
         BlockingRead(fd, entered);
         return std::optional<int>();
       });
     }},
    {"Teardown",
     [](int fd, std::latch& entered) {
       CallTeardown("cancel", [&] { BlockingRead(fd, entered); });
     }},
    {"Finalize",
     [](int fd, std::latch& entered) {
       CallFinalize("cancel", 1, [&] { BlockingRead(fd, entered); });
     }},
    {"HostFunc",
     [](int fd, std::latch& entered) {
       HostFunc("cancel", "block", [&](int) { BlockingRead(fd, entered); })(0);
     }},
    {"RawGuard",
     [](int fd, std::latch& entered) {
       Guard(
           "cancel", Phase::kInvoke, [&] { BlockingRead(fd, entered); }, [](FaultReport) {});
     }},
};

class GuardCancelTest : public ::testing::TestWithParam<CancelCase> {};

struct CancelArgs {
  const CancelCase* c;
  int fd;
  std::latch* entered;
  bool* returned;
};

TEST_P(GuardCancelTest, CancellationUnwindsThroughGuard) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  std::latch entered(1);
  bool returned = false;
  CancelArgs args{&GetParam(), fds[0], &entered, &returned};
  pthread_t thread;
  ASSERT_EQ(pthread_create(
                &thread, nullptr,
                [](void* p) -> void* {
                  auto* a = static_cast<CancelArgs*>(p);
                  a->c->run(a->fd, *a->entered);
                  *a->returned = true;  // reached only if the guard swallowed the cancellation
                  return nullptr;
                },
                &args),
            0);
  entered.wait();
  ASSERT_EQ(pthread_cancel(thread), 0);
  void* result = nullptr;
  ASSERT_EQ(pthread_join(thread, &result), 0);
  EXPECT_EQ(result, PTHREAD_CANCELED);
  EXPECT_FALSE(returned);
  close(fds[0]);
  close(fds[1]);
}

INSTANTIATE_TEST_SUITE_P(AllGuards, GuardCancelTest, ::testing::ValuesIn(kCancelCases),
                         [](const auto& info) { return std::string(info.param.name); });

[[gnu::noinline]] void ThrowOutOfNoexcept() { throw std::runtime_error("escapes noexcept"); }

// Documents the limit of isolation: a throw out of a noexcept function terminates the process
// at that function's boundary, before the guard around it can catch anything.
TEST(GuardDeathTest, ThrowOutOfNoexceptCannotBeCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        (void)CallSetup("noexcept", []() noexcept {
          ThrowOutOfNoexcept();
          return absl::OkStatus();
        });
      },
      "");
}

}  // namespace
}  // namespace framekit::dispatch
