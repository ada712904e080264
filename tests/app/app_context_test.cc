#include "framekit/app/app_context.h"

#include <string>

#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {
namespace {

using ::framekit::testing::IsOk;

const Key<std::string> kRegion{"test.region"};
const Key<int> kWorkers{"test.workers"};

TEST(AppContext, SetThenGet) {
  AppContext app;
  ASSERT_THAT(app.Set(kRegion, "eu"), IsOk());
  ASSERT_NE(app.Get(kRegion), nullptr);
  EXPECT_EQ(*app.Get(kRegion), "eu");
  EXPECT_EQ(app.Get(kWorkers), nullptr);
  EXPECT_TRUE(app.Contains(kRegion));
}

TEST(AppContext, SecondWriteFailsAndChangesNothing) {
  AppContext app;
  ASSERT_THAT(app.Set(kRegion, "eu"), IsOk());
  const absl::Status status = app.Set(kRegion, "us");
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(status.message().find("test.region"), absl::string_view::npos) << status;
  EXPECT_EQ(*app.Get(kRegion), "eu");
}

TEST(AppContext, WritesAfterSealFailAndChangeNothing) {
  AppContext app;
  app.Seal();
  EXPECT_TRUE(app.sealed());
  EXPECT_EQ(app.Set(kWorkers, 4).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(app.Get(kWorkers), nullptr);
  app.Seal();  // idempotent
  EXPECT_TRUE(app.sealed());
}

TEST(AppContext, NoFrameResolversByDefault) {
  AppContext app;
  EXPECT_EQ(app.frame_resolvers(), nullptr);
  EXPECT_EQ(app.SetFrameResolvers(nullptr).code(), absl::StatusCode::kInvalidArgument);
}

TEST(AppContext, AbortStageUndoesTheStagesWrites) {
  AppContext app;
  ASSERT_THAT(app.Set(kRegion, "eu"), IsOk());
  app.BeginStage();
  ASSERT_THAT(app.Set(kWorkers, 8), IsOk());
  app.AbortStage();
  EXPECT_EQ(app.Get(kWorkers), nullptr);
  EXPECT_EQ(*app.Get(kRegion), "eu");
  // The key can be written by a later, successful stage.
  app.BeginStage();
  ASSERT_THAT(app.Set(kWorkers, 2), IsOk());
  ASSERT_THAT(app.CommitStage(), IsOk());
  EXPECT_EQ(*app.Get(kWorkers), 2);
}

}  // namespace
}  // namespace framekit
