#include "framekit/resolvers/frame_resolvers.h"

#include <atomic>
#include <latch>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "framekit/app/app_context.h"
#include "framekit/ctx/panic.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit {
namespace {

using ::framekit::testing::IsOk;

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const Key<std::string> kTrace{"test.trace"};
const Key<int> kIndex{"test.index"};
const Key<std::string> kNetwork{"test.network"};

// A resolver that appends (kTrace, name).
FrameResolverFn Appends(std::string name) {
  return [name](const Frame&, const Options&, PairList& out) {
    out.push_back(Pair::Of(kTrace, name));
    return absl::OkStatus();
  };
}

FrameResolverFn Fails(absl::Status status) {
  return [status](const Frame&, const Options&, PairList&) { return status; };
}

std::vector<std::string> Traces(const PairList& pairs) {
  std::vector<std::string> out;
  for (const Pair& pair : pairs) {
    if (const std::string* trace = pair.As(kTrace)) out.push_back(*trace);
  }
  return out;
}

TEST(FrameResolvers, ResolvesInOrderThenName) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("c", 20, Appends("c")), IsOk());
  ASSERT_THAT(resolvers.Register("b", 10, Appends("b")), IsOk());
  ASSERT_THAT(resolvers.Register("a", 20, Appends("a")), IsOk());
  ASSERT_THAT(resolvers.Register("z", -5, Appends("z")), IsOk());
  EXPECT_THAT(resolvers.names(), ElementsAre("z", "b", "a", "c"));
  EXPECT_EQ(resolvers.size(), 4u);
  PairList pairs;
  ASSERT_THAT(resolvers.Resolve(Frame(), Options(), pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("z", "b", "a", "c"));
}

TEST(FrameResolvers, AppendsAfterThePairsPassedIn) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("r", 1, Appends("r")), IsOk());
  PairList pairs;
  pairs.push_back(Pair::Of(kTrace, "caller"));
  ASSERT_THAT(resolvers.Resolve(Frame(), Options(), pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("caller", "r"));
}

TEST(FrameResolvers, ResolversSeeParentAndOptions) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("net", 200,
                                 [](const Frame& parent, const Options& options, PairList& out) {
                                   std::string net(options.GetString("network").value_or("none"));
                                   if (const std::string* inherited = parent.Find(kNetwork)) {
                                     net += "/" + *inherited;
                                   }
                                   out.push_back(Pair::Of(kNetwork, net));
                                   return absl::OkStatus();
                                 }),
              IsOk());
  PairList pairs;
  ASSERT_THAT(resolvers.Resolve(Frame().With(kNetwork, "up"), Options{{"network", "tor"}}, pairs),
              IsOk());
  ASSERT_EQ(pairs.size(), 1u);
  EXPECT_EQ(*pairs[0].As(kNetwork), "tor/up");
}

