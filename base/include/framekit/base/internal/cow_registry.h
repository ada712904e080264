// CowRegistry: an ordered, named, copy-on-write registry read through one atomic snapshot load.
//
// The machinery behind FrameResolvers and the dispatchers' interceptor registry. Entries are
// owned by the registry; a snapshot is an immutable, sorted array of pointers to them, so a
// write copies pointers, never entries.
//
// Memory ordering: a writer fully builds a snapshot, then publishes it with a release store; a
// reader's acquire load therefore sees the whole snapshot and every entry it points to. Readers
// perform no read-modify-write and take no lock. Retired snapshots and removed entries are kept
// until the registry is destroyed, so a reader can never see freed memory; registration is a
// boot-time act and this growth is its price.
#ifndef FRAMEKIT_BASE_INTERNAL_COW_REGISTRY_H_
#define FRAMEKIT_BASE_INTERNAL_COW_REGISTRY_H_

#include <algorithm>
#include <atomic>
#include <concepts>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"

namespace framekit::base_internal {

// An entry: a name (unique within a snapshot) and an order; sorted by order, then name.
template <class E>
concept OrderedEntry = requires(const E& e) {
  { e.name } -> std::convertible_to<std::string_view>;
  { e.order } -> std::convertible_to<int>;
};

// Per-snapshot data derived from the entries. `Refresh` recomputes it after a change; `idle()`
// says the snapshot has nothing for readers to do beyond the empty-entries check.
struct NoExtra {
  template <class Entries>
  void Refresh(const Entries&) {}
  bool idle() const { return true; }
};

template <OrderedEntry Entry, class Extra = NoExtra>
class CowRegistry {
 public:
  struct Snapshot {
    std::vector<const Entry*> entries;  // sorted by (order, name)
    Extra extra;
    // True when readers have nothing to do: no entries and an idle `extra`. The one field the
    // read fast path tests.
    bool idle = true;
  };

  // A writer's working copy of the current snapshot, handed to the function given to Mutate.
  class Draft {
   public:
    // Adds `entry` in order. AlreadyExists when its name is in the draft already.
    absl::Status Add(std::unique_ptr<Entry> entry) {
      std::string_view name = entry->name;
      if (Contains(name)) {
        return absl::AlreadyExistsError(
            absl::StrCat(kind_, " \"", AsAbsl(name), "\" is registered already"));
      }
      const Entry* raw = entry.get();
      const auto at = std::upper_bound(snapshot_->entries.begin(), snapshot_->entries.end(), raw,
                                       [](const Entry* a, const Entry* b) { return Less(*a, *b); });
      snapshot_->entries.insert(at, raw);
      if (indexed_) names_.insert(std::string_view(raw->name));
      added_.push_back(std::move(entry));
      return absl::OkStatus();
    }
    // Removes the entry named `name`. NotFound when there is none.
    absl::Status Remove(std::string_view name) {
      auto& entries = snapshot_->entries;
      const auto it = std::find_if(entries.begin(), entries.end(),
                                   [name](const Entry* e) { return e->name == name; });
      if (it == entries.end()) {
        return absl::NotFoundError(
            absl::StrCat(kind_, " \"", AsAbsl(name), "\" is not registered"));
      }
      if (indexed_) names_.erase(std::string_view((*it)->name));
      entries.erase(it);
      return absl::OkStatus();
    }
    bool Contains(std::string_view name) const {
      if (indexed_) return names_.contains(name);
      const auto& entries = snapshot_->entries;
      return std::any_of(entries.begin(), entries.end(),
                         [name](const Entry* e) { return std::string_view(e->name) == name; });
    }
    const std::vector<const Entry*>& entries() const { return snapshot_->entries; }
    Extra& extra() { return snapshot_->extra; }

