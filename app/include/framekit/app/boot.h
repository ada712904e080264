// BootSequence: named boot components run once, in dependency order, against one AppContext.
//
// A host assembles its services at boot: install the FrameResolvers, register the network
// overlay, open a database pool... Each step is a component with a name and the names of the
// components it needs first. Run() checks the whole graph before anything runs (a cycle or a
// missing dependency fails boot with nothing started), runs the components in dependency order,
// stages each one so that a failing component leaves nothing of its own half-installed, and
// seals the AppContext and its FrameResolvers after the last one.
//
// Example:
//   framekit::BootSequence boot;
//   FRAMEKIT_RETURN_IF_ERROR(boot.Add({"resolvers", {}, [](framekit::AppContext& app) {
//     return app.SetFrameResolvers(std::make_shared<framekit::FrameResolvers>());
//   }}));
//   FRAMEKIT_RETURN_IF_ERROR(boot.Add(framekit::net::NetworkComponent(config_text)));
//   framekit::AppContext app;
//   FRAMEKIT_RETURN_IF_ERROR(boot.Run(app));  // "resolvers", then "net"; app.sealed()
#ifndef FRAMEKIT_APP_BOOT_H_
#define FRAMEKIT_APP_BOOT_H_

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "framekit/app/app_context.h"

namespace framekit {

// One boot step.
struct BootComponent {
  // Unique within a sequence; names the component in errors.
  std::string name;
  // Names of the components that must have run (successfully) before this one.
  std::vector<std::string> dependencies;
  // Installs the component's services into the AppContext. Runs at most once, inside a stage
  // (AppContext::BeginStage): what it wrote is kept only if it returns OK.
  // NOTE: must not call Run() on the sequence that runs it, nor BeginStage/CommitStage/
  // AbortStage on the AppContext.
  std::function<absl::Status(AppContext& app)> start;
};

// The payload type URL naming the component a boot error came from.
inline constexpr std::string_view kBootComponentUrl = "type.framekit/BootComponent";

// A set of boot components and the order to run them in. See the file comment.
//
// Order: a component runs after all of its dependencies; among components whose dependencies
// have all run, the one added first runs first (registration order), so the order is
// deterministic and, without dependencies, simply the order of Add calls.
//
// Thread-safety: thread-compatible. Build and run it from one thread at boot.
class BootSequence {
 public:
  BootSequence() = default;
  BootSequence(const BootSequence&) = delete;
  BootSequence& operator=(const BootSequence&) = delete;
  BootSequence(BootSequence&&) = default;
  BootSequence& operator=(BootSequence&&) = default;

  // Adds a component. InvalidArgument for an empty name or an empty `start`, or a component
  // listing itself as a dependency; AlreadyExists for a name added already;
  // FailedPrecondition after Run().
  absl::Status Add(BootComponent component);

  // The names of the components in the order Run() would start them. NotFound naming the
  // component and the missing name when a dependency is not in the sequence;
  // FailedPrecondition naming the cycle ("a -> b -> a") when the dependencies form one.
  absl::StatusOr<std::vector<std::string>> Order() const;

  // Checks the order (errors as for Order(), and then nothing runs), then starts each component
  // in order, each inside an AppContext stage. The first failing component stops boot: its
  // stage is aborted (its staged resolver registrations and service writes are dropped), no
  // later component runs, and the error keeps the original code and payloads with the message
  // `boot component "NAME": <original message>` and the name as a kBootComponentUrl payload.
  // A component that throws is isolated (an Internal status carrying an ExtensionPanic, phase
  // "setup"). When every component succeeds the AppContext and its FrameResolvers are sealed:
  // a later Set or Register fails with FailedPrecondition.
  // FailedPrecondition when this sequence has run already or `app` is sealed.
  // NOTE: components that succeeded before a failing one stay installed; the AppContext is
  // then left unsealed, and the host should discard it.
  absl::Status Run(AppContext& app);

  // Names of the components, in the order they were added.
  std::vector<std::string> names() const;
  std::size_t size() const { return components_.size(); }

 private:
  std::vector<BootComponent> components_;
  bool ran_ = false;
};

// The component a boot error names (the kBootComponentUrl payload), or empty.
std::string FailedBootComponent(const absl::Status& status);

}  // namespace framekit

#endif  // FRAMEKIT_APP_BOOT_H_
