#include "framekit/dispatch/fault_monitor.h"

#include <algorithm>
#include <exception>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"
#include "framekit/dispatch/internal/log_format.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace framekit::dispatch_internal {
struct FaultSummary {
  std::string extension;
  Phase phase;
  std::uint64_t suppressed;
  std::chrono::nanoseconds over;
};
// What Report does once the lock is released: the records to write and the alarm to raise.
struct FaultRecordPlan {
  std::optional<FaultSummary> summary;
  std::vector<FaultSummary> evicted_summaries;
  bool write_record = false;
  std::uint64_t count = 0;
  std::optional<dispatch::FaultAlarm> alarm;
  dispatch::FaultVerdict verdict = dispatch::FaultVerdict::kContinue;
};
}  // namespace framekit::dispatch_internal

namespace framekit::dispatch {

using base_internal::AsAbsl;
namespace {

using dispatch_internal::Quote;
using Summary = dispatch_internal::FaultSummary;

// "fn@v3" -> "fn"; a name without "@" is its own base.
std::string_view BaseName(std::string_view name) {
  const std::size_t at = name.find('@');
  return at == std::string_view::npos ? name : name.substr(0, at);
}

std::shared_ptr<spdlog::logger> StderrLogger() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto log = std::make_shared<spdlog::logger>("framekit",
                                                std::make_shared<spdlog::sinks::stderr_sink_mt>());
    return log;
  }();
  return logger;
}

std::size_t PhaseIndex(Phase phase) { return static_cast<std::size_t>(phase); }

// Every Phase in enum order, derived from the enum (see kPhaseCount).
constexpr std::array<Phase, kPhaseCount> kAllPhases = [] {
  std::array<Phase, kPhaseCount> phases{};
  for (std::size_t i = 0; i < kPhaseCount; ++i) phases[i] = static_cast<Phase>(i);
  return phases;
}();

std::int64_t Millis(std::chrono::nanoseconds d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

std::string SummaryText(const Summary& s) {
  return absl::StrCat("fault records suppressed extension=", Quote(s.extension),
                      " phase=", Quote(PhaseName(s.phase)), " suppressed=", s.suppressed,
                      " over_ms=", Millis(s.over));
}

std::string FaultText(const ExtensionPanic& panic, std::string_view detail, std::uint64_t count) {
  std::string text = absl::StrCat("fault extension=", Quote(panic.extension),
                                  " phase=", Quote(PhaseName(panic.phase)),
                                  " type=", Quote(panic.type), " message=", Quote(panic.message));
  if (!detail.empty()) absl::StrAppend(&text, " detail=", Quote(detail));
  absl::StrAppend(&text, " nested=[");
  for (std::size_t i = 0; i < panic.nested.size(); ++i) {
    absl::StrAppend(&text, i == 0 ? "" : ", ", Quote(panic.nested[i]));
  }
  absl::StrAppend(&text, "] count=", count, " stack=", Quote(panic.stack));
  return text;
}

std::string AlarmText(const FaultAlarm& alarm) {
  const std::string_view verdict = FaultVerdictName(alarm.verdict);
  return absl::StrCat("fault alarm extension=", Quote(alarm.extension), " faults=", alarm.faults,
                      " window_ms=", Millis(alarm.window), " verdict=", Quote(verdict),
                      " last_phase=", Quote(PhaseName(alarm.last.phase)),
                      " last_type=", Quote(alarm.last.type),
                      " last_message=", Quote(alarm.last.message));
}

void AppendPrometheusLabel(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

}  // namespace

FaultMonitor::FaultMonitor(FaultMonitorOptions options) : options_(std::move(options)) {}

std::shared_ptr<spdlog::logger> FaultMonitor::logger() const {
  return options_.logger != nullptr ? options_.logger : StderrLogger();
}

void FaultMonitor::EraseLocked(const std::string& name, std::chrono::steady_clock::time_point now,
                               std::vector<Summary>& summaries) {
  const auto it = extensions_.find(name);
  if (it == extensions_.end()) return;
  for (Phase phase : kAllPhases) {
    const PhaseState& state = it->second.phases[PhaseIndex(phase)];
    if (state.suppressed_pending > 0) {
      summaries.push_back({name, phase, state.suppressed_pending, now - state.pending_since});
    }
  }
  extensions_.erase(it);
}

FaultMonitor::ExtensionState& FaultMonitor::EntryLocked(const std::string& name,
                                                        std::chrono::steady_clock::time_point now,
                                                        std::vector<Summary>& summaries) {
  if (const auto it = extensions_.find(name); it != extensions_.end()) return it->second;
  // A new version of a function replaces the entries of its older versions.
  const std::string_view base = BaseName(name);
  if (base.size() != name.size()) {
    std::vector<std::string> older;
    for (const auto& [other, ext] : extensions_) {
      if (other.size() > base.size() && BaseName(other) == base) older.push_back(other);
    }
    for (const std::string& other : older) EraseLocked(other, now, summaries);
    evicted_ += older.size();
  }
  const std::size_t capacity = std::max<std::size_t>(1, options_.max_extensions);
  while (extensions_.size() >= capacity) {
    auto quietest = extensions_.begin();
    for (auto it = extensions_.begin(); it != extensions_.end(); ++it) {
      if (it->second.last_fault < quietest->second.last_fault) quietest = it;
    }
    const std::string victim = quietest->first;
    EraseLocked(victim, now, summaries);
    ++evicted_;
  }
  ExtensionState& ext = extensions_[name];
  ext.intensity = FaultIntensity(options_.policy);
  return ext;
}

void FaultMonitor::WriteSummaries(const std::vector<Summary>& summaries) const noexcept {
  try {
    if (summaries.empty()) return;
    const std::shared_ptr<spdlog::logger> log = logger();
    if (log == nullptr) return;
    for (const Summary& s : summaries) log->warn("{}", SummaryText(s));
  } catch (...) {
  }
}

bool FaultMonitor::Forget(std::string_view extension) {
  const auto now = FaultNow(options_.clock);
  std::vector<Summary> summaries;
  bool dropped = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::string> names;
    for (const auto& [name, ext] : extensions_) {
      if (name == extension ||
          (extension.find('@') == std::string_view::npos && BaseName(name) == extension)) {
        names.push_back(name);
      }
    }
    for (const std::string& name : names) EraseLocked(name, now, summaries);
    dropped = !names.empty();
  }
  WriteSummaries(summaries);
  return dropped;
}