TEST(FrameResolvers, EmptyRegistryLeavesPairsAlone) {
  FrameResolvers resolvers;
  PairList pairs;
  pairs.push_back(Pair::Of(kTrace, "x"));
  EXPECT_THAT(resolvers.Resolve(Frame(), Options(), pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("x"));
}

TEST(FrameResolvers, NullRegistryIsANoOp) {
  PairList pairs;
  pairs.push_back(Pair::Of(kTrace, "x"));
  EXPECT_THAT(Resolve(nullptr, Frame(), Options(), pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("x"));
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("r", 1, Appends("r")), IsOk());
  EXPECT_THAT(Resolve(&resolvers, Frame(), Options(), pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("x", "r"));
}

TEST(FrameResolvers, FirstErrorStopsRestoresAndWraps) {
  FrameResolvers resolvers;
  int later_runs = 0;
  ASSERT_THAT(resolvers.Register("first", 1, Appends("first")), IsOk());
  absl::Status original = absl::NotFoundError("no such network");
  original.SetPayload("type.test/Detail", absl::Cord("detail"));
  ASSERT_THAT(resolvers.Register("broken", 2, Fails(original)), IsOk());
  ASSERT_THAT(resolvers.Register("later", 3,
                                 [&](const Frame&, const Options&, PairList&) {
                                   ++later_runs;
                                   return absl::OkStatus();
                                 }),
              IsOk());
  PairList pairs;
  pairs.push_back(Pair::Of(kTrace, "caller"));
  const absl::Status status = resolvers.Resolve(Frame(), Options(), pairs);
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(status.message(), "frame resolver \"broken\": no such network");
  EXPECT_EQ(status.GetPayload("type.test/Detail"), absl::Cord("detail"));
  EXPECT_EQ(later_runs, 0);
  EXPECT_THAT(Traces(pairs), ElementsAre("caller"));
}

// Tests that pairs are restored exactly even when the failing resolver tampered with them.
TEST(FrameResolvers, RestoresPairsAResolverRemoved) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("a", 1, Appends("a")), IsOk());
  ASSERT_THAT(resolvers.Register("vandal", 2,
                                 [](const Frame&, const Options&, PairList& out) {
                                   out.clear();
                                   out.push_back(Pair::Of(kTrace, "junk"));
                                   return absl::InternalError("vandalised");
                                 }),
              IsOk());
  PairList pairs;
  pairs.push_back(Pair::Of(kTrace, "x"));
  pairs.push_back(Pair::Of(kTrace, "y"));
  EXPECT_THAT(resolvers.Resolve(Frame(), Options(), pairs), ::testing::Not(IsOk()));
  EXPECT_THAT(Traces(pairs), ElementsAre("x", "y"));
}

TEST(FrameResolvers, ThrowingResolverIsIsolated) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("ok", 1, Appends("ok")), IsOk());
  ASSERT_THAT(resolvers.Register("thrower", 2,
                                 [](const Frame&, const Options&, PairList& out) -> absl::Status {
                                   out.push_back(Pair::Of(kTrace, "half"));
                                   throw std::runtime_error("kaput");
                                 }),
              IsOk());
  PairList pairs;
  absl::Status status;
  EXPECT_NO_THROW(status = resolvers.Resolve(Frame(), Options(), pairs));
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(status.message()), ::testing::StartsWith("frame resolver \"thrower\": "));
  EXPECT_THAT(std::string(status.message()), HasSubstr("kaput"));
  const auto panic = GetExtensionPanic(status);
  ASSERT_TRUE(panic.has_value());
  EXPECT_EQ(panic->extension, "thrower");
  EXPECT_EQ(panic->phase, Phase::kResolve);
  EXPECT_EQ(panic->type, "std::runtime_error");
  EXPECT_TRUE(pairs.empty());
}

TEST(FrameResolvers, ThrowingNonStdTypesIsIsolated) {
  FrameResolvers resolvers;
  ASSERT_THAT(
      resolvers.Register("int", 1,
                         [](const Frame&, const Options&, PairList&) -> absl::Status { throw 7; }),
      IsOk());
  PairList pairs;
  const absl::Status status = resolvers.Resolve(Frame(), Options(), pairs);
  ASSERT_TRUE(IsExtensionPanic(status));
  EXPECT_EQ(GetExtensionPanic(status)->message, "7");
}

