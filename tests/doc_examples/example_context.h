// The names the documentation's examples take for granted: an application, a parent frame, an
// extension object, a few application functions. Declared only: the examples are compiled, not
// run, so that an example that no longer matches the API breaks the build.
#ifndef FRAMEKIT_TESTS_DOC_EXAMPLES_EXAMPLE_CONTEXT_H_
#define FRAMEKIT_TESTS_DOC_EXAMPLES_EXAMPLE_CONTEXT_H_

#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "framekit/framekit.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace framekit_doc_examples {

// An extension the guard examples call into.
struct Event {};
struct Extension {
  absl::Status Setup();
  absl::Status Setup(const std::string& config);
  std::optional<Event> Poll();
  void Teardown();
};
struct Store {
  absl::StatusOr<std::string> Get(std::string_view key);
};
struct Leases {
  std::vector<int> ReclaimExpired();
};

extern framekit::AppContext& app;
extern const framekit::Frame parent;
extern const framekit::Frame call_frame;
extern const framekit::Options options;
extern const std::string config;
extern const std::string config_text;
extern const framekit::Frame frame;
extern std::shared_ptr<const framekit::PortableKeys> portable_keys;
extern framekit::dispatch::Sink& sink;
extern std::unique_ptr<framekit::dispatch::FunctionExecutor> executor;
extern Extension ext;
extern Store store;
extern Leases leases;
extern bool running;
extern framekit::Clock::time_point now;
extern std::uint64_t pid;

inline const framekit::Key<int> kRetries{"doc.retries"};

void Handle(const Event& event);
void Handle(const framekit::Frame& frame, const std::string& message);
void Authorize(const std::string& role);
void Page(std::string_view extension);
void StopProcess(std::uint64_t pid);
void Reopen(int slot);

}  // namespace framekit_doc_examples

#endif  // FRAMEKIT_TESTS_DOC_EXAMPLES_EXAMPLE_CONTEXT_H_