std::size_t FaultMonitor::extension_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return extensions_.size();
}

std::uint64_t FaultMonitor::evicted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return evicted_;
}

std::uint64_t FaultMonitor::total_faults() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_faults_;
}

// The counting, rate limiting and fault-policy step of Report, under mu_. Logging and the
// alarm callback happen after it, with no lock held.
dispatch_internal::FaultRecordPlan FaultMonitor::RecordFault(
    const ExtensionPanic& panic, std::chrono::steady_clock::time_point now) {
  dispatch_internal::FaultRecordPlan plan;
  std::lock_guard<std::mutex> lock(mu_);
  ExtensionState& ext = EntryLocked(panic.extension, now, plan.evicted_summaries);
  ext.last_fault = now;
  PhaseState& state = ext.phases[PhaseIndex(panic.phase)];
  plan.count = ++state.faults;
  ++total_faults_;
  if (!state.has_record || now - state.last_record >= options_.record_interval) {
    if (state.suppressed_pending > 0) {
      plan.summary = Summary{panic.extension, panic.phase, state.suppressed_pending,
                             now - state.pending_since};
      state.suppressed_pending = 0;
    }
    state.has_record = true;
    state.last_record = now;
    plan.write_record = true;
  } else {
    if (state.suppressed_pending == 0) state.pending_since = now;
    ++state.suppressed_pending;
    ++state.suppressed_total;
  }
  const FaultIntensity::Outcome outcome = ext.intensity.Record(now);
  plan.verdict = outcome.verdict;
  if (outcome.episode_started) {
    ++ext.alarms;
    plan.alarm = FaultAlarm{panic.extension, outcome.faults_in_window, options_.policy.window,
                            outcome.verdict, panic};
  }
  return plan;
}

FaultVerdict FaultMonitor::Report(const ExtensionPanic& panic, std::string_view detail) noexcept {
  try {
    const auto now = FaultNow(options_.clock);
    const dispatch_internal::FaultRecordPlan plan = RecordFault(panic, now);
    WriteSummaries(plan.evicted_summaries);
    const std::shared_ptr<spdlog::logger> log = logger();
    if (log != nullptr) {
      if (plan.summary.has_value()) log->warn("{}", SummaryText(*plan.summary));
      if (plan.write_record) log->error("{}", FaultText(panic, detail, plan.count));
      if (plan.alarm.has_value()) log->error("{}", AlarmText(*plan.alarm));
    }
    if (plan.alarm.has_value() && options_.on_alarm) {
      try {
        options_.on_alarm(*plan.alarm);
      } catch (...) {
        RethrowIfForcedUnwind();
        const ExtensionPanic thrown = DescribeCurrentException("fault alarm callback", panic.phase);
        if (log != nullptr) {
          log->error("fault alarm callback threw type={} message={}", Quote(thrown.type),
                     Quote(thrown.message));
        }
      }
    }
    return plan.verdict;
  } catch (...) {
    // The panic.h rule: thread cancellation is never swallowed. Report() is noexcept, so a
    // rethrown cancellation ends in std::terminate; swallowing it would abort the process
    // anyway ("exception not rethrown"), so the rethrow only makes the cause explicit.
    RethrowIfForcedUnwind();
    // Out of memory while bookkeeping: the fault is still isolated, only its record is lost.
    return FaultVerdict::kContinue;
  }
}