TEST(FrameResolvers, RegisterRejectsBadInput) {
  FrameResolvers resolvers;
  EXPECT_EQ(resolvers.Register("", 1, Appends("x")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolvers.Register("x", 1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolvers.Register("x", 1, FrameResolverFn()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolvers.Register("x", 1, Appends("x"), {""}).code(),
            absl::StatusCode::kInvalidArgument);
  ASSERT_THAT(resolvers.Register("x", 1, Appends("x")), IsOk());
  const absl::Status duplicate = resolvers.Register("x", 99, Appends("x2"));
  EXPECT_EQ(duplicate.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(duplicate.message()), HasSubstr("\"x\""));
  EXPECT_EQ(resolvers.size(), 1u);
}

TEST(FrameResolvers, RegisterAfterSealFails) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("x", 1, Appends("x")), IsOk());
  resolvers.Seal();
  EXPECT_TRUE(resolvers.sealed());
  EXPECT_EQ(resolvers.Register("y", 2, Appends("y")).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(resolvers.RegisterClaim("c", [](const Frame&, const Options&) { return true; }).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(resolvers.names(), ElementsAre("x"));
  PairList pairs;
  EXPECT_THAT(resolvers.Resolve(Frame(), Options(), pairs), IsOk());  // reads still work
  EXPECT_THAT(Traces(pairs), ElementsAre("x"));
}

TEST(FrameResolvers, RegisterAllIsAllOrNothing) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("existing", 1, Appends("existing")), IsOk());
  std::vector<ResolverRegistration> bad;
  bad.push_back({"new1", 2, Appends("new1"), {}});
  bad.push_back({"existing", 3, Appends("dup"), {}});
  EXPECT_EQ(resolvers.RegisterAll(std::move(bad)).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(resolvers.names(), ElementsAre("existing"));

  std::vector<ResolverRegistration> repeated;
  repeated.push_back({"same", 2, Appends("a"), {}});
  repeated.push_back({"same", 3, Appends("b"), {}});
  EXPECT_EQ(resolvers.RegisterAll(std::move(repeated)).code(), absl::StatusCode::kAlreadyExists);

  std::vector<ResolverRegistration> invalid;
  invalid.push_back({"fine", 2, Appends("a"), {}});
  invalid.push_back({"", 3, Appends("b"), {}});
  EXPECT_EQ(resolvers.RegisterAll(std::move(invalid)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(resolvers.names(), ElementsAre("existing"));

  std::vector<ResolverRegistration> good;
  good.push_back({"b", 5, Appends("b"), {}});
  good.push_back({"a", 0, Appends("a"), {}});
  ASSERT_THAT(resolvers.RegisterAll(std::move(good)), IsOk());
  EXPECT_THAT(resolvers.names(), ElementsAre("a", "existing", "b"));
}

ClaimPredicate SelectsNetwork() {
  return [](const Frame&, const Options& options) {
    const auto network = options.GetString("network");
    return network.has_value() && !network->empty();
  };
}

TEST(FrameResolvers, UncoveredSelectedClaimFailsClosed) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.RegisterClaim("network", SelectsNetwork()), IsOk());
  ASSERT_THAT(resolvers.Register("unrelated", 1, Appends("unrelated")), IsOk());
  PairList pairs;
  const absl::Status status = resolvers.Resolve(Frame(), Options{{"network", "tor"}}, pairs);
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(IsResolverNotRegistered(status));
  EXPECT_EQ(NotRegisteredClaim(status), "network");
  EXPECT_THAT(std::string(status.message()), HasSubstr("\"network\""));
  EXPECT_TRUE(pairs.empty());  // no resolver ran
  // A call that does not select the claim is fine.
  EXPECT_THAT(resolvers.Resolve(Frame(), Options(), pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("unrelated"));
}

TEST(FrameResolvers, ClaimOnAnEmptyRegistryStillFailsClosed) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.RegisterClaim("network", SelectsNetwork()), IsOk());
  PairList pairs;
  EXPECT_TRUE(
      IsResolverNotRegistered(resolvers.Resolve(Frame(), Options{{"network", "tor"}}, pairs)));
}

TEST(FrameResolvers, CoveredClaimLetsItsResolverRun) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.RegisterClaim("network", SelectsNetwork()), IsOk());
  ASSERT_THAT(resolvers.Register("overlay", 200, Appends("overlay"), {"network"}), IsOk());
  PairList pairs;
  ASSERT_THAT(resolvers.Resolve(Frame(), Options{{"network", "tor"}}, pairs), IsOk());
  EXPECT_THAT(Traces(pairs), ElementsAre("overlay"));
  EXPECT_THAT(resolvers.claims(), ElementsAre("network"));
}

TEST(FrameResolvers, ClaimRejectsBadInput) {
  FrameResolvers resolvers;
  EXPECT_EQ(resolvers.RegisterClaim("", SelectsNetwork()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(resolvers.RegisterClaim("x", nullptr).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_THAT(resolvers.RegisterClaim("x", SelectsNetwork()), IsOk());
  EXPECT_EQ(resolvers.RegisterClaim("x", SelectsNetwork()).code(),
            absl::StatusCode::kAlreadyExists);
}

TEST(FrameResolvers, ThrowingClaimPredicateIsAnError) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.RegisterClaim("weird",
                                      [](const Frame&, const Options&) -> bool {
                                        throw std::logic_error("predicate broke");
                                      }),
              IsOk());
  PairList pairs;
  const absl::Status status = resolvers.Resolve(Frame(), Options(), pairs);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(status.message()), HasSubstr("predicate broke"));
}

