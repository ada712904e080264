// AppContext: the application's boot-time services, written once and then sealed.
//
// Boot installs services under typed keys and the FrameResolvers registry; dispatchers read
// them for every call. Writes are boot-time acts: a key is written at most once, and nothing
// is written after Seal().
//
// Example:
//   inline const framekit::Key<std::string> kRegion{"app.region"};
//
//   framekit::AppContext app;
//   auto resolvers = std::make_shared<framekit::FrameResolvers>();
//   FRAMEKIT_RETURN_IF_ERROR(app.SetFrameResolvers(resolvers));
//   FRAMEKIT_RETURN_IF_ERROR(app.Set(kRegion, "eu-west"));
//   app.Seal();
//   app.Get(kRegion);                   // "eu-west"
//   app.Set(kRegion, "us-east");        // FailedPrecondition: sealed (and written already)
#ifndef FRAMEKIT_APP_APP_CONTEXT_H_
#define FRAMEKIT_APP_APP_CONTEXT_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "framekit/ctx/key.h"
#include "framekit/ctx/pair.h"
#include "framekit/resolvers/frame_resolvers.h"

namespace framekit {

// Boot-time services by typed key. See the file comment.
//
// Thread-safety: thread-safe. Get() returns a pointer that stays valid for the AppContext's
// lifetime (values are never overwritten), except for a value written by a boot component that
// then fails: AbortStage() removes it.
class AppContext {
 public:
  AppContext();
  ~AppContext();
  AppContext(const AppContext&) = delete;
  AppContext& operator=(const AppContext&) = delete;

  // Stores `value` under `key`. FailedPrecondition (and no change) when `key` was written
  // already or the context is sealed.
  template <class T>
  absl::Status Set(const Key<T>& key, std::type_identity_t<T> value) {
    return SetPair(Pair::Of(key, std::move(value)));
  }
  // The value under `key`, or nullptr.
  template <class T>
  const T* Get(const Key<T>& key) const {
    const Pair* pair = FindPair(key);
    return pair == nullptr ? nullptr : pair->As(key);
  }
  bool Contains(const KeyBase& key) const { return FindPair(key) != nullptr; }

  // Installs the frame resolver registry dispatchers apply. FailedPrecondition when one is
  // installed already or the context is sealed; InvalidArgument for nullptr.
  absl::Status SetFrameResolvers(std::shared_ptr<FrameResolvers> resolvers);
  // The installed registry, or nullptr when none was installed. One acquire load.
  FrameResolvers* frame_resolvers() const { return resolvers_ptr_.load(std::memory_order_acquire); }
  // The installed registry, shared; nullptr when none.
  std::shared_ptr<FrameResolvers> shared_frame_resolvers() const;

  // Refuses every later write. Idempotent. Does not seal the FrameResolvers (it has its own
  // Seal(); SealFrameResolvers() below; BootSequence::Run seals both).
  void Seal();
  // Seals the installed FrameResolvers: every later Register fails with FailedPrecondition.
  // Idempotent; does nothing when no registry is installed.
  void SealFrameResolvers();
  bool sealed() const { return sealed_.load(std::memory_order_acquire); }

  // Boot staging, used by the boot sequence around each component: writes made after
  // BeginStage() are kept by CommitStage() and undone by AbortStage(), including the
  // FrameResolvers' staged registrations. Stages do not nest.
  void BeginStage();
  absl::Status CommitStage();
  void AbortStage();

 private:
  absl::Status SetPair(Pair pair);
  const Pair* FindPair(const KeyBase& key) const;

  mutable std::mutex mu_;
  absl::flat_hash_map<const KeyBase*, std::unique_ptr<const Pair>> services_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<FrameResolvers> resolvers_ ABSL_GUARDED_BY(mu_);
  std::atomic<FrameResolvers*> resolvers_ptr_{nullptr};
  std::atomic<bool> sealed_{false};

  bool staging_ ABSL_GUARDED_BY(mu_) = false;
  bool registry_staging_ ABSL_GUARDED_BY(mu_) = false;  // BeginStaging() was called on it
  bool registry_set_in_stage_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<const KeyBase*> staged_keys_ ABSL_GUARDED_BY(mu_);
};

}  // namespace framekit

#endif  // FRAMEKIT_APP_APP_CONTEXT_H_
