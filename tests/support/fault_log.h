// Test support for the fault-handling suites: a manual clock and a log sink that keeps every
// record.
#ifndef FRAMEKIT_TESTS_SUPPORT_FAULT_LOG_H_
#define FRAMEKIT_TESTS_SUPPORT_FAULT_LOG_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/fault_policy.h"
#include "spdlog/logger.h"
#include "spdlog/sinks/base_sink.h"

namespace framekit::testing {

struct Record {
  spdlog::level::level_enum level;
  std::string text;
};

// Keeps the payload of every record it receives.
class CollectingSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::vector<Record> records() {
    std::lock_guard<std::mutex> lock(mutex_);
    return records_;
  }
  // Records whose text starts with `prefix`.
  std::vector<std::string> WithPrefix(const std::string& prefix) {
    std::vector<std::string> out;
    for (const Record& r : records()) {
      if (r.text.rfind(prefix, 0) == 0) out.push_back(r.text);
    }
    return out;
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    records_.push_back({msg.level, std::string(msg.payload.data(), msg.payload.size())});
  }
  void flush_() override {}

 private:
  std::vector<Record> records_;
};

inline std::shared_ptr<spdlog::logger> MakeLogger(std::shared_ptr<CollectingSink> sink) {
  auto logger = std::make_shared<spdlog::logger>("test", std::move(sink));
  logger->set_level(spdlog::level::trace);
  return logger;
}

inline dispatch::FaultMonitorOptions LoggerOptions(std::shared_ptr<CollectingSink> sink) {
  dispatch::FaultMonitorOptions options;
  options.logger = MakeLogger(std::move(sink));
  return options;
}

// A clock that moves only when told to.
class ManualClock {
 public:
  dispatch::FaultClock AsFaultClock() {
    return [this] {
      return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns_.load()));
    };
  }
  void Set(std::chrono::nanoseconds t) { ns_.store(t.count()); }
  void Advance(std::chrono::nanoseconds d) { ns_.fetch_add(d.count()); }

 private:
  std::atomic<std::int64_t> ns_{std::chrono::nanoseconds(std::chrono::hours(1)).count()};
};

}  // namespace framekit::testing

#endif  // FRAMEKIT_TESTS_SUPPORT_FAULT_LOG_H_
