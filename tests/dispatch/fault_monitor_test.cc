#include "framekit/dispatch/fault_monitor.h"

#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/guard.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/fault_log.h"

namespace framekit::dispatch {
namespace {

using ::framekit::testing::CollectingSink;
using ::framekit::testing::LoggerOptions;
using ::framekit::testing::ManualClock;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

ExtensionPanic Panic(std::string extension, Phase phase, std::string message = "boom") {
  ExtensionPanic panic;
  panic.extension = std::move(extension);
  panic.phase = phase;
  panic.type = "std::runtime_error";
  panic.message = std::move(message);
  panic.stack = "#0 0x1 Frame()\n";
  return panic;
}

// The N of a "suppressed=N" summary record.
std::uint64_t SuppressedOf(const std::string& record) {
  const std::size_t at = record.find("suppressed=");
  const std::size_t end = record.find(' ', at);
  std::uint64_t n = 0;
  EXPECT_TRUE(absl::SimpleAtoi(record.substr(at + 11, end - at - 11), &n)) << record;
  return n;
}

class FaultMonitorTest : public ::testing::Test {
 protected:
  FaultMonitorOptions Options() {
    FaultMonitorOptions options = LoggerOptions(sink_);
    options.clock = clock_.AsFaultClock();
    options.policy.max_faults = 0;  // no alarms unless a test asks
    return options;
  }

