#include <atomic>
#include <chrono>
#include <condition_variable>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/interceptors.h"
#include "framekit/dispatch/internal/function_names.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"
#include "support/tenant_app.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::IsOk;
using ::framekit::testing::StatusIs;

using ::framekit::testing::kTenant;
using ::framekit::testing::TenantApp;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Handler Echo() {
  return [](const Frame&, std::string_view payload, Sink& out) { return out.Write(payload); };
}

// Blocks until `release` counts down, ignoring the stop token.
Handler Hang(std::latch& started, std::latch& release) {
  return [&started, &release](const Frame&, std::string_view, Sink&) {
    started.count_down();
    release.wait();
    return absl::OkStatus();
  };
}

// Waits (bounded) until `flag` is set: whether a deadline call's handler started. A worker that
// starts after the call's deadline never runs the handler, so a test must not wait on it blindly.
bool WaitUntilSet(const std::atomic<bool>& flag) {
  for (int i = 0; i < 5000 && !flag.load(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return flag.load();
}

void WaitForQuarantine(const FunctionExecutor& executor, int want) {
  for (int i = 0; i < 10000 && executor.quarantined() != want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(executor.quarantined(), want);
}

TEST(FunctionExecutor, RegistryLifecycle) {
  TenantApp app;  // its resolver reads the "tenant" default below
  FunctionExecutor executor(app.app);
  EXPECT_EQ(executor.Register("", Echo()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor.Register("bad name", Echo()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor.Register("-x", Echo()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor.Register("f", Handler()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(executor.Register("f", std::shared_ptr<Code>()).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_THAT(executor.Register("f", Echo(), {{"tenant", "dflt"}}), IsOk());
  ASSERT_THAT(executor.Register("a.b-c_1", Echo()), IsOk());
  EXPECT_EQ(executor.Register("f", Echo()).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(executor.List(), ElementsAre("a.b-c_1", "f"));

  auto v2 = executor.Deploy(
      "f", [](const Frame&, std::string_view, Sink& out) { return out.Write("v2"); });
  ASSERT_THAT(v2, IsOk());
  EXPECT_EQ(*v2, 2);
  auto versions = executor.ListVersions("f");
  ASSERT_THAT(versions, IsOk());
  ASSERT_EQ(versions->size(), 2u);
  EXPECT_FALSE((*versions)[0].active);
  EXPECT_TRUE((*versions)[1].active);
  EXPECT_EQ(*executor.Invoke(Frame(), "f", "x"), "v2");
  auto info = executor.Get("f");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->active_version, 2);
  EXPECT_EQ(info->defaults.GetString("tenant"), "dflt");

  EXPECT_EQ(executor.Deploy("nope", Echo()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(executor.ListVersions("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(executor.Get("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(executor.Invoke(Frame(), "nope", "").status().code(), absl::StatusCode::kNotFound);
  ASSERT_THAT(executor.Remove("f"), IsOk());
  EXPECT_EQ(executor.Remove("f").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(executor.Invoke(Frame(), "f", "").status().code(), absl::StatusCode::kNotFound);
}

// The function table compares names a word at a time (overlapping loads for 4 to 16 bytes):
// names of every length up to 40 that differ in exactly one byte, at each position, are unequal
// whatever their hashes; equal names are equal and hash alike.
TEST(FunctionExecutor, NameEqualityTellsApartNamesDifferingInOneByteAnywhere) {
  const dispatch_internal::NameEq eq;
  const dispatch_internal::NameHash hash;
  for (std::size_t length = 0; length <= 40; ++length) {
    // Distinct buffers, so that equality never short-cuts on the address.
    const std::string a(length, 'a');
    const std::string same(length, 'a');
    EXPECT_TRUE(eq(a, same)) << length;
    EXPECT_EQ(hash(a), hash(same)) << length;
    EXPECT_FALSE(eq(a, std::string(length + 1, 'a'))) << length;
    for (std::size_t i = 0; i < length; ++i) {
      std::string variant = a;
      variant[i] = 'b';
      EXPECT_FALSE(eq(a, variant)) << "length " << length << ", byte " << i;
      EXPECT_FALSE(eq(variant, a)) << "length " << length << ", byte " << i;
    }
  }
}

// End to end: such names each reach their own function.
TEST(FunctionExecutor, NamesDifferingInOneByteAtAnyPositionAreDistinct) {
  AppContext app;
  FunctionExecutor executor(app);
  std::vector<std::string> names;
  for (std::size_t length = 1; length <= 24; ++length) {
    const std::string base(length, 'a');
    names.push_back(base);
    for (std::size_t i = 0; i < length; ++i) {
      std::string variant = base;
      variant[i] = 'b';
      names.push_back(variant);
    }
  }
  for (const std::string& name : names) {
    ASSERT_THAT(executor.Register(name, [name](const Frame&, std::string_view,
                                               Sink& out) { return out.Write(name); }),
                IsOk())
        << name;
  }
  for (const std::string& name : names) {
    EXPECT_EQ(executor.Invoke(Frame(), name, "").value_or("<error>"), name);
  }
  EXPECT_EQ(executor.Invoke(Frame(), std::string(25, 'a'), "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(executor.Invoke(Frame(), "aaaaaaaaaaaaaaaac", "").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(executor.Invoke(Frame(), "aaac", "").status().code(), absl::StatusCode::kNotFound);
}

// Tests the generic contract: a resolver registered at boot puts its pair on the handler's
// frame, and the call's option beats the function's default.
TEST(FunctionExecutor, HandlerSeesNewResolverPair) {
  TenantApp app;
  FunctionExecutor executor(app.app);
  auto tenant_of = [](const Frame& frame, std::string_view, Sink& out) {
    const std::string* tenant = frame.Find(kTenant);
    return out.Write(tenant == nullptr ? "<none>" : *tenant);
  };
  ASSERT_THAT(executor.Register("who", tenant_of, {{"tenant", "default-co"}}), IsOk());
  EXPECT_EQ(*executor.Invoke(Frame(), "who", ""), "default-co");
  EXPECT_EQ(*executor.Invoke(Frame(), "who", "", {{"tenant", "acme"}}), "acme");
  // Also on the deadline path.
  EXPECT_EQ(*executor.Invoke(Frame(), "who", "", {{"tenant", "acme"}, {"timeout_ms", 5000}}),
            "acme");
}

TEST(FunctionExecutor, FailingResolverKeepsHandlerFromRunning) {
  TenantApp app;
  FunctionExecutor executor(app.app);
  std::atomic<int> runs{0};
  ASSERT_THAT(executor.Register("f",
                                [&](const Frame&, std::string_view, Sink&) {
                                  ++runs;
                                  return absl::OkStatus();
                                }),
              IsOk());
  for (const Options& options :
       {Options{{"tenant", "forbidden"}}, Options{{"tenant", "forbidden"}, {"timeout_ms", 5000}}}) {
    auto result = executor.Invoke(Frame(), "f", "", options);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(result.status().message(), HasSubstr("frame resolver \"test.tenant\""));
  }
  EXPECT_EQ(runs.load(), 0);
}

TEST(FunctionExecutor, AttachesCallerAndTraceAndRecordsThem) {
  AppContext app;
  FunctionExecutor executor(app, {.allow_caller_option = true});
  ASSERT_TRUE(executor
                  .Register("f",
                            [](const Frame& frame, std::string_view, Sink& out) {
                              const CallerContext* caller = CallerOf(frame);
                              const std::string* trace = frame.Find(TraceIdKey());
                              return out.Write(absl::StrCat(caller ? caller->user_id : "-", "/",
                                                            trace ? *trace : "-"));
                            })
                  .ok());
  auto result = executor.Invoke(Frame(), "f", "", {{"caller", "u1"}, {"trace_id", "t-9"}});
  ASSERT_THAT(result, IsOk()) << result.status();
  EXPECT_EQ(*result, "u1/t-9");
  ASSERT_THAT(executor.Invoke(Frame(), "f", "", {{"timeout_ms", -1}}), ::testing::Not(IsOk()));
  auto records = executor.ListInvocations("f");
  ASSERT_THAT(records, IsOk());
  ASSERT_EQ(records->size(), 2u);
  const InvocationRecord& newest = (*records)[0];
  EXPECT_FALSE(newest.ok);
  EXPECT_EQ(newest.error.code(), absl::StatusCode::kInvalidArgument);
  const InvocationRecord& first = (*records)[1];
  EXPECT_TRUE(first.ok);
  EXPECT_EQ(first.function, "f");
  EXPECT_EQ(first.version, 1);
  EXPECT_EQ(first.caller, "u1");
  EXPECT_EQ(first.trace_id, "t-9");
  EXPECT_EQ(first.output_bytes, 6u);
  EXPECT_LT(first.id, newest.id);
  EXPECT_GE(first.end, first.start);
}

TEST(FunctionExecutor, ListInvocationsReturnsNewestHundred) {
  AppContext app;
  FunctionExecutor executor(app);
  ASSERT_THAT(executor.Register("f", Echo()), IsOk());
  for (int i = 0; i < 250; ++i) ASSERT_THAT(executor.Invoke(Frame(), "f", "x"), IsOk());
  auto records = executor.ListInvocations("f");
  ASSERT_THAT(records, IsOk());
  ASSERT_EQ(records->size(), 100u);
  for (std::size_t i = 1; i < records->size(); ++i) {
    EXPECT_GT((*records)[i - 1].id, (*records)[i].id);
  }
  auto counters = executor.Counters("f");
  ASSERT_THAT(counters, IsOk());
  EXPECT_EQ(counters->calls, 250u);
  std::uint64_t histogram = 0;
  for (std::uint64_t n : counters->latency) histogram += n;
  EXPECT_EQ(histogram, 250u);
}

// Tests the ring of records at its edges: one slot, and a few slots wrapped many times over.
TEST(FunctionExecutor, RecordRingKeepsTheNewestAtEverySize) {
  for (const int size : {1, 3, 7}) {
    AppContext app;
    FunctionExecutor executor(app, {.records_per_function = size});
    ASSERT_THAT(executor.Register("f", Echo()), IsOk());
    std::vector<std::uint64_t> ids;
    for (int i = 0; i < 3 * size + 2; ++i) {
      ASSERT_THAT(executor.Invoke(Frame(), "f", "x"), IsOk());
      auto records = executor.ListInvocations("f");
      ASSERT_THAT(records, IsOk());
      ASSERT_EQ(records->size(), static_cast<std::size_t>(std::min(i + 1, size)));
      ids.push_back(records->front().id);
      // Newest first, consecutive: nothing lost or repeated as the ring wraps.
      for (std::size_t k = 1; k < records->size(); ++k) {
        EXPECT_EQ((*records)[k - 1].id, (*records)[k].id + 1) << "size " << size << " call " << i;
      }
    }
    for (std::size_t k = 1; k < ids.size(); ++k) EXPECT_EQ(ids[k], ids[k - 1] + 1);
  }
}

// Tests that a latency is counted in the first bucket whose bound holds it, at and around every
// bound, and at the extremes.
TEST(FunctionExecutor, LatencyBucketOfIsTheFirstBucketThatHoldsTheLatency) {
  const auto reference = [](std::chrono::nanoseconds latency) {
    for (int i = 0; i < kLatencyBuckets - 1; ++i) {
      if (latency <= LatencyBucketBound(i)) return i;
    }
    return kLatencyBuckets - 1;
  };
  std::vector<std::chrono::nanoseconds> latencies = {
      std::chrono::nanoseconds::min(), std::chrono::nanoseconds(-1), std::chrono::nanoseconds(0),
      std::chrono::nanoseconds(1), std::chrono::nanoseconds::max()};
  for (int i = 0; i < kLatencyBuckets - 1; ++i) {
    const std::chrono::nanoseconds bound = LatencyBucketBound(i);
    for (const std::int64_t delta : {-1001, -1000, -999, -1, 0, 1, 999, 1000, 1001}) {
      latencies.push_back(bound + std::chrono::nanoseconds(delta));
    }
  }
  for (std::int64_t ns = 1; ns < (std::int64_t{1} << 40); ns = ns * 3 + 7) {
    latencies.push_back(std::chrono::nanoseconds(ns));
  }
  for (const std::chrono::nanoseconds latency : latencies) {
    EXPECT_EQ(LatencyBucketOf(latency), reference(latency)) << latency.count() << " ns";
  }
}

TEST(FunctionExecutor, ThrowingHandlersOfEveryKindAreIsolated) {
  AppContext app;
  FaultMonitor monitor;
  FunctionExecutor executor(app, {.monitor = &monitor});
  std::vector<Handler> throwers = {
      [](const Frame&, std::string_view, Sink&) -> absl::Status {
        throw std::runtime_error("runtime");
      },
      [](const Frame&, std::string_view, Sink&) -> absl::Status { throw 42; },
      [](const Frame&, std::string_view, Sink&) -> absl::Status { throw "c string"; },
      [](const Frame&, std::string_view, Sink&) -> absl::Status {
        struct Custom {};
        throw Custom{};
      },
  };
  ASSERT_THAT(executor.Register("ok", Echo()), IsOk());
  for (std::size_t i = 0; i < throwers.size(); ++i) {
    const std::string name = absl::StrCat("t", i);
    ASSERT_THAT(executor.Register(name, throwers[i]), IsOk());
    for (const Options& options : {Options{}, Options{{"timeout_ms", 5000}}}) {
      auto result = executor.Invoke(Frame(), name, "", options);
      ASSERT_THAT(result, ::testing::Not(IsOk()));
      auto panic = GetExtensionPanic(result.status());
      ASSERT_TRUE(panic.has_value()) << result.status();
      EXPECT_EQ(panic->phase, Phase::kInvoke);
      EXPECT_EQ(panic->extension, absl::StrCat(name, "@v1"));
      EXPECT_EQ(*executor.Invoke(Frame(), "ok", "fine", options), "fine");
    }
    EXPECT_EQ(executor.Counters(name)->faults, 2u);
  }
  EXPECT_EQ(monitor.faults("t0@v1", Phase::kInvoke), 2u);
}

TEST(FunctionExecutor, FaultPolicyDisablesUntilRedeployed) {
  AppContext app;
  FaultMonitorOptions monitor_options;
  monitor_options.policy = {
      .max_faults = 3, .window = std::chrono::hours(1), .on_trip = FaultVerdict::kEvict};
  FaultMonitor monitor(std::move(monitor_options));
  FunctionExecutor executor(app, {.monitor = &monitor});
  ASSERT_THAT(executor.Register("flaky",
                                [](const Frame&, std::string_view, Sink&) -> absl::Status {
                                  throw std::runtime_error("again");
                                }),
              IsOk());
  for (int i = 0; i < 3; ++i)
    EXPECT_TRUE(IsExtensionPanic(executor.Invoke(Frame(), "flaky", "").status()));
  EXPECT_EQ(executor.Invoke(Frame(), "flaky", "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(executor.Get("flaky")->disabled);
  EXPECT_EQ(monitor.alarms("flaky@v1"), 1u);
  ASSERT_THAT(executor.Deploy("flaky", Echo()), IsOk());
  EXPECT_EQ(*executor.Invoke(Frame(), "flaky", "back"), "back");
}

// Tests that a handler ignoring its stop token still yields DeadlineExceeded on time, and that
// its worker is quarantined until the handler returns.
TEST(FunctionExecutor, DeadlineWithHandlerIgnoringStopToken) {
  AppContext app;
  FunctionExecutor executor(app);
  std::latch started(1), release(1);
  ASSERT_THAT(executor.Register("hang", Hang(started, release)), IsOk());
  ASSERT_THAT(executor.Register("ok", Echo()), IsOk());
  // Warm up: an idle worker exists, so the handler starts well before its deadline.
  ASSERT_THAT(executor.Invoke(Frame(), "ok", "", {{"timeout_ms", 60000}}), IsOk());
  const auto before = Clock::now();
  auto result = executor.Invoke(Frame(), "hang", "", {{"timeout_ms", 200}});
  const auto took = Clock::now() - before;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(took, std::chrono::milliseconds(200));
  EXPECT_LT(took, std::chrono::seconds(5));
  started.wait();
  EXPECT_EQ(executor.quarantined(), 1);
  EXPECT_EQ(*executor.Invoke(Frame(), "ok", "fine", {{"timeout_ms", 5000}}), "fine");
  EXPECT_EQ(executor.Counters("hang")->timeouts, 1u);
  release.count_down();
  WaitForQuarantine(executor, 0);
}

TEST(FunctionExecutor, DeadlineWithHandlerHonouringStopToken) {
  AppContext app;
  FunctionExecutor executor(app);
  std::atomic<bool> saw_stop{false};
  std::atomic<bool> entered{false};
  std::latch finished(1);
  ASSERT_THAT(executor.Register("ok", Echo()), IsOk());
  ASSERT_THAT(executor.Register("polite",
                                [&](const Frame& frame, std::string_view, Sink&) {
                                  entered = true;
                                  std::mutex mu;
                                  std::condition_variable_any cv;
                                  std::unique_lock<std::mutex> lock(mu);
                                  std::stop_token token = frame.stop_token();
                                  cv.wait(lock, token, [] { return false; });
                                  saw_stop = token.stop_requested();
                                  finished.count_down();
                                  return absl::CancelledError("stopped");
                                }),
              IsOk());
  // Warm up: an idle worker exists, so the handler starts well before its deadline.
  ASSERT_THAT(executor.Invoke(Frame(), "ok", "", {{"timeout_ms", 60000}}), IsOk());
  auto result = executor.Invoke(Frame(), "polite", "", {{"timeout_ms", 200}});
  EXPECT_EQ(result.status().code(), absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(WaitUntilSet(entered)) << "the worker did not start the handler before its deadline";
  finished.wait();
  EXPECT_TRUE(saw_stop.load());
  WaitForQuarantine(executor, 0);
}

TEST(FunctionExecutor, QuarantineBoundFailsFast) {
  AppContext app;
  FunctionExecutor executor(app, {.deadline_workers = 1, .max_quarantined = 1});
  std::latch started(1), release(1);
  ASSERT_THAT(executor.Register("hang", Hang(started, release)), IsOk());
  ASSERT_THAT(executor.Register("ok", Echo()), IsOk());
  // Warm up: an idle worker exists, so the handler starts well before its deadline.
  ASSERT_THAT(executor.Invoke(Frame(), "ok", "", {{"timeout_ms", 60000}}), IsOk());
  EXPECT_EQ(executor.Invoke(Frame(), "hang", "", {{"timeout_ms", 200}}).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  started.wait();
  ASSERT_EQ(executor.quarantined(), 1);
  EXPECT_EQ(executor.Invoke(Frame(), "ok", "x", {{"timeout_ms", 5000}}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*executor.Invoke(Frame(), "ok", "no deadline"), "no deadline");
  release.count_down();
  WaitForQuarantine(executor, 0);
  EXPECT_EQ(*executor.Invoke(Frame(), "ok", "again", {{"timeout_ms", 5000}}), "again");
}

TEST(FunctionExecutor, ParentCancellationEndsDeadlineCall) {
  AppContext app;
  FunctionExecutor executor(app);
  std::latch started(1);
  ASSERT_THAT(executor.Register("wait",
                                [&](const Frame& frame, std::string_view, Sink&) {
                                  started.count_down();
                                  std::mutex mu;
                                  std::condition_variable_any cv;
                                  std::unique_lock<std::mutex> lock(mu);
                                  cv.wait(lock, frame.stop_token(), [] { return false; });
                                  return absl::CancelledError("stopped");
                                }),
              IsOk());
  auto [parent, canceller] = Frame().WithCancel();
  std::thread cancel([&, c = canceller] {
    started.wait();
    c.Cancel();
  });
  auto result = executor.Invoke(parent, "wait", "", {{"timeout_ms", 60000}});
  cancel.join();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
}

class VectorSink final : public Sink {
 public:
  absl::Status Write(std::string_view chunk) override {
    std::lock_guard<std::mutex> lock(mu_);
    chunks_.emplace_back(chunk);
    if (first_) first_->count_down();
    first_ = nullptr;
    return absl::OkStatus();
  }
  std::vector<std::string> chunks() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_;
  }
  std::latch* first_ = nullptr;

 private:
  std::mutex mu_;
  std::vector<std::string> chunks_;
};

// Tests that the caller sees a chunk while the handler is still running, with and without a
// deadline.
TEST(FunctionExecutor, InvokeStreamDeliversChunksAsProduced) {
  AppContext app;
  FunctionExecutor executor(app);
  std::latch* first_seen = nullptr;
  ASSERT_THAT(executor.Register("stream",
                                [&](const Frame&, std::string_view, Sink& out) {
                                  FRAMEKIT_RETURN_IF_ERROR(out.Write("one"));
                                  first_seen->wait();  // the caller's sink has it already
                                  return out.Write("two");
                                }),
              IsOk());
  for (const Options& options : {Options{}, Options{{"timeout_ms", 5000}}}) {
    std::latch seen(1);
    first_seen = &seen;
    VectorSink sink;
    sink.first_ = &seen;
    ASSERT_THAT(executor.InvokeStream(Frame(), "stream", "", options, sink), IsOk());
    EXPECT_THAT(sink.chunks(), ElementsAre("one", "two"));
    EXPECT_EQ(executor.ListInvocations("stream")->front().output_bytes, 6u);
  }
}

TEST(FunctionExecutor, InvokeStreamLateWriteAfterDeadlineIsRefused) {
  AppContext app;
  FunctionExecutor executor(app);
  std::latch timed_out(1), wrote(1);
  std::atomic<bool> entered{false};
  absl::Status late;
  ASSERT_THAT(executor.Register("ok", Echo()), IsOk());
  ASSERT_THAT(executor.Register("slow",
                                [&](const Frame&, std::string_view, Sink& out) {
                                  entered = true;
                                  timed_out.wait();
                                  late = out.Write("late");
                                  wrote.count_down();
                                  return absl::OkStatus();  // shares no status with the test
                                }),
              IsOk());
  VectorSink sink;
  // Warm up: an idle worker exists, so the handler starts well before its deadline.
  ASSERT_THAT(executor.Invoke(Frame(), "ok", "", {{"timeout_ms", 60000}}), IsOk());
  EXPECT_EQ(executor.InvokeStream(Frame(), "slow", "", {{"timeout_ms", 200}}, sink).code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(WaitUntilSet(entered)) << "the worker did not start the handler before its deadline";
  timed_out.count_down();
  wrote.wait();
  EXPECT_EQ(late.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(sink.chunks().empty());
  WaitForQuarantine(executor, 0);
}

TEST(FunctionExecutor, ConcurrentHealthyCallsBesideHangsAndFaults) {
  TenantApp app;
  FunctionExecutor executor(app.app, {.deadline_workers = 4, .max_quarantined = 8});
  std::latch started(2), release(1);
  (void)started;
  ASSERT_THAT(executor.Register("hang", Hang(started, release)), IsOk());
  ASSERT_THAT(executor.Register("boom",
                                [](const Frame&, std::string_view, Sink&) -> absl::Status {
                                  throw std::logic_error("boom");
                                }),
              IsOk());
  ASSERT_THAT(executor.Register("tenant",
                                [](const Frame& frame, std::string_view, Sink& out) {
                                  const std::string* tenant = frame.Find(kTenant);
                                  return out.Write(tenant ? *tenant : "-");
                                }),
              IsOk());
  constexpr int kThreads = 4;
  constexpr int kCalls = 200;
  std::mutex failures_mu;
  std::vector<std::string> failures;  // "function: status", printed on failure
  auto fail = [&](const std::string& function, const absl::Status& status) {
    std::lock_guard<std::mutex> lock(failures_mu);
    failures.push_back(absl::StrCat(function, ": ", status.ToString()));
  };
  std::latch go(kThreads + 2);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      const absl::Status status =
          executor.Invoke(Frame(), "hang", "", {{"timeout_ms", 20}}).status();
      if (status.code() != absl::StatusCode::kDeadlineExceeded) fail("hang", status);
    });
  }
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      go.arrive_and_wait();
      const std::string tenant = absl::StrCat("t", t);
      for (int i = 0; i < kCalls; ++i) {
        Options options{{"tenant", tenant}};
        if (i % 2 == 0) options.Set("timeout_ms", std::int64_t{10000});
        auto result = executor.Invoke(Frame(), "tenant", "", options);
        if (!result.ok()) fail("tenant", result.status());
        if (result.ok() && *result != tenant) fail("tenant", absl::InternalError(*result));
        const absl::Status boom = executor.Invoke(Frame(), "boom", "", options).status();
        if (!IsExtensionPanic(boom)) fail("boom", boom);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(failures, ::testing::IsEmpty());
  // A hang call may have timed out while still queued, so its handler never started: release
  // without waiting for `started`.
  release.count_down();
  WaitForQuarantine(executor, 0);
  EXPECT_EQ(executor.Counters("tenant")->calls, static_cast<std::uint64_t>(kThreads * kCalls));
}

// Tests that a deadline call whose worker starts only after the deadline (a slow thread start,
// a loaded machine) ends DeadlineExceeded, never with the "handler ended its worker thread"
// Internal error: the worker skipping an expired call used to finish it as if the handler had
// called pthread_exit, and a caller that woke after that finish returned that status.
TEST(FunctionExecutor, ConcurrentDeadlineCallsStartingLateEndDeadlineExceeded) {
  TenantApp app;
  // Quarantine budgets large enough that an echo worker caught past its deadline never gets a
  // call refused: only OK and DeadlineExceeded are expected.
  FunctionExecutor executor(app.app, {.deadline_workers = 1,
                                      .max_quarantined = 64,
                                      .max_quarantined_per_function = 64,
                                      .max_in_flight_per_function = 64});
  ASSERT_THAT(executor.Register("echo", Echo()), IsOk());
  constexpr int kThreads = 6;
  constexpr int kCalls = 300;
  std::mutex mu;
  std::vector<std::string> unexpected;
  std::atomic<int> timeouts{0};
  std::latch go(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      go.arrive_and_wait();
      for (int i = 0; i < kCalls; ++i) {
        const absl::Status status =
            executor.Invoke(Frame(), "echo", "x", {{"timeout_ms", 1}}).status();
        if (status.code() == absl::StatusCode::kDeadlineExceeded) {
          ++timeouts;
        } else if (!status.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          unexpected.push_back(status.ToString());
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_THAT(unexpected, ::testing::IsEmpty());
  const absl::StatusOr<FunctionCounters> counters = executor.Counters("echo");
  ASSERT_THAT(counters, IsOk());
  // Every DeadlineExceeded a caller saw is counted as a timeout, however the call expired.
  EXPECT_EQ(counters->timeouts, static_cast<std::uint64_t>(timeouts.load()));
}

// Preemptive code: spins until its frame is cancelled (deadline or stop) and reports the thread
// it ran on and some RunStats.
class SpinUntilCancelled final : public Code {
 public:
  bool preemptive() const override { return true; }
  absl::Status Run(const Frame& frame, std::string_view, Sink& out, RunStats& stats) override {
    thread.store(std::this_thread::get_id());
    entered.store(true);
    stats.host_calls = 7;
    stats.peak_memory_bytes = 1234;
    FRAMEKIT_RETURN_IF_ERROR(out.Write("partial"));
    while (!frame.cancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (frame.stop_token().stop_requested()) return absl::CancelledError("spin: cancelled");
    return absl::DeadlineExceededError("spin: deadline");
  }
  std::atomic<std::thread::id> thread{};
  std::atomic<bool> entered{false};
};

// Tests that preemptive code runs on the caller's thread even with a deadline: nothing is
// quarantined, the timeout is counted, and the record carries the code's RunStats.
TEST(FunctionExecutor, PreemptiveCodeRunsOnTheCallersThread) {
  TenantApp app;
  FunctionExecutor executor(app.app, {.max_quarantined = 0, .max_quarantined_per_function = 0});
  auto spin = std::make_shared<SpinUntilCancelled>();
  ASSERT_THAT(executor.Register("spin", spin), IsOk());
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(executor.Invoke(Frame(), "spin", "", {{"timeout_ms", 20}, {"tenant", "acme"}}),
                StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("spin: deadline")));
    EXPECT_EQ(spin->thread.load(), std::this_thread::get_id());
    EXPECT_EQ(executor.quarantined(), 0);
  }
  const absl::StatusOr<FunctionCounters> counters = executor.Counters("spin");
  ASSERT_THAT(counters, IsOk());
  EXPECT_EQ(counters->timeouts, 3u);
  EXPECT_EQ(counters->refusals, 0u);
  EXPECT_EQ(counters->in_flight, 0);
  const absl::StatusOr<std::vector<InvocationRecord>> records = executor.ListInvocations("spin");
  ASSERT_THAT(records, IsOk());
  ASSERT_EQ(records->size(), 3u);
  EXPECT_EQ(records->front().stats.host_calls, 7u);
  EXPECT_EQ(records->front().stats.peak_memory_bytes, 1234u);
  EXPECT_EQ(records->front().output_bytes, std::string_view("partial").size());
  // A native handler's record reports no RunStats.
  ASSERT_THAT(executor.Register("echo", Echo()), IsOk());
  ASSERT_THAT(executor.Invoke(Frame(), "echo", "x", {{"timeout_ms", 1000}}), IsOk());
  EXPECT_EQ(executor.ListInvocations("echo")->front().stats.host_calls, 0u);
}

// Tests that Shutdown cancels a preemptive call running on its caller's thread.
TEST(FunctionExecutor, ShutdownCancelsPreemptiveCalls) {
  TenantApp app;
  FunctionExecutor executor(app.app);
  auto spin = std::make_shared<SpinUntilCancelled>();
  ASSERT_THAT(executor.Register("spin", spin), IsOk());
  absl::Status status;
  std::thread caller([&] { status = executor.Invoke(Frame(), "spin", "").status(); });
  while (!spin->entered.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_THAT(executor.Shutdown(std::chrono::seconds(10)), IsOk());
  caller.join();
  EXPECT_THAT(status, StatusIs(absl::StatusCode::kCancelled, HasSubstr("spin: cancelled")));
}

}  // namespace
}  // namespace framekit::dispatch
