// Test support for the dispatcher tests: an app whose registry holds a brand-new "tenant"
// resolver the dispatchers have never heard of. Its pair proves a resolver reaches handlers and
// processes generically; the tenant "forbidden" makes resolution fail.
#ifndef FRAMEKIT_TESTS_SUPPORT_TENANT_APP_H_
#define FRAMEKIT_TESTS_SUPPORT_TENANT_APP_H_

#include <memory>
#include <string>

#include "framekit/app/app_context.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "gtest/gtest.h"
#include "support/status_matchers.h"

namespace framekit::testing {

inline const Key<std::string> kTenant{"test.tenant"};

struct TenantApp {
  TenantApp() {
    resolvers = std::make_shared<FrameResolvers>();
    EXPECT_THAT(resolvers->Register("test.tenant", 300, {"tenant"},
                                    [](const Frame&, const Options& options, PairList& out) {
                                      if (auto tenant = options.GetString("tenant")) {
                                        if (*tenant == "forbidden") {
                                          return absl::PermissionDeniedError("tenant is forbidden");
                                        }
                                        out.push_back(Pair::Of(kTenant, std::string(*tenant)));
                                      }
                                      return absl::OkStatus();
                                    }),
                IsOk());
    EXPECT_THAT(app.SetFrameResolvers(resolvers), IsOk());
    app.Seal();
  }
  AppContext app;
  std::shared_ptr<FrameResolvers> resolvers;
};

}  // namespace framekit::testing

#endif  // FRAMEKIT_TESTS_SUPPORT_TENANT_APP_H_