  std::shared_ptr<CollectingSink> sink_ = std::make_shared<CollectingSink>();
  ManualClock clock_;
};

TEST_F(FaultMonitorTest, RecordCarriesEveryField) {
  FaultMonitor monitor(Options());
  ExtensionPanic panic = Panic("billing", Phase::kPoll, "line one\nline \"two\"");
  panic.nested = {"std::logic_error: inner"};
  monitor.Report(panic, "detail text");
  const std::vector<::framekit::testing::Record> records = sink_->records();
  ASSERT_EQ(records.size(), 1u);
  EXPECT_EQ(records[0].level, spdlog::level::err);
  EXPECT_EQ(records[0].text,
            "fault extension=\"billing\" phase=\"poll\" type=\"std::runtime_error\" "
            "message=\"line one\\nline \\\"two\\\"\" detail=\"detail text\" "
            "nested=[\"std::logic_error: inner\"] count=1 stack=\"#0 0x1 Frame()\\n\"");
}

// Tests the scenario: a thousand faults a second for ten seconds give about one full
// record a second plus "suppressed N" summaries, while the counter is exact.
TEST_F(FaultMonitorTest, RateLimitsRecordsAndKeepsCountersExact) {
  FaultMonitor monitor(Options());
  for (int s = 0; s < 10; ++s) {
    for (int i = 0; i < 1000; ++i) {
      monitor.Report(Panic("hot", Phase::kPoll));
      clock_.Advance(milliseconds(1));
    }
  }
  monitor.FlushSuppressed();
  EXPECT_EQ(monitor.faults("hot", Phase::kPoll), 10000u);
  EXPECT_EQ(sink_->WithPrefix("fault extension=").size(), 10u);
  const std::vector<std::string> summaries = sink_->WithPrefix("fault records suppressed");
  EXPECT_EQ(summaries.size(), 10u);
  std::uint64_t suppressed = 0;
  for (const std::string& s : summaries) suppressed += SuppressedOf(s);
  EXPECT_EQ(suppressed, 9990u);
  EXPECT_THAT(monitor.Counters(), ElementsAre(FaultCounter{"hot", Phase::kPoll, 10000, 9990}));
}

TEST_F(FaultMonitorTest, SummaryPrecedesTheNextFullRecord) {
  FaultMonitor monitor(Options());
  monitor.Report(Panic("e", Phase::kSetup));
  monitor.Report(Panic("e", Phase::kSetup));
  monitor.Report(Panic("e", Phase::kSetup));
  clock_.Advance(seconds(1));
  monitor.Report(Panic("e", Phase::kSetup));
  const std::vector<::framekit::testing::Record> records = sink_->records();
  ASSERT_EQ(records.size(), 3u);
  EXPECT_THAT(records[0].text, HasSubstr("count=1"));
  EXPECT_THAT(records[1].text,
              HasSubstr("fault records suppressed extension=\"e\" phase=\"setup\" suppressed=2"));
  EXPECT_EQ(records[1].level, spdlog::level::warn);
  EXPECT_THAT(records[2].text, HasSubstr("count=4"));
}

TEST_F(FaultMonitorTest, RateLimitIsPerExtensionAndPhase) {
  FaultMonitor monitor(Options());
  monitor.Report(Panic("a", Phase::kPoll));
  monitor.Report(Panic("a", Phase::kHost));
  monitor.Report(Panic("b", Phase::kPoll));
  monitor.Report(Panic("a", Phase::kPoll));
  EXPECT_EQ(sink_->WithPrefix("fault extension=").size(), 3u);
  EXPECT_EQ(monitor.faults("a", Phase::kPoll), 2u);
  EXPECT_EQ(monitor.faults("a", Phase::kHost), 1u);
  EXPECT_EQ(monitor.faults("b", Phase::kPoll), 1u);
  EXPECT_EQ(monitor.faults("c", Phase::kPoll), 0u);
}

TEST_F(FaultMonitorTest, RendersPrometheusText) {
  FaultMonitor monitor(Options());
  monitor.Report(Panic("b\"x", Phase::kHost));
  monitor.Report(Panic("a", Phase::kPoll));
  monitor.Report(Panic("a", Phase::kPoll));
  EXPECT_EQ(monitor.RenderPrometheus(),
            "# HELP framekit_faults_total Exceptions thrown by extension code, by phase.\n"
            "# TYPE framekit_faults_total counter\n"
            "framekit_faults_total{extension=\"a\",phase=\"poll\"} 2\n"
            "framekit_faults_total{extension=\"b\\\"x\",phase=\"host\"} 1\n"
            "# HELP framekit_fault_records_suppressed_total Fault log records held back by the "
            "rate limit.\n"
            "# TYPE framekit_fault_records_suppressed_total counter\n"
            "framekit_fault_records_suppressed_total{extension=\"a\",phase=\"poll\"} 1\n"
            "framekit_fault_records_suppressed_total{extension=\"b\\\"x\",phase=\"host\"} 0\n"
            "# HELP framekit_fault_alarms_total Fault-intensity alarms raised.\n"
            "# TYPE framekit_fault_alarms_total counter\n"
            "framekit_fault_alarms_total{extension=\"a\"} 0\n"
            "framekit_fault_alarms_total{extension=\"b\\\"x\"} 0\n");
}

TEST_F(FaultMonitorTest, AlarmsOncePerEpisode) {
  std::vector<FaultAlarm> alarms;
  FaultMonitorOptions options = Options();
  options.policy = {3, seconds(10), FaultVerdict::kEvict};
  options.on_alarm = [&](const FaultAlarm& alarm) { alarms.push_back(alarm); };
  FaultMonitor monitor(std::move(options));
  EXPECT_EQ(monitor.Report(Panic("x", Phase::kPoll)), FaultVerdict::kContinue);
  EXPECT_EQ(monitor.Report(Panic("x", Phase::kSetup)), FaultVerdict::kContinue);
  EXPECT_EQ(monitor.Report(Panic("x", Phase::kPoll, "third")), FaultVerdict::kEvict);
  EXPECT_EQ(monitor.Report(Panic("x", Phase::kPoll)), FaultVerdict::kEvict);
  ASSERT_EQ(alarms.size(), 1u);
  EXPECT_EQ(alarms[0].extension, "x");
  EXPECT_EQ(alarms[0].faults, 3);
  EXPECT_EQ(alarms[0].verdict, FaultVerdict::kEvict);
  EXPECT_EQ(alarms[0].last.message, "third");
  EXPECT_THAT(sink_->WithPrefix("fault alarm"),
              ElementsAre(HasSubstr("extension=\"x\" faults=3 window_ms=10000 verdict=\"evict\"")));

  clock_.Advance(seconds(30));  // the episode ends
  EXPECT_EQ(monitor.Report(Panic("x", Phase::kPoll)), FaultVerdict::kContinue);
  monitor.Report(Panic("x", Phase::kPoll));
  monitor.Report(Panic("x", Phase::kPoll));
  EXPECT_EQ(alarms.size(), 2u);
  EXPECT_EQ(monitor.alarms("x"), 2u);
  EXPECT_EQ(monitor.alarms("y"), 0u);
}

// Tests that the alarm callback runs without the monitor's lock (it may read the monitor) and
// that a callback that throws is contained.
TEST_F(FaultMonitorTest, AlarmCallbackMayReenterAndMayThrow) {
  FaultMonitor* self = nullptr;
  std::uint64_t seen = 0;
  FaultMonitorOptions options = Options();
  options.policy = {1, seconds(10), FaultVerdict::kAlarm};
  options.on_alarm = [&](const FaultAlarm& alarm) {
    if (alarm.extension != "x") return;
    seen = self->faults("x", Phase::kPoll);
    self->Report(Panic("from-callback", Phase::kHost));
    throw std::runtime_error("callback broke");
  };
  FaultMonitor monitor(std::move(options));
  self = &monitor;
  EXPECT_EQ(monitor.Report(Panic("x", Phase::kPoll)), FaultVerdict::kAlarm);
  EXPECT_EQ(seen, 1u);
  EXPECT_EQ(monitor.faults("from-callback", Phase::kHost), 1u);
  EXPECT_THAT(sink_->WithPrefix("fault alarm callback threw"),
              ElementsAre(HasSubstr("callback broke")));
}

TEST_F(FaultMonitorTest, UsesTheApplicationsLogger) {
  FaultMonitor monitor(Options());
  CallPoll({"app", monitor}, []() -> std::optional<int> { throw std::runtime_error("x"); });
  EXPECT_EQ(sink_->WithPrefix("fault extension=\"app\"").size(), 1u);
  EXPECT_EQ(monitor.logger().get() != nullptr, true);
}

TEST_F(FaultMonitorTest, ConcurrentReportsCountExactly) {
  FaultMonitor monitor(Options());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        CallPoll({"shared", monitor}, []() -> std::optional<int> { throw 1; });
        (void)monitor.Counters();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  monitor.FlushSuppressed();
  EXPECT_EQ(monitor.faults("shared", Phase::kPoll), kThreads * kPerThread);
  // The clock never moved: one full record, the rest suppressed and summed up.
  EXPECT_EQ(sink_->WithPrefix("fault extension=").size(), 1u);
  const auto summaries = sink_->WithPrefix("fault records suppressed");
  ASSERT_EQ(summaries.size(), 1u);
  EXPECT_EQ(SuppressedOf(summaries[0]), kThreads * kPerThread - 1u);
}

// Tests that a monitor with no logger never writes to stdout, which belongs to the host.
TEST(FaultMonitor, DefaultRecordsStayOffStdout) {
  FaultMonitor monitor;
  ::testing::internal::CaptureStdout();
  monitor.Report(Panic("noisy", Phase::kPoll));
  monitor.Report(Panic("noisy", Phase::kPoll));
  monitor.FlushSuppressed();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(out, "");
  EXPECT_EQ(monitor.faults("noisy", Phase::kPoll), 2u);
}

// Tests that the table of extensions is bounded: quiet (least recently faulted) entries go first.
TEST(FaultMonitor, ExtensionTableIsBounded) {
  auto sink = std::make_shared<CollectingSink>();
  FaultMonitorOptions options = LoggerOptions(sink);
  ManualClock clock;
  options.clock = clock.AsFaultClock();
  options.max_extensions = 8;
  FaultMonitor monitor(std::move(options));
  for (int i = 0; i < 1000; ++i) {
    monitor.Report(Panic(absl::StrCat("ext", i), Phase::kInvoke));
    clock.Advance(milliseconds(1));
  }
  EXPECT_EQ(monitor.extension_count(), 8u);
  EXPECT_EQ(monitor.evicted(), 992u);
  EXPECT_EQ(monitor.faults("ext999", Phase::kInvoke), 1u);
  EXPECT_EQ(monitor.faults("ext0", Phase::kInvoke), 0u);
}

// Tests that the least recently faulted entry is evicted, not the oldest inserted.
TEST(FaultMonitor, EvictsLeastRecentlyFaulted) {
  auto sink = std::make_shared<CollectingSink>();
  FaultMonitorOptions options = LoggerOptions(sink);
  ManualClock clock;
  options.clock = clock.AsFaultClock();
  options.max_extensions = 2;
  FaultMonitor monitor(std::move(options));
  monitor.Report(Panic("a", Phase::kInvoke));
  clock.Advance(milliseconds(1));
  monitor.Report(Panic("b", Phase::kInvoke));
  clock.Advance(milliseconds(1));
  monitor.Report(Panic("a", Phase::kInvoke));  // a is the busy one now
  clock.Advance(milliseconds(1));
  monitor.Report(Panic("c", Phase::kInvoke));
  EXPECT_EQ(monitor.faults("a", Phase::kInvoke), 2u);
  EXPECT_EQ(monitor.faults("b", Phase::kInvoke), 0u);
  EXPECT_EQ(monitor.faults("c", Phase::kInvoke), 1u);
}

TEST(FaultMonitor, ForgetDropsNameAndItsVersions) {
  auto sink = std::make_shared<CollectingSink>();
  FaultMonitor monitor(LoggerOptions(sink));
  monitor.Report(Panic("fn@v1", Phase::kInvoke));
  monitor.Report(Panic("fn", Phase::kSetup));
  monitor.Report(Panic("fnx@v1", Phase::kInvoke));
  EXPECT_EQ(monitor.extension_count(), 3u);
  EXPECT_TRUE(monitor.Forget("fn"));
  EXPECT_EQ(monitor.extension_count(), 1u);
  EXPECT_EQ(monitor.faults("fnx@v1", Phase::kInvoke), 1u);
  EXPECT_FALSE(monitor.Forget("fn"));
}

// Tests that each deploy of a faulting function replaces its previous version's entry.
TEST(FaultMonitor, NewVersionReplacesOldVersionEntry) {
  auto sink = std::make_shared<CollectingSink>();
  FaultMonitor monitor(LoggerOptions(sink));
  for (int v = 1; v <= 100; ++v) {
    monitor.Report(Panic(absl::StrCat("fn@v", v), Phase::kInvoke));
  }
  EXPECT_EQ(monitor.extension_count(), 1u);
  EXPECT_EQ(monitor.faults("fn@v100", Phase::kInvoke), 1u);
}

// Tests that many threads reporting fresh names stay within the bound.
TEST(FaultMonitor, ConcurrentReportsOfFreshNamesStayBounded) {
  auto sink = std::make_shared<CollectingSink>();
  FaultMonitorOptions options = LoggerOptions(sink);
  options.max_extensions = 16;
  options.record_interval = std::chrono::hours(1);
  FaultMonitor monitor(std::move(options));
  std::latch go(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      go.arrive_and_wait();
      for (int i = 0; i < 2000; ++i) {
        monitor.Report(Panic(absl::StrCat("t", t, "-", i), Phase::kInvoke));
        if (i % 7 == 0) monitor.Forget(absl::StrCat("t", t, "-", i));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_LE(monitor.extension_count(), 16u);
}

}  // namespace
}  // namespace framekit::dispatch
