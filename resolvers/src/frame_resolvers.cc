#include "framekit/resolvers/frame_resolvers.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "framekit/base/internal/echo.h"
#include "framekit/base/internal/name.h"
#include "framekit/base/internal/status.h"
#include "framekit/base/internal/strings.h"
#include "framekit/ctx/panic.h"

namespace framekit {
namespace resolvers_internal {

void ClaimSet::Refresh(const std::vector<const ResolverEntry*>& entries) {
  uncovered.clear();
  for (const auto& claim : all) {
    const bool covered = std::any_of(entries.begin(), entries.end(), [&](const ResolverEntry* e) {
      return std::find(e->covers.begin(), e->covers.end(), claim->name) != e->covers.end();
    });
    if (!covered) uncovered.push_back(claim.get());
  }
  option_keys.clear();
  for (const ResolverEntry* e : entries) {
    for (const std::string& key : e->option_keys) option_keys.push_back(key);
  }
  const Options::KeyOrder less;
  std::sort(option_keys.begin(), option_keys.end(), less);
  option_keys.erase(std::unique(option_keys.begin(), option_keys.end()), option_keys.end());
}

absl::Status CheckOptionKeys(const std::vector<std::string_view>* declared, const Options& options,
                             std::span<const std::string_view> own_keys) {
  const Options::KeyOrder less;
  for (const auto& [key, value] : options) {
    const std::string_view k = key;
    if (std::find(own_keys.begin(), own_keys.end(), k) != own_keys.end()) continue;
    if (declared != nullptr && std::binary_search(declared->begin(), declared->end(), k, less)) {
      continue;
    }
    const std::string echo = base_internal::Echo(k);
    absl::Status error = absl::InvalidArgumentError(absl::StrCat(
        "option \"", echo,
        "\" is read by no registered frame resolver nor by the dispatcher (misspelt, or its "
        "resolver was never registered); refusing the call rather than ignore it"));
    error.SetPayload(absl::string_view(kUndeclaredOptionUrl.data(), kUndeclaredOptionUrl.size()),
                     absl::Cord(echo));
    return error;
  }
  return absl::OkStatus();
}

}  // namespace resolvers_internal

namespace {

using base_internal::Echo;
using resolvers_internal::ClaimEntry;
using resolvers_internal::ResolverEntry;

using base_internal::AsAbsl;

constexpr absl::string_view kNotRegisteredUrl = AsAbsl(kResolverNotRegisteredUrl);
constexpr absl::string_view kRollbackUrl = AsAbsl(kRollbackFailureUrl);
constexpr absl::string_view kUndeclaredUrl = AsAbsl(kUndeclaredOptionUrl);

// Options::Parse's key grammar, bounded: 1-128 of [A-Za-z0-9_.-].
bool ValidOptionKey(std::string_view key) {
  if (key.empty() || key.size() > 128) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
  });
}

