#include "framekit/dispatch/fault_policy.h"

#include <chrono>

#include "gtest/gtest.h"

namespace framekit::dispatch {
namespace {

using std::chrono::seconds;
using TimePoint = std::chrono::steady_clock::time_point;

TimePoint At(int s) { return TimePoint(seconds(100 + s)); }

TEST(FaultIntensity, TripsAtKFaultsWithinWindowOncePerEpisode) {
  FaultIntensity intensity({3, seconds(10), FaultVerdict::kEvict});
  EXPECT_EQ(intensity.Record(At(0)).verdict, FaultVerdict::kContinue);
  EXPECT_EQ(intensity.Record(At(1)).verdict, FaultVerdict::kContinue);
  const FaultIntensity::Outcome third = intensity.Record(At(2));
  EXPECT_EQ(third.verdict, FaultVerdict::kEvict);
  EXPECT_TRUE(third.episode_started);
  EXPECT_EQ(third.faults_in_window, 3);
  const FaultIntensity::Outcome fourth = intensity.Record(At(3));
  EXPECT_EQ(fourth.verdict, FaultVerdict::kEvict);
  EXPECT_FALSE(fourth.episode_started);
}

TEST(FaultIntensity, FaultsOutsideTheWindowDoNotCount) {
  FaultIntensity intensity({3, seconds(10), FaultVerdict::kAlarm});
  intensity.Record(At(0));
  intensity.Record(At(5));
  // The first fault has left the window: two within it.
  const FaultIntensity::Outcome outcome = intensity.Record(At(12));
  EXPECT_EQ(outcome.verdict, FaultVerdict::kContinue);
  EXPECT_EQ(outcome.faults_in_window, 2);
}

TEST(FaultIntensity, NewEpisodeAfterTheWindowDrains) {
  FaultIntensity intensity({2, seconds(10), FaultVerdict::kAlarm});
  intensity.Record(At(0));
  EXPECT_TRUE(intensity.Record(At(1)).episode_started);
  EXPECT_FALSE(intensity.Record(At(2)).episode_started);
  EXPECT_EQ(intensity.Record(At(30)).verdict, FaultVerdict::kContinue);
  EXPECT_FALSE(intensity.in_episode());
  EXPECT_TRUE(intensity.Record(At(31)).episode_started);
}

TEST(FaultIntensity, SingleFaultPolicyEndsEpisodeAfterQuietWindow) {
  FaultIntensity intensity({1, seconds(10), FaultVerdict::kEvict});
  EXPECT_TRUE(intensity.Record(At(0)).episode_started);
  EXPECT_FALSE(intensity.Record(At(5)).episode_started);
  EXPECT_TRUE(intensity.Record(At(20)).episode_started);
}

TEST(FaultIntensity, NonPositiveLimitNeverTrips) {
  FaultIntensity intensity({0, seconds(10), FaultVerdict::kEvict});
  for (int i = 0; i < 100; ++i) EXPECT_EQ(intensity.Record(At(0)).verdict, FaultVerdict::kContinue);
}

TEST(FaultIntensity, ResetForgetsFaults) {
  FaultIntensity intensity({2, seconds(10), FaultVerdict::kAlarm});
  intensity.Record(At(0));
  intensity.Reset();
  EXPECT_EQ(intensity.Record(At(1)).verdict, FaultVerdict::kContinue);
}

}  // namespace
}  // namespace framekit::dispatch
