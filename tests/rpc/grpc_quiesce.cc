// Linked into every rpc test binary: after the last test, waits until gRPC has finished shutting
// down before the process exits.
//
// gRPC 1.51 runs its final grpc_shutdown on a detached thread of its own when the last gRPC
// object is released on one of gRPC's threads. A test process that exits meanwhile ends while
// gRPC's threads still hold OpenSSL's per-thread state (error queues, random generators), and
// OpenSSL's exit handler then frees the global state under them: LeakSanitizer reports what is
// left (OpenSSL allocations on gRPC's threads, never framekit's) and ThreadSanitizer reports
// gRPC's threads as leaked. Waiting for grpc_is_initialized() to turn false (bounded) lets that
// shutdown finish first.
#include <grpc/grpc.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "gtest/gtest.h"

namespace {

class WaitForGrpcShutdown : public ::testing::Environment {
 public:
  void TearDown() override {
    constexpr auto kBound = std::chrono::seconds(10);
    const auto deadline = std::chrono::steady_clock::now() + kBound;
    while (grpc_is_initialized() != 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        std::fprintf(stderr, "gRPC still initialized %lld s after the last test\n",
                     static_cast<long long>(kBound.count()));
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
};

[[maybe_unused]] ::testing::Environment* const kWaitForGrpcShutdown =
    ::testing::AddGlobalTestEnvironment(new WaitForGrpcShutdown);

}  // namespace