absl::Status ValidateRegistration(const ResolverRegistration& r) {
  if (r.name.empty()) {
    return absl::InvalidArgumentError("frame resolver: the name is empty");
  }
  if (!base_internal::IsValidName(r.name)) {
    return absl::InvalidArgumentError(base_internal::InvalidNameMessage("frame resolver", r.name));
  }
  if (!r.fn) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame resolver \"", r.name, "\": the function is empty"));
  }
  for (const std::string& claim : r.covers) {
    if (claim.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("frame resolver \"", r.name, "\": covers an empty claim name"));
    }
  }
  for (const std::string& key : r.option_keys) {
    if (!ValidOptionKey(key)) {
      return absl::InvalidArgumentError(absl::StrCat("frame resolver \"", Echo(r.name),
                                                     "\": declares the option key \"", Echo(key),
                                                     "\", which is not 1-128 of [A-Za-z0-9_.-]"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateClaim(const ClaimEntry& claim) {
  if (claim.name.empty()) return absl::InvalidArgumentError("frame claim: the name is empty");
  if (!claim.predicate) {
    return absl::InvalidArgumentError(
        absl::StrCat("frame claim \"", claim.name, "\": the predicate is empty"));
  }
  return absl::OkStatus();
}

// `status` with its message prefixed by `frame resolver "NAME": `, code and payloads kept.
absl::Status Wrap(std::string_view name, const absl::Status& status) {
  return base_internal::PrefixStatus("frame resolver", name, status);
}

}  // namespace

FrameResolvers::FrameResolvers() : registry_("frame resolver") {}
FrameResolvers::~FrameResolvers() = default;

absl::Status FrameResolvers::Register(std::string name, int order, FrameResolverFn fn) {
  return Register(std::move(name), order, std::move(fn), {});
}

absl::Status FrameResolvers::Register(std::string name, int order, FrameResolverFn fn,
                                      std::vector<std::string> covers) {
  std::vector<ResolverRegistration> batch;
  batch.push_back({std::move(name), order, std::move(fn), std::move(covers)});
  return RegisterAll(std::move(batch));
}

absl::Status FrameResolvers::Register(std::string name, int order,
                                      std::vector<std::string> option_keys, FrameResolverFn fn) {
  std::vector<ResolverRegistration> batch;
  batch.push_back({std::move(name), order, std::move(fn), {}, std::move(option_keys)});
  return RegisterAll(std::move(batch));
}

absl::Status FrameResolvers::RegisterAll(std::vector<ResolverRegistration> batch) {
  for (const ResolverRegistration& r : batch) {
    if (absl::Status status = ValidateRegistration(r); !status.ok()) return status;
  }
  return Publish(std::move(batch), {});
}

absl::Status FrameResolvers::RegisterClaim(std::string name, ClaimPredicate predicate) {
  ClaimEntry claim{std::move(name), std::move(predicate)};
  if (absl::Status status = ValidateClaim(claim); !status.ok()) return status;
  std::vector<ClaimEntry> claims;
  claims.push_back(std::move(claim));
  return Publish({}, std::move(claims));
}

absl::Status FrameResolvers::Publish(std::vector<ResolverRegistration> resolvers,
                                     std::vector<ClaimEntry> claims) {
  std::unique_lock<std::mutex> staging_lock(staging_mu_);
  const bool staging = staging_;
  if (!staging) staging_lock.unlock();

  // While staging, the draft checks duplicates against published + staged registrations, and
  // nothing is published: the registrations are held back until CommitStaging.
  auto apply = [&](Registry::Draft& draft) -> absl::Status {
    auto add_claim = [&draft](const ClaimEntry& claim) -> absl::Status {
      auto& all = draft.extra().all;
      if (std::any_of(all.begin(), all.end(),
                      [&](const auto& c) { return c->name == claim.name; })) {
        return absl::AlreadyExistsError(
            absl::StrCat("frame claim \"", claim.name, "\" is registered already"));
      }
      all.push_back(std::make_shared<const ClaimEntry>(claim));
      return absl::OkStatus();
    };
    auto add_resolver = [&draft](const ResolverRegistration& r) -> absl::Status {
      return draft.Add(std::make_unique<ResolverEntry>(
          ResolverEntry{r.name, r.order, r.fn, r.covers, r.option_keys}));
    };
    if (staging) {
      for (const ResolverRegistration& r : staged_) {
        if (absl::Status s = add_resolver(r); !s.ok()) return s;
      }
      for (const ClaimEntry& c : staged_claims_) {
        if (absl::Status s = add_claim(c); !s.ok()) return s;
      }
    }
    for (const ResolverRegistration& r : resolvers) {
      if (absl::Status s = add_resolver(r); !s.ok()) return s;
    }
    for (const ClaimEntry& c : claims) {
      if (absl::Status s = add_claim(c); !s.ok()) return s;
    }
    return absl::OkStatus();
  };

  if (!staging) return registry_.Mutate(apply);
  if (absl::Status status = registry_.Check(apply); !status.ok()) return status;
  for (auto& r : resolvers) staged_.push_back(std::move(r));
  for (auto& c : claims) staged_claims_.push_back(std::move(c));
  return absl::OkStatus();
}

void FrameResolvers::BeginStaging() {
  std::lock_guard<std::mutex> lock(staging_mu_);
  staging_ = true;
  staged_.clear();
  staged_claims_.clear();
}

absl::Status FrameResolvers::CommitStaging() {
  std::vector<ResolverRegistration> resolvers;
  std::vector<ClaimEntry> claims;
  {
    std::lock_guard<std::mutex> lock(staging_mu_);
    staging_ = false;
    resolvers.swap(staged_);
    claims.swap(staged_claims_);
  }
  if (resolvers.empty() && claims.empty()) return absl::OkStatus();
  return Publish(std::move(resolvers), std::move(claims));
}

void FrameResolvers::AbortStaging() {
  std::lock_guard<std::mutex> lock(staging_mu_);
  staging_ = false;
  staged_.clear();
  staged_claims_.clear();
}

std::vector<std::string> FrameResolvers::names() const {
  const Snapshot* snapshot = registry_.Load();
  std::vector<std::string> out;
  out.reserve(snapshot->entries.size());
  for (const ResolverEntry* e : snapshot->entries) out.push_back(e->name);
  return out;
}

std::vector<std::string> FrameResolvers::option_keys() const {
  const Snapshot* snapshot = registry_.Load();
  return std::vector<std::string>(snapshot->extra.option_keys.begin(),
                                  snapshot->extra.option_keys.end());
}

std::vector<std::string> FrameResolvers::claims() const {
  const Snapshot* snapshot = registry_.Load();
  std::vector<std::string> out;
  for (const auto& c : snapshot->extra.all) out.push_back(c->name);
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status FrameResolvers::ResolveSnapshot(const Snapshot& snapshot, const Frame& parent,
                                             const Options& options, PairList& pairs) const {
  // Fail closed before any resolver runs: a selected claim that nothing covers.
  for (const ClaimEntry* claim : snapshot.extra.uncovered) {
    bool selected = false;
    absl::Status status = IsolateStatus(claim->name, Phase::kResolve, [&] {
      selected = claim->predicate(parent, options);
      return absl::OkStatus();
    });
    if (!status.ok()) {
      return absl::Status(status.code(),
                          absl::StrCat("frame claim \"", claim->name, "\": ", status.message()));
    }
    if (selected) {
      absl::Status error = absl::FailedPreconditionError(
          absl::StrCat("frame option \"", claim->name,
                       "\" is selected but no registered resolver covers it (failing closed)"));
      error.SetPayload(kNotRegisteredUrl, absl::Cord(claim->name));
      return error;
    }
  }

  const std::size_t base = pairs.size();
  // Only a caller that passes pairs in pays for keeping them, so they can be restored exactly
  // even if a misbehaving resolver touched them.
  // (Held through a pointer: an inline std::optional<PairList> costs a 544-byte zeroing on
  // every call, about 20 ns, which is most of the budget of a small registry.)
  std::unique_ptr<PairList> kept;
  if (base != 0) kept = std::make_unique<PairList>(pairs.begin(), pairs.end());
  pairs.reserve(base + snapshot.entries.size());

  for (const ResolverEntry* entry : snapshot.entries) {
    absl::Status status = IsolateStatus(entry->name, Phase::kResolve,
                                        [&] { return entry->fn(parent, options, pairs); });
    if (status.ok()) [[likely]] {
      continue;
    }
    // Roll back what this call appended, newest first.
    std::string failures;
    for (std::size_t i = pairs.size(); i > base; --i) {
      const Pair& pair = pairs[i - 1];
      const Pair::Rollback* rollback = pair.rollback();
      if (rollback == nullptr) continue;
      absl::Status undone = IsolateStatus(pair.name(), Phase::kResolve, *rollback);
      if (!undone.ok()) {
        if (!failures.empty()) failures.push_back('\n');
        absl::StrAppend(&failures, "pair ", AsAbsl(pair.name()), ": ", undone.ToString());
      }
    }
    if (kept != nullptr) {
      pairs.assign(kept->begin(), kept->end());
    } else {
      pairs.clear();
    }
    absl::Status wrapped = Wrap(entry->name, status);
    if (!failures.empty()) wrapped.SetPayload(kRollbackUrl, absl::Cord(failures));
    return wrapped;
  }
  return absl::OkStatus();
}

bool IsUndeclaredOption(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInvalidArgument &&
         status.GetPayload(kUndeclaredUrl).has_value();
}

std::string UndeclaredOption(const absl::Status& status) {
  if (!IsUndeclaredOption(status)) return "";
  return std::string(*status.GetPayload(kUndeclaredUrl));
}

bool IsResolverNotRegistered(const absl::Status& status) {
  return status.code() == absl::StatusCode::kFailedPrecondition &&
         status.GetPayload(kNotRegisteredUrl).has_value();
}

std::string NotRegisteredClaim(const absl::Status& status) {
  if (!IsResolverNotRegistered(status)) return "";
  return std::string(*status.GetPayload(kNotRegisteredUrl));
}

std::vector<std::string> RollbackFailures(const absl::Status& status) {
  const auto payload = status.GetPayload(kRollbackUrl);
  if (!payload.has_value()) return {};
  return absl::StrSplit(std::string(*payload), '\n');
}

}  // namespace framekit
