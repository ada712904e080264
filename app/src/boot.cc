#include "framekit/app/boot.h"

#include <algorithm>
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "framekit/base/internal/status.h"
#include "framekit/base/internal/strings.h"
#include "framekit/ctx/panic.h"

namespace framekit {
namespace {

using base_internal::AsAbsl;

// `status` with the message `boot component "NAME": <message>`, its code and payloads, and
// the component's name as a payload.
absl::Status WrapComponentError(std::string_view name, const absl::Status& status) {
  absl::Status wrapped = base_internal::PrefixStatus("boot component", name, status);
  wrapped.SetPayload(AsAbsl(kBootComponentUrl), absl::Cord(AsAbsl(name)));
  return wrapped;
}

// One cycle among the components not yet ordered (every one of them is on or behind a cycle),
// as "a -> b -> a". `deps[i]` are indices.
std::string FindCycle(const std::vector<BootComponent>& components,
                      const std::vector<std::vector<std::size_t>>& deps,
                      const std::vector<bool>& done) {
  // Walk dependency edges from any remaining node: every remaining node has a remaining
  // dependency, so the walk revisits a node within components.size() steps.
  std::size_t start = 0;
  while (done[start]) ++start;
  std::vector<std::size_t> path;
  std::vector<std::ptrdiff_t> position(components.size(), -1);
  std::size_t node = start;
  while (position[node] < 0) {
    position[node] = static_cast<std::ptrdiff_t>(path.size());
    path.push_back(node);
    for (std::size_t dep : deps[node]) {
      if (!done[dep]) {
        node = dep;
        break;
      }
    }
  }
  std::vector<std::string> names;
  for (std::size_t i = static_cast<std::size_t>(position[node]); i < path.size(); ++i) {
    names.push_back(components[path[i]].name);
  }
  names.push_back(components[node].name);
  return absl::StrJoin(names, " -> ");
}

}  // namespace

absl::Status BootSequence::Add(BootComponent component) {
  if (ran_) return absl::FailedPreconditionError("boot sequence has run already");
  if (component.name.empty()) return absl::InvalidArgumentError("boot component without a name");
  if (!component.start) {
    return absl::InvalidArgumentError(
        absl::StrCat("boot component \"", component.name, "\" has no start function"));
  }
  for (const std::string& dep : component.dependencies) {
    if (dep == component.name) {
      return absl::InvalidArgumentError(
          absl::StrCat("boot component \"", component.name, "\" depends on itself"));
    }
  }
  for (const BootComponent& existing : components_) {
    if (existing.name == component.name) {
      return absl::AlreadyExistsError(
          absl::StrCat("boot component \"", component.name, "\" is added already"));
    }
  }
  components_.push_back(std::move(component));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> BootSequence::Order() const {
  const std::size_t n = components_.size();
  absl::flat_hash_map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < n; ++i) index.emplace(components_[i].name, i);

  std::vector<std::vector<std::size_t>> deps(n);
  for (std::size_t i = 0; i < n; ++i) {
    for (const std::string& dep : components_[i].dependencies) {
      const auto it = index.find(dep);
      if (it == index.end()) {
        return absl::NotFoundError(absl::StrCat("boot component \"", components_[i].name,
                                                "\" depends on \"", dep,
                                                "\", which is not in the boot sequence"));
      }
      deps[i].push_back(it->second);
    }
  }

  // Repeatedly take the first-added component whose dependencies have all run: O(n^2) on a
  // graph of a handful of boot components, and the order is easy to state.
  std::vector<bool> done(n, false);
  std::vector<std::string> order;
  order.reserve(n);
  while (order.size() < n) {
    bool progressed = false;
    for (std::size_t i = 0; i < n; ++i) {
      if (done[i]) continue;
      if (std::all_of(deps[i].begin(), deps[i].end(), [&](std::size_t d) { return done[d]; })) {
        done[i] = true;
        order.push_back(components_[i].name);
        progressed = true;
        break;
      }
    }
    if (!progressed) {
      return absl::FailedPreconditionError(
          absl::StrCat("boot dependency cycle: ", FindCycle(components_, deps, done)));
    }
  }
  return order;
}

absl::Status BootSequence::Run(AppContext& app) {
  if (ran_) return absl::FailedPreconditionError("boot sequence has run already");
  if (app.sealed()) return absl::FailedPreconditionError("boot: the app context is sealed");
  absl::StatusOr<std::vector<std::string>> order = Order();
  if (!order.ok()) return order.status();
  ran_ = true;

  for (const std::string& name : *order) {
    BootComponent* component = nullptr;
    for (BootComponent& c : components_) {
      if (c.name == name) component = &c;
    }
    app.BeginStage();
    absl::Status status =
        IsolateStatus(name, Phase::kSetup, [&]() -> absl::Status { return component->start(app); });
    if (!status.ok()) {
      app.AbortStage();
      return WrapComponentError(name, status);
    }
    if (absl::Status commit = app.CommitStage(); !commit.ok()) {
      return WrapComponentError(name, commit);
    }
  }
  // A resolver registered after boot would change what every later call resolves, after the
  // host has checked its wiring: the registry is sealed with the app.
  app.SealFrameResolvers();
  app.Seal();
  return absl::OkStatus();
}

std::vector<std::string> BootSequence::names() const {
  std::vector<std::string> names;
  names.reserve(components_.size());
  for (const BootComponent& c : components_) names.push_back(c.name);
  return names;
}

std::string FailedBootComponent(const absl::Status& status) {
  auto payload = status.GetPayload(AsAbsl(kBootComponentUrl));
  return payload.has_value() ? std::string(*payload) : std::string();
}

}  // namespace framekit