TEST(FrameResolvers, RollbacksRunInReverseOnALaterFailure) {
  FrameResolvers resolvers;
  std::vector<std::string> undone;
  auto opens = [&undone](std::string name) -> FrameResolverFn {
    return [&undone, name](const Frame&, const Options&, PairList& out) {
      out.push_back(Pair::Of(kTrace, name, [&undone, name] {
        undone.push_back(name);
        return absl::OkStatus();
      }));
      out.push_back(Pair::Of(kIndex, 0));  // no rollback
      return absl::OkStatus();
    };
  };
  ASSERT_THAT(resolvers.Register("open1", 1, opens("r1")), IsOk());
  ASSERT_THAT(resolvers.Register("open2", 2, opens("r2")), IsOk());
  ASSERT_THAT(resolvers.Register("fail", 3, Fails(absl::UnavailableError("down"))), IsOk());
  PairList pairs;
  pairs.push_back(Pair::Of(kTrace, "caller", [&undone] {
    undone.push_back("caller");  // not appended by this call: must not run
    return absl::OkStatus();
  }));
  const absl::Status status = resolvers.Resolve(Frame(), Options(), pairs);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(undone, ElementsAre("r2", "r1"));
  EXPECT_TRUE(RollbackFailures(status).empty());
  EXPECT_THAT(Traces(pairs), ElementsAre("caller"));
}

TEST(FrameResolvers, RollbackFailuresAreAttachedNotLost) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("opens", 1,
                                 [](const Frame&, const Options&, PairList& out) {
                                   out.push_back(Pair::Of(kTrace, "a", [] {
                                     return absl::DataLossError("socket leak");
                                   }));
                                   out.push_back(Pair::Of(kIndex, 1, []() -> absl::Status {
                                     throw std::runtime_error("rollback threw");
                                   }));
                                   return absl::OkStatus();
                                 }),
              IsOk());
  ASSERT_THAT(resolvers.Register("fail", 2, Fails(absl::InternalError("later"))), IsOk());
  PairList pairs;
  const absl::Status status = resolvers.Resolve(Frame(), Options(), pairs);
  EXPECT_EQ(status.message(), "frame resolver \"fail\": later");
  const std::vector<std::string> failures = RollbackFailures(status);
  ASSERT_EQ(failures.size(), 2u);
  EXPECT_THAT(failures[0], HasSubstr("test.index"));
  EXPECT_THAT(failures[0], HasSubstr("rollback threw"));
  EXPECT_THAT(failures[1], HasSubstr("socket leak"));
}

// Tests that a resolver may register another resolver without deadlocking, and that the
// registration is invisible to the pass that made it and visible to the next one.
TEST(FrameResolvers, ReentrantRegisterTakesEffectNextPass) {
  FrameResolvers resolvers;
  bool registered = false;
  ASSERT_THAT(resolvers.Register("registrar", 1,
                                 [&](const Frame&, const Options&, PairList& out) {
                                   if (!registered) {
                                     registered = true;
                                     EXPECT_THAT(resolvers.Register("late", 2, Appends("late")),
                                                 IsOk());
                                   }
                                   out.push_back(Pair::Of(kTrace, "registrar"));
                                   return absl::OkStatus();
                                 }),
              IsOk());
  PairList first;
  ASSERT_THAT(resolvers.Resolve(Frame(), Options(), first), IsOk());
  EXPECT_THAT(Traces(first), ElementsAre("registrar"));
  PairList second;
  ASSERT_THAT(resolvers.Resolve(Frame(), Options(), second), IsOk());
  EXPECT_THAT(Traces(second), ElementsAre("registrar", "late"));
}

