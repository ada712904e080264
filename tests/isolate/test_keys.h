// The portable keys the isolate tests, their worker and the benchmarks agree on.
#ifndef FRAMEKIT_TESTS_ISOLATE_TEST_KEYS_H_
#define FRAMEKIT_TESTS_ISOLATE_TEST_KEYS_H_

#include <cstdlib>
#include <memory>
#include <string>

#include "framekit/ctx/key.h"
#include "framekit/ctx/portable.h"
#include "framekit/isolate/worker.h"

namespace framekit::isolate_test {

inline const Key<std::string> kTenant{"test.tenant"};

inline std::shared_ptr<const PortableKeys> TestKeys() {
  auto keys = std::make_shared<PortableKeys>();
  if (!isolate::AddCallKeys(*keys).ok() || !keys->Add(kTenant).ok()) std::abort();
  return keys;
}

}  // namespace framekit::isolate_test

#endif  // FRAMEKIT_TESTS_ISOLATE_TEST_KEYS_H_
