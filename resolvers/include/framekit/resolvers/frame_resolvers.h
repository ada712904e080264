// FrameResolvers: the ordered registry of frame resolvers every dispatcher applies.
//
// A frame resolver looks at the calling frame and the call's options and appends the pairs the
// new call's frame should carry (a network route, a tenant label, ...). Resolvers are
// registered once, at boot; every dispatcher applies the whole registry generically, so a new
// frame option is one resolver and one Register line.
//
// Options are strict: each resolver declares the option keys it reads, and a dispatcher fails a
// call carrying an option that no registered resolver (nor the dispatcher itself) declares,
// with InvalidArgument naming it, before any resolver or handler runs (CheckOptions). A
// misspelt option, or one whose resolver was never registered (`network=tor` on an application
// that never booted the overlay), is a wiring bug that fails loud instead of being ignored.
//
// Example:
//   inline const framekit::Key<std::string> kTenant{"app.tenant"};
//
//   auto resolvers = std::make_shared<framekit::FrameResolvers>();
//   FRAMEKIT_RETURN_IF_ERROR(resolvers->Register(
//       "app.tenant", /*order=*/300, /*option_keys=*/{"tenant"},
//       [](const framekit::Frame& parent, const framekit::Options& options,
//          framekit::PairList& out) -> absl::Status {
//         if (auto tenant = options.GetString("tenant")) {
//           out.push_back(framekit::Pair::Of(kTenant, std::string(*tenant)));
//         }
//         return absl::OkStatus();
//       }));
//   resolvers->Seal();
//
//   framekit::PairList pairs;
//   FRAMEKIT_RETURN_IF_ERROR(resolvers->CheckOptions(options, {}));  // "tenant" is declared
//   FRAMEKIT_RETURN_IF_ERROR(resolvers->Resolve(parent, options, pairs));
//   framekit::Frame call = parent.Fork().With(pairs);
#ifndef FRAMEKIT_RESOLVERS_FRAME_RESOLVERS_H_
#define FRAMEKIT_RESOLVERS_FRAME_RESOLVERS_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "framekit/base/internal/cow_registry.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/ctx/pair.h"

namespace framekit {

// A frame resolver: appends pairs for a new call to `out`, or fails the call.
// Re-entrancy: a resolver may call Register (no lock is held while it runs); the registration
// takes effect from the next Resolve call. A resolver must only append to `out`.
using FrameResolverFn =
    std::function<absl::Status(const Frame& parent, const Options& options, PairList& out)>;

// A claim's predicate: true when the call selects the frame option the claim names.
using ClaimPredicate = std::function<bool(const Frame& parent, const Options& options)>;

// One registration, for RegisterAll.
struct ResolverRegistration {
  std::string name;
  int order = 0;
  FrameResolverFn fn;
  std::vector<std::string> covers;  // claims this resolver covers
  // The option keys this resolver reads (see CheckOptions): each 1-128 of [A-Za-z0-9_.-].
  std::vector<std::string> option_keys = {};
};

// The payload type URLs of FrameResolvers errors.
inline constexpr std::string_view kResolverNotRegisteredUrl = "type.framekit/ResolverNotRegistered";
inline constexpr std::string_view kRollbackFailureUrl = "type.framekit/RollbackFailure";
inline constexpr std::string_view kUndeclaredOptionUrl = "type.framekit/UndeclaredOption";

namespace resolvers_internal {

struct ResolverEntry {
  std::string name;
  int order = 0;
  FrameResolverFn fn;
  std::vector<std::string> covers;
  std::vector<std::string> option_keys;
};

struct ClaimEntry {
  std::string name;
  ClaimPredicate predicate;
};

// The claims of a snapshot, and the subset no resolver of that snapshot covers: the only ones
// Resolve evaluates. Also the option keys the snapshot's resolvers declare, sorted by
// Options::KeyOrder without duplicates; they view the entries' strings, which the registry owns
// until it is destroyed.
struct ClaimSet {
  std::vector<std::shared_ptr<const ClaimEntry>> all;
  std::vector<const ClaimEntry*> uncovered;
  std::vector<std::string_view> option_keys;