TEST(FrameResolvers, StagedRegistrationsPublishOnCommitOnly) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("base", 1, Appends("base")), IsOk());
  resolvers.BeginStaging();
  ASSERT_THAT(resolvers.Register("staged", 2, Appends("staged")), IsOk());
  EXPECT_EQ(resolvers.Register("staged", 3, Appends("again")).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(resolvers.Register("base", 3, Appends("again")).code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(resolvers.names(), ElementsAre("base"));  // not yet visible
  ASSERT_THAT(resolvers.CommitStaging(), IsOk());
  EXPECT_THAT(resolvers.names(), ElementsAre("base", "staged"));

  resolvers.BeginStaging();
  ASSERT_THAT(resolvers.Register("dropped", 4, Appends("dropped")), IsOk());
  ASSERT_THAT(resolvers.RegisterClaim("claim", SelectsNetwork()), IsOk());
  resolvers.AbortStaging();
  EXPECT_THAT(resolvers.names(), ElementsAre("base", "staged"));
  EXPECT_TRUE(resolvers.claims().empty());
  // The dropped name is free again.
  EXPECT_THAT(resolvers.Register("dropped", 4, Appends("dropped")), IsOk());
}

TEST(FrameResolvers, AppContextStagesTheInstalledRegistry) {
  AppContext app;
  auto resolvers = std::make_shared<FrameResolvers>();
  ASSERT_THAT(app.SetFrameResolvers(resolvers), IsOk());
  EXPECT_EQ(app.frame_resolvers(), resolvers.get());
  EXPECT_EQ(app.SetFrameResolvers(std::make_shared<FrameResolvers>()).code(),
            absl::StatusCode::kFailedPrecondition);

  app.BeginStage();
  ASSERT_THAT(app.frame_resolvers()->Register("failed-component", 1, Appends("x")), IsOk());
  app.AbortStage();
  EXPECT_EQ(resolvers->size(), 0u);

  app.BeginStage();
  ASSERT_THAT(app.frame_resolvers()->Register("good-component", 1, Appends("x")), IsOk());
  EXPECT_EQ(resolvers->size(), 0u);
  ASSERT_THAT(app.CommitStage(), IsOk());
  EXPECT_THAT(resolvers->names(), ElementsAre("good-component"));

  app.Seal();
  EXPECT_EQ(app.SetFrameResolvers(std::make_shared<FrameResolvers>()).code(),
            absl::StatusCode::kFailedPrecondition);
}

// The keys a dispatcher reads itself, for the CheckOptions tests.
constexpr std::string_view kOwnKeys[] = {"timeout_ms"};

absl::Status Noop(const Frame&, const Options&, PairList&) { return absl::OkStatus(); }

// Tests strict options: a key is accepted while a registered resolver declares it or the
// dispatcher reads it; anything else is InvalidArgument naming the key (IsUndeclaredOption).
TEST(FrameResolversOptions, CheckAcceptsDeclaredAndOwnKeysOnly) {
  FrameResolvers resolvers;
  ASSERT_THAT(resolvers.Register("app.tenant", 300, {"tenant", "tenant"}, Noop),
              ::framekit::testing::IsOk());
  ASSERT_TRUE(resolvers
                  .RegisterAll({{.name = "app.region",
                                 .order = 100,
                                 .fn = Noop,
                                 .covers = {},
                                 .option_keys = {"region", "tenant"}}})
                  .ok());
  EXPECT_THAT(resolvers.option_keys(), ElementsAre("region", "tenant"));
  EXPECT_THAT(resolvers.CheckOptions(Options(), {}), ::framekit::testing::IsOk());
  absl::Status ok = resolvers.CheckOptions(
      Options{{"tenant", "acme"}, {"region", "eu"}, {"timeout_ms", 5}}, kOwnKeys);
  EXPECT_TRUE(ok.ok()) << ok;
  absl::Status bad = resolvers.CheckOptions(Options{{"tenant", "acme"}, {"netwrok", "tor"}}, {});
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << bad;
  EXPECT_TRUE(IsUndeclaredOption(bad)) << bad;
  EXPECT_EQ(UndeclaredOption(bad), "netwrok");
  EXPECT_THAT(bad.message(), HasSubstr("\"netwrok\""));
  // The dispatcher's own keys are its own: not accepted without them.
  EXPECT_TRUE(IsUndeclaredOption(resolvers.CheckOptions(Options{{"timeout_ms", 5}}, {})));
  // Case and whitespace matter: a near-miss is not the key.
  EXPECT_TRUE(IsUndeclaredOption(resolvers.CheckOptions(Options{{"Tenant", "acme"}}, {})));
  EXPECT_TRUE(IsUndeclaredOption(resolvers.CheckOptions(Options{{"tenant ", "acme"}}, {})));
}

// Tests that a nullptr registry declares nothing: only the dispatcher's own keys pass.
TEST(FrameResolversOptions, NullRegistryAcceptsOnlyOwnKeys) {
  EXPECT_THAT(CheckOptions(nullptr, Options(), {}), ::framekit::testing::IsOk());
  EXPECT_THAT(CheckOptions(nullptr, Options{{"timeout_ms", 5}}, kOwnKeys),
              ::framekit::testing::IsOk());
  absl::Status status = CheckOptions(nullptr, Options{{"network", "tor"}}, kOwnKeys);
  EXPECT_TRUE(IsUndeclaredOption(status)) << status;
  EXPECT_EQ(UndeclaredOption(status), "network");
}

// Tests that a declared key must follow the option key grammar, and that a rejected
// registration declares nothing.
TEST(FrameResolversOptions, RegisterRejectsBadKeys) {
  FrameResolvers resolvers;
  for (const std::string& key : {std::string(), std::string(129, 'k'), std::string("a b"),
                                 std::string("\xff"), std::string("a\0b", 3)}) {
    absl::Status status = resolvers.Register("r", 1, {key}, Noop);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_LE(status.message().size(), 400u);
  }
  EXPECT_EQ(resolvers.size(), 0u);
  EXPECT_TRUE(resolvers.option_keys().empty());
}

// Tests that a key declared by a resolver that never got registered is not declared: a
// duplicate name, a registration after Seal, a boot component that failed.
TEST(FrameResolversOptions, KeysOfFailedRegistrationsAreNotDeclared) {
  auto resolvers = std::make_shared<FrameResolvers>();
  ASSERT_THAT(resolvers->Register("r", 1, {"a"}, Noop), ::framekit::testing::IsOk());
  EXPECT_EQ(resolvers->Register("r", 2, {"dup"}, Noop).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(resolvers
                ->RegisterAll(
                    {{.name = "ok", .order = 1, .fn = Noop, .covers = {}, .option_keys = {"batch"}},
                     {.name = "", .order = 1, .fn = Noop, .covers = {}, .option_keys = {"batch2"}}})
                .code(),
            absl::StatusCode::kInvalidArgument);
  AppContext app;
  ASSERT_THAT(app.SetFrameResolvers(resolvers), ::framekit::testing::IsOk());
  app.BeginStage();
  ASSERT_THAT(resolvers->Register("staged", 1, {"staged"}, Noop), ::framekit::testing::IsOk());
  EXPECT_TRUE(IsUndeclaredOption(resolvers->CheckOptions(Options{{"staged", 1}}, {})));
  app.AbortStage();
  app.SealFrameResolvers();
  EXPECT_EQ(resolvers->Register("late", 1, {"late"}, Noop).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(resolvers->option_keys(), ElementsAre("a"));
  for (const char* key : {"dup", "batch", "batch2", "staged", "late"}) {
    EXPECT_TRUE(IsUndeclaredOption(resolvers->CheckOptions(Options{{key, 1}}, {}))) << key;
  }
}

TEST(FrameResolvers, AbortedStageUninstallsARegistryItInstalled) {
  AppContext app;
  app.BeginStage();
  ASSERT_THAT(app.SetFrameResolvers(std::make_shared<FrameResolvers>()), IsOk());
  app.AbortStage();
  EXPECT_EQ(app.frame_resolvers(), nullptr);
}

// Readers resolve without pause while a writer registers hundreds of resolvers with increasing
// orders. Every snapshot is a prefix 0..k-1 of the registrations; a torn or unordered snapshot
// shows up as a gap or an inversion, and a reader never sees k go down.
TEST(FrameResolvers, ConcurrentResolveSeesWholeOrderedSnapshots) {
  constexpr int kResolvers = 300;
  constexpr int kReaders = 3;
  FrameResolvers resolvers;
  std::atomic<bool> done{false};
  std::atomic<int> violations{0};
  std::atomic<long> reads{0};
  std::latch start(kReaders + 1);

  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&] {
      start.arrive_and_wait();
      std::size_t last_size = 0;
      bool final_pass = false;
      while (true) {
        final_pass = done.load(std::memory_order_acquire);
        PairList pairs;
        if (!resolvers.Resolve(Frame(), Options(), pairs).ok()) ++violations;
        for (std::size_t i = 0; i < pairs.size(); ++i) {
          const int* index = pairs[i].As(kIndex);
          if (index == nullptr || *index != static_cast<int>(i)) ++violations;
        }
        if (pairs.size() < last_size) ++violations;
        last_size = pairs.size();
        reads.fetch_add(1, std::memory_order_relaxed);
        if (final_pass) {
          if (last_size != static_cast<std::size_t>(kResolvers)) ++violations;
          break;
        }
      }
    });
  }
  start.arrive_and_wait();
  for (int i = 0; i < kResolvers; ++i) {
    // Halfway, let the readers read a registry that is still changing, however busy the
    // machine: the test is about reads that overlap registrations.
    if (i == kResolvers / 2) {
      while (reads.load(std::memory_order_relaxed) < 2 * kReaders) std::this_thread::yield();
    }
    ASSERT_THAT(resolvers.Register("r" + std::to_string(i), i,
                                   [i](const Frame&, const Options&, PairList& out) {
                                     out.push_back(Pair::Of(kIndex, i));
                                     return absl::OkStatus();
                                   }),
                IsOk());
  }
  done.store(true, std::memory_order_release);
  for (auto& reader : readers) reader.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_GT(reads.load(), kReaders);
  EXPECT_EQ(resolvers.size(), static_cast<std::size_t>(kResolvers));
}