void FaultMonitor::FlushSuppressed() noexcept {
  try {
    const auto now = FaultNow(options_.clock);
    std::vector<Summary> summaries;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [name, ext] : extensions_) {
        for (Phase phase : kAllPhases) {
          PhaseState& state = ext.phases[PhaseIndex(phase)];
          if (state.suppressed_pending == 0) continue;
          summaries.push_back({name, phase, state.suppressed_pending, now - state.pending_since});
          state.suppressed_pending = 0;
        }
      }
    }
    std::sort(summaries.begin(), summaries.end(), [](const Summary& a, const Summary& b) {
      return std::tie(a.extension, a.phase) < std::tie(b.extension, b.phase);
    });
    const std::shared_ptr<spdlog::logger> log = logger();
    if (log == nullptr) return;
    for (const Summary& s : summaries) log->warn("{}", SummaryText(s));
  } catch (...) {
    // As in Report(): cancellation is rethrown (and, this being noexcept, terminates); any
    // other failure only loses the summaries' log lines.
    RethrowIfForcedUnwind();
  }
}

std::vector<FaultCounter> FaultMonitor::Counters() const {
  std::vector<FaultCounter> out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, ext] : extensions_) {
      for (Phase phase : kAllPhases) {
        const PhaseState& state = ext.phases[PhaseIndex(phase)];
        if (state.faults == 0) continue;
        out.push_back({name, phase, state.faults, state.suppressed_total});
      }
    }
  }
  std::sort(out.begin(), out.end(), [](const FaultCounter& a, const FaultCounter& b) {
    return std::tie(a.extension, a.phase) < std::tie(b.extension, b.phase);
  });
  return out;
}

std::uint64_t FaultMonitor::faults(std::string_view extension, Phase phase) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = extensions_.find(AsAbsl(extension));
  return it == extensions_.end() ? 0 : it->second.phases[PhaseIndex(phase)].faults;
}

std::uint64_t FaultMonitor::alarms(std::string_view extension) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = extensions_.find(AsAbsl(extension));
  return it == extensions_.end() ? 0 : it->second.alarms;
}

std::string FaultMonitor::RenderPrometheus() const {
  const std::vector<FaultCounter> counters = Counters();
  std::vector<std::pair<std::string, std::uint64_t>> alarm_counts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [name, ext] : extensions_) alarm_counts.emplace_back(name, ext.alarms);
  }
  std::sort(alarm_counts.begin(), alarm_counts.end());

  std::string out;
  const auto per_phase = [&](std::string_view metric, std::string_view help, auto value) {
    absl::StrAppend(&out, "# HELP ", AsAbsl(metric), " ", AsAbsl(help), "\n# TYPE ", AsAbsl(metric),
                    " counter\n");
    for (const FaultCounter& c : counters) {
      out.append(metric);
      out += "{extension=\"";
      AppendPrometheusLabel(out, c.extension);
      out += "\",phase=\"";
      out.append(PhaseName(c.phase));
      absl::StrAppend(&out, "\"} ", value(c), "\n");
    }
  };
  per_phase("framekit_faults_total", "Exceptions thrown by extension code, by phase.",
            [](const FaultCounter& c) { return c.faults; });
  per_phase("framekit_fault_records_suppressed_total",
            "Fault log records held back by the rate limit.",
            [](const FaultCounter& c) { return c.records_suppressed; });
  out +=
      "# HELP framekit_fault_alarms_total Fault-intensity alarms raised.\n"
      "# TYPE framekit_fault_alarms_total counter\n";
  for (const auto& [name, alarms] : alarm_counts) {
    out += "framekit_fault_alarms_total{extension=\"";
    AppendPrometheusLabel(out, name);
    absl::StrAppend(&out, "\"} ", alarms, "\n");
  }
  return out;
}

FaultMonitor& DefaultFaultMonitor() {
  static FaultMonitor* const monitor = new FaultMonitor();
  return *monitor;
}

}  // namespace framekit::dispatch