   private:
    friend class CowRegistry;
    Draft(const Snapshot& current, std::string_view kind)
        : snapshot_(std::make_unique<Snapshot>()), kind_(kind) {
      // Room for the usual one-entry change, so the insert does not reallocate.
      snapshot_->entries.reserve(current.entries.size() + 1);
      snapshot_->entries = current.entries;
      snapshot_->extra = current.extra;
      // Small drafts check names by scanning; large ones build an index once.
      indexed_ = current.entries.size() > kScanLimit;
      if (indexed_) {
        names_.reserve(current.entries.size() + 1);
        for (const Entry* e : current.entries) names_.insert(std::string_view(e->name));
      }
    }

    static constexpr std::size_t kScanLimit = 32;

    std::unique_ptr<Snapshot> snapshot_;
    bool indexed_ = false;
    absl::flat_hash_set<std::string_view> names_;  // when indexed_
    std::vector<std::unique_ptr<Entry>> added_;
    std::string kind_;
  };

  // `kind` names the entries in error messages ("frame resolver", "interceptor").
  explicit CowRegistry(std::string_view kind) : kind_(kind) {
    auto empty = std::make_unique<Snapshot>();
    current_.store(empty.get(), std::memory_order_relaxed);
    retired_.push_back(std::move(empty));
  }
  CowRegistry(const CowRegistry&) = delete;
  CowRegistry& operator=(const CowRegistry&) = delete;

  // The current snapshot: one acquire load. Never null. Valid until the registry is destroyed.
  const Snapshot* Load() const { return current_.load(std::memory_order_acquire); }

  // Runs `fn(Draft&)` on a copy of the current snapshot under the writer lock and publishes the
  // result when `fn` returns OK; otherwise publishes nothing. FailedPrecondition after Seal().
  // NOTE: `fn` runs under the writer lock; it must not call back into this registry.
  template <class Fn>
  absl::Status Mutate(Fn&& fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (sealed_) {
      return absl::FailedPreconditionError(
          absl::StrCat(kind_, " registry is sealed: registration is a boot-time act"));
    }
    Draft draft(*current_.load(std::memory_order_relaxed), kind_);
    absl::Status status = fn(draft);
    if (!status.ok()) return status;
    Snapshot& next = *draft.snapshot_;
    next.extra.Refresh(next.entries);
    next.idle = next.entries.empty() && next.extra.idle();
    for (auto& entry : draft.added_) owned_.push_back(std::move(entry));
    current_.store(draft.snapshot_.get(), std::memory_order_release);
    retired_.push_back(std::move(draft.snapshot_));
    return absl::OkStatus();
  }

  // As Mutate, but never publishes: runs `fn(Draft&)` on a copy of the current snapshot and
  // returns its status (FailedPrecondition after Seal()). For checking changes that are held
  // back (staged) before they are published.
  template <class Fn>
  absl::Status Check(Fn&& fn) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (sealed_) {
      return absl::FailedPreconditionError(
          absl::StrCat(kind_, " registry is sealed: registration is a boot-time act"));
    }
    Draft draft(*current_.load(std::memory_order_relaxed), kind_);
    return fn(draft);
  }

  // Refuses every later Mutate. Idempotent.
  void Seal() {
    std::lock_guard<std::mutex> lock(mu_);
    sealed_ = true;
  }
  bool sealed() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sealed_;
  }

  static bool Less(const Entry& a, const Entry& b) {
    if (a.order != b.order) return a.order < b.order;
    return std::string_view(a.name) < std::string_view(b.name);
  }

 private:
  const std::string kind_;
  mutable std::mutex mu_;
  bool sealed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::unique_ptr<Entry>> owned_ ABSL_GUARDED_BY(mu_);
  // Every snapshot ever published, the current one last.
  std::vector<std::unique_ptr<Snapshot>> retired_ ABSL_GUARDED_BY(mu_);
  std::atomic<const Snapshot*> current_;
};

}  // namespace framekit::base_internal

#endif  // FRAMEKIT_BASE_INTERNAL_COW_REGISTRY_H_