  void Refresh(const std::vector<const ResolverEntry*>& entries);
  bool idle() const { return uncovered.empty(); }
};

// CheckOptions after its empty-options fast path. `declared` is nullptr without a registry.
absl::Status CheckOptionKeys(const std::vector<std::string_view>* declared, const Options& options,
                             std::span<const std::string_view> own_keys);

}  // namespace resolvers_internal

// The registry. See the file comment.
//
// Resolve order: ascending `order`, ties broken by name. Resolve appends each resolver's pairs
// after those already in `pairs`. The first error stops the walk: no later resolver runs, the
// rollback actions of the pairs appended by this call run in reverse order, `pairs` is
// restored to exactly what the caller passed in, and the error keeps its code and payloads
// with the message `frame resolver "NAME": <original message>`. A resolver that throws is
// isolated: the exception becomes an Internal status carrying an ExtensionPanic (phase
// "resolve"), wrapped the same way.
//
// Fail-closed claims: RegisterClaim names a frame option and a predicate that says a call
// selects it; a resolver declares the claims it covers. When a call selects a claim no
// registered resolver covers, Resolve fails with FailedPrecondition (IsResolverNotRegistered)
// before any resolver runs.
//
// Strict options: see the file comment and CheckOptions. Resolve itself does not check keys (a
// direct caller of Resolve that wants strictness calls CheckOptions first, as the dispatchers
// do).
//
// Thread-safety: thread-safe. Any number of Resolve and CheckOptions calls may run concurrently
// with each other and with writers; each sees the old snapshot or the new one, never a torn one.
//
// Memory ordering: Resolve does one acquire load of an immutable snapshot and no atomic
// read-modify-write; writers copy on write under a mutex and publish with a release store.
//
// NOTE: registration is a boot-time act. Every snapshot ever published is kept until the
// registry is destroyed, so that a concurrent Resolve never reads freed memory; a registry
// that is written without bound grows without bound.
class FrameResolvers final {
 public:
  FrameResolvers();
  ~FrameResolvers();
  FrameResolvers(const FrameResolvers&) = delete;
  FrameResolvers& operator=(const FrameResolvers&) = delete;

  // Registers `fn` under `name` at `order`. InvalidArgument for an empty name or an empty
  // `fn`; AlreadyExists for a name registered already (whatever its order); FailedPrecondition
  // after Seal(). `covers` lists the claims this resolver covers.
  // NOTE: this form declares no option keys: a call carrying an option only this resolver
  // reads fails the dispatchers' strict check. A resolver that reads options uses the overload
  // taking `option_keys`.
  absl::Status Register(std::string name, int order, FrameResolverFn fn);
  absl::Status Register(std::string name, int order, FrameResolverFn fn,
                        std::vector<std::string> covers);
  // As above, declaring the option keys `fn` reads (CheckOptions accepts them while this
  // resolver is registered). InvalidArgument, and nothing registered, for a key that is not
  // 1-128 of [A-Za-z0-9_.-] (the grammar of Options::Parse). A key may be declared by several
  // resolvers; repeats within one declaration are ignored.
  absl::Status Register(std::string name, int order, std::vector<std::string> option_keys,
                        FrameResolverFn fn);
  // Registers a batch atomically: all or nothing, one publication. Errors as for Register,
  // including a name repeated within the batch.
  absl::Status RegisterAll(std::vector<ResolverRegistration> batch);
  // Registers a claim. InvalidArgument for an empty name or predicate; AlreadyExists for a
  // claim name registered already; FailedPrecondition after Seal().
  absl::Status RegisterClaim(std::string name, ClaimPredicate predicate);

  // Appends the pairs of every resolver to `pairs`. See the class comment for the semantics.
  // With nothing registered this is one acquire load and one test, and never allocates.
  absl::Status Resolve(const Frame& parent, const Options& options, PairList& pairs) const {
    const Snapshot* snapshot = registry_.Load();
    if (snapshot->idle) [[likely]] {
      return absl::OkStatus();
    }
    return ResolveSnapshot(*snapshot, parent, options, pairs);
  }

