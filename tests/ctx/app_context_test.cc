#include "framekit/ctx/app_context.h"

#include <string>

#include "gtest/gtest.h"

namespace framekit {
namespace {

const Key<std::string> kRegion{"test.region"};
const Key<int> kWorkers{"test.workers"};

TEST(AppContext, SetThenGet) {
  AppContext app;
  ASSERT_TRUE(app.Set(kRegion, "eu").ok());
  ASSERT_NE(app.Get(kRegion), nullptr);
  EXPECT_EQ(*app.Get(kRegion), "eu");
  EXPECT_EQ(app.Get(kWorkers), nullptr);
  EXPECT_TRUE(app.Contains(kRegion));
}

TEST(AppContext, SecondWriteFailsAndChangesNothing) {
  AppContext app;
  ASSERT_TRUE(app.Set(kRegion, "eu").ok());
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
  ASSERT_TRUE(app.Set(kRegion, "eu").ok());
  app.BeginStage();
  ASSERT_TRUE(app.Set(kWorkers, 8).ok());
  app.AbortStage();
  EXPECT_EQ(app.Get(kWorkers), nullptr);
  EXPECT_EQ(*app.Get(kRegion), "eu");
  // The key can be written by a later, successful stage.
  app.BeginStage();
  ASSERT_TRUE(app.Set(kWorkers, 2).ok());
  ASSERT_TRUE(app.CommitStage().ok());
  EXPECT_EQ(*app.Get(kWorkers), 2);
}

}  // namespace
}  // namespace framekit
