#include "framekit/dispatch/fault_policy.h"

#include <algorithm>

namespace framekit::dispatch {

std::string_view FaultVerdictName(FaultVerdict verdict) {
  switch (verdict) {
    case FaultVerdict::kContinue:
      return "continue";
    case FaultVerdict::kAlarm:
      return "alarm";
    case FaultVerdict::kEvict:
      return "evict";
  }
  return "unknown";
}

FaultIntensity::Outcome FaultIntensity::Record(std::chrono::steady_clock::time_point now) {
  Outcome outcome;
  if (policy_.max_faults <= 0) return outcome;
  if (!times_.empty()) {
    now = std::max(now, times_.back());
    // A quiet period as long as the window ends the episode even when K is 1.
    if (now - times_.back() >= policy_.window) in_episode_ = false;
  }
  times_.push_back(now);
  while (times_.size() > static_cast<std::size_t>(policy_.max_faults)) times_.pop_front();
  while (!times_.empty() && now - times_.front() >= policy_.window) times_.pop_front();
  if (times_.empty()) times_.push_back(now);  // a zero window still counts this fault
  outcome.faults_in_window = static_cast<int>(times_.size());
  if (outcome.faults_in_window >= policy_.max_faults) {
    outcome.verdict = policy_.on_trip;
    outcome.episode_started = !in_episode_;
    in_episode_ = true;
  } else {
    in_episode_ = false;
  }
  return outcome;
}

void FaultIntensity::Reset() {
  times_.clear();
  in_episode_ = false;
}

}  // namespace framekit::dispatch
