// Test support for the dispatcher tests: an app whose registry holds a brand-new "tenant"
// resolver the dispatchers have never heard of; it declares the option key it reads. Its pair proves a resolver reaches handlers and
// processes generically; the tenant "forbidden" makes resolution fail.
#ifndef FRAMEKIT_TESTS_DISPATCH_TENANT_APP_H_
#define FRAMEKIT_TESTS_DISPATCH_TENANT_APP_H_

#include <memory>
#include <string>

#include "framekit/ctx/app_context.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gtest/gtest.h"

namespace framekit::dispatch::test_support {

inline const Key<std::string> kTenant{"test.tenant"};

struct TenantApp {
  TenantApp() {
    resolvers = std::make_shared<FrameResolvers>();
    EXPECT_TRUE(resolvers
                    ->Register("test.tenant", 300, {"tenant"},
                               [](const Frame&, const Options& options, PairList& out) {
                                 if (auto tenant = options.GetString("tenant")) {
                                   if (*tenant == "forbidden") {
                                     return absl::PermissionDeniedError("tenant is forbidden");
                                   }
                                   out.push_back(Pair::Of(kTenant, std::string(*tenant)));
                                 }
                                 return absl::OkStatus();
                               })
                    .ok());
    EXPECT_TRUE(app.SetFrameResolvers(resolvers).ok());
    app.Seal();
  }
  AppContext app;
  std::shared_ptr<FrameResolvers> resolvers;
};

}  // namespace framekit::dispatch::test_support

#endif  // FRAMEKIT_TESTS_DISPATCH_TENANT_APP_H_