  // OK when every key of `options` is read by someone: declared by a registered resolver (in
  // the current snapshot) or one of `own_keys`, the keys the calling dispatcher reads itself.
  // Otherwise InvalidArgument naming the first such key in Options' iteration order, echoed
  // escaped and bounded (at most 48 bytes), with that echo as a kUndeclaredOptionUrl payload
  // (IsUndeclaredOption). Keys only; values are for their readers to check.
  // With no options this is one test, inline: no load, no allocation. Otherwise one acquire
  // load and a binary search per key; allocates only to build the error.
  absl::Status CheckOptions(const Options& options,
                            std::span<const std::string_view> own_keys) const {
    if (options.empty()) [[likely]] {
      return absl::OkStatus();
    }
    return resolvers_internal::CheckOptionKeys(&registry_.Load()->extra.option_keys, options,
                                               own_keys);
  }
  // The option keys the registered resolvers declare, sorted as Options iterates, unique.
  std::vector<std::string> option_keys() const;

  // Resolver names in resolve order.
  std::vector<std::string> names() const;
  // Number of registered resolvers.
  std::size_t size() const { return registry_.Load()->entries.size(); }
  // Registered claim names, sorted.
  std::vector<std::string> claims() const;

  // Refuses every later registration (FailedPrecondition). Idempotent. BootSequence::Run calls
  // it (through AppContext::SealFrameResolvers) when boot succeeds.
  void Seal() { registry_.Seal(); }
  bool sealed() const { return registry_.sealed(); }

  // Boot staging, driven by AppContext::BeginStage/CommitStage/AbortStage: while staging,
  // Register/RegisterAll/RegisterClaim validate against the published and the staged
  // registrations, then hold them back; CommitStaging publishes them as one snapshot (errors as
  // for RegisterAll), AbortStaging drops them. Stages do not nest.
  void BeginStaging();
  absl::Status CommitStaging();
  void AbortStaging();

 private:
  using Registry =
      base_internal::CowRegistry<resolvers_internal::ResolverEntry, resolvers_internal::ClaimSet>;
  using Snapshot = Registry::Snapshot;

  absl::Status ResolveSnapshot(const Snapshot& snapshot, const Frame& parent,
                               const Options& options, PairList& pairs) const;
  absl::Status Publish(std::vector<ResolverRegistration> resolvers,
                       std::vector<resolvers_internal::ClaimEntry> claims);

  Registry registry_;

  std::mutex staging_mu_;
  bool staging_ ABSL_GUARDED_BY(staging_mu_) = false;
  std::vector<ResolverRegistration> staged_ ABSL_GUARDED_BY(staging_mu_);
  std::vector<resolvers_internal::ClaimEntry> staged_claims_ ABSL_GUARDED_BY(staging_mu_);
};

// Applies `registry` to a new call. A nullptr registry returns OK and leaves `pairs` as they
// are.
inline absl::Status Resolve(const FrameResolvers* registry, const Frame& parent,
                            const Options& options, PairList& pairs) {
  if (registry == nullptr) return absl::OkStatus();
  return registry->Resolve(parent, options, pairs);
}

// The strict-options check of a dispatcher (FrameResolvers::CheckOptions). A nullptr registry
// declares nothing: only `own_keys` are accepted, so a call selecting `network=tor` on an
// application with no registry fails rather than run with no route.
inline absl::Status CheckOptions(const FrameResolvers* registry, const Options& options,
                                 std::span<const std::string_view> own_keys) {
  if (options.empty()) [[likely]] {
    return absl::OkStatus();
  }
  if (registry != nullptr) return registry->CheckOptions(options, own_keys);
  return resolvers_internal::CheckOptionKeys(nullptr, options, own_keys);
}

// Whether `status` is CheckOptions' error: a call carried an option no one declares.
bool IsUndeclaredOption(const absl::Status& status);
// The option key an IsUndeclaredOption status names (escaped, at most 48 bytes), or empty.
std::string UndeclaredOption(const absl::Status& status);

// Whether `status` is Resolve's fail-closed error: a call selected a claim that no registered
// resolver covers.
bool IsResolverNotRegistered(const absl::Status& status);
// The claim a IsResolverNotRegistered status names, or empty.
std::string NotRegisteredClaim(const absl::Status& status);
// The rollback failures ("pair NAME: message") attached to a Resolve error, in the order the
// rollbacks ran; empty when every rollback succeeded.
std::vector<std::string> RollbackFailures(const absl::Status& status);

}  // namespace framekit

#endif  // FRAMEKIT_RESOLVERS_FRAME_RESOLVERS_H_