TEST(FrameResolvers, ConcurrentRegistrationsAllLand) {
  FrameResolvers resolvers;
  constexpr int kWriters = 4;
  constexpr int kEach = 50;
  std::latch start(kWriters);
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      start.arrive_and_wait();
      for (int i = 0; i < kEach; ++i) {
        const std::string name = "w" + std::to_string(w) + "." + std::to_string(i);
        if (!resolvers.Register(name, i, Appends(name)).ok()) ++failures;
        // Everyone also races for one shared name: exactly one wins.
        (void)resolvers.Register("shared", 0, Appends("shared"));
      }
    });
  }
  for (auto& writer : writers) writer.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(resolvers.size(), static_cast<std::size_t>(kWriters * kEach + 1));
}

// Tests that resolver names follow the function-name grammar and that errors echo a bounded
// prefix of the input.
TEST(FrameResolvers, NamesFollowTheFunctionNameGrammar) {
  FrameResolvers registry;
  const auto noop = [](const Frame&, const Options&, PairList&) { return absl::OkStatus(); };
  for (const std::string& bad : {std::string("-lead"), std::string("has space"), std::string("a/b"),
                                 std::string(129, 'a')}) {
    const absl::Status s = registry.Register(bad, 1, noop);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad << ": " << s;
  }
  const absl::Status long_bad = registry.Register(std::string(100000, '#'), 1, noop);
  EXPECT_EQ(long_bad.code(), absl::StatusCode::kInvalidArgument) << long_bad;
  EXPECT_LT(long_bad.message().size(), 200u);
  EXPECT_THAT(long_bad.message(), ::testing::HasSubstr("..."));
  for (const std::string& good : {std::string("net.overlay"), std::string("a_b-c"),
                                  std::string("0x"), std::string(128, 'z')}) {
    const absl::Status ok = registry.Register(good, 1, noop);
    EXPECT_TRUE(ok.ok()) << good << ": " << ok;
  }
}

}  // namespace
}  // namespace framekit
